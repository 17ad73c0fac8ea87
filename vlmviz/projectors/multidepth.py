"""Tokens from several encoder depths kept apart, one token group per depth (issue 18): the encoder is read at G
blocks side by side on the feature axis (`vit-s14@4+12` gives (B, N, 2 * 384)); each depth's tokens go through its
own pixel shuffle (nanoVLM / Idefics3's token merge, projectors/pixel_shuffle.py) and the groups are concatenated on
the TOKEN axis, so the LM sees block-4 tokens and block-12 tokens as separate prefix positions.

Why not one projector over the concatenated features: a single linear map mixes both depths in every token and
training leans on whichever fits the seen (color, shape) pairs; on held-out pairs that read color 0.48 where block 4
alone reads 0.89 (BENCHMARKS.md, "Captioning through the frozen LM"). Separate groups keep block 4's local color and
position and the output's object identity as different tokens for the LM's attention to pick from (Dense Connector,
Yao et al. 2024, stacks layers on the token axis in its "sparse token integration" variant for the same reason).

`scale` merges s x s patches of every group; `last_scale` overrides it for the last (deepest) group, whose object
identity needs fewer tokens: scale 4 and last_scale 8 give 16 + 4 visual tokens from a 16 x 16 grid.

`slots` Q > 0 appends Q object slots after the groups (two-object captions need them to bind): each slot is a learned
query attending over the h*w patches, with the patch's position added to the keys only (as attnpool.py and Qwen-VL's
resampler do), pooling the patch features of EVERY depth together, so one slot token carries one object's color
(block 4) and its shape (block 12) at once; a learned per-slot embedding says which slot it is. Without slots the
LM has to pair a block-4 color token with the block-12 shape token of the same place by itself, and on held-out
pairs it swaps them between the two objects (BENCHMARKS.md, relation captions).

`interleave` (every group at the same scale) orders the prefix by place instead of by depth: block 4's token of a
cell, then block 12's token of the same cell, and so on, so the two tokens the LM has to pair are neighbours.
`pool_groups` k > 0: the first k groups are average-pooled over each s x s cell instead of pixel-shuffled, then
mapped by one linear map per patch width (the same token a per-patch map averaged over the cell gives). A shuffled
cell is one 16-patch vector, and a map learned on seen (color, shape) pairs can read its color through the outline
("a warm diamond is orange"); a pooled cell keeps the colors of its patches and not their arrangement, so its color
reading cannot depend on the shape (issue 18, two-object captions).

`fuse` (every group at the same scale) adds the groups' tokens of a cell into ONE token (a linear map of the
cell's depths concatenated), so a place's color and shape arrive bound in one prefix position.

Shape legend: B batch, N tokens (h*w, optionally + CLS, dropped), G depths, D = D_vis / G, M_g tokens of group g.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Projector, grid_side, register, tokens_to_grid


@register("multidepth")
class MultiDepthProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, groups: int = 2, scale: int = 4, last_scale: int | None = None,
                 slots: int = 0, rank: int = 64, max_tokens: int = 1024, interleave: bool = False,
                 pool_groups: int = 0, fuse: bool = False):
        if in_dim % groups:
            raise ValueError(f"multidepth expects {groups} depths side by side, so D_vis divisible by {groups}; got "
                             f"{in_dim} (read the encoder at {groups} layers, e.g. vit-s14@4+12)")
        options = {"groups": groups, "scale": scale} | ({"last_scale": last_scale} if last_scale else {})
        if slots:  # stated only when used, so checkpoints saved before slots existed keep their config
            options |= {"slots": slots, "rank": rank, "max_tokens": max_tokens}
        if interleave:
            if last_scale not in (None, scale):
                raise ValueError(f"multidepth interleave pairs the groups' tokens place by place, so every group "
                                 f"needs the same scale; got scale {scale} and last_scale {last_scale}")
            options |= {"interleave": True}
        if not 0 <= pool_groups < groups:
            raise ValueError(f"multidepth pool_groups must be 0 to {groups - 1} (the last group keeps its pixel "
                             f"shuffle), got {pool_groups}")
        if pool_groups:
            options |= {"pool_groups": pool_groups}
        if fuse:
            if last_scale not in (None, scale) or interleave:
                raise ValueError("multidepth fuse adds the groups' tokens of each cell into one token, so every group "
                                 f"needs the same scale and no interleave; got scale {scale}, last_scale {last_scale}, "
                                 f"interleave {interleave}")
            options |= {"fuse": True}
        super().__init__(in_dim, out_dim, **options)
        self.groups, self.group_dim = groups, in_dim // groups
        self.scales = [scale] * (groups - 1) + [last_scale or scale]
        self.pool_groups = int(pool_groups)
        self.linears = nn.ModuleList(nn.Linear(self.group_dim * (1 if g < self.pool_groups else s * s), out_dim,
                                               bias=False) for g, s in enumerate(self.scales))
        self.slots, self.interleave, self.fuse = int(slots), bool(interleave), bool(fuse)
        if self.slots:
            self.slot_key = nn.Linear(in_dim, rank)
            self.slot_pos = nn.Parameter(torch.zeros(max_tokens, rank))  # (N_max, r), keys only
            self.slot_queries = nn.Parameter(torch.randn(self.slots, rank) * 0.1)  # (Q, r)
            self.slot_value = nn.Linear(in_dim, out_dim, bias=False)  # every depth of a patch, in one token
            self.slot_embed = nn.Parameter(torch.zeros(self.slots, out_dim))  # (Q, D_txt): which slot
        self.attn_weights: torch.Tensor | None = None  # (B, Q, h*w) of the last forward, for plots

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return sum(self.group_tokens(num_input_tokens)) + self.slots

    def group_tokens(self, num_input_tokens: int) -> list[int]:
        """Visual tokens per depth group, in prefix order (block 4's first for vit-s14@4+12)."""
        side = grid_side(num_input_tokens)
        if self.fuse:  # one group of fused tokens
            return [math.ceil(side / self.scales[0]) ** 2]
        return [math.ceil(side / s) ** 2 for s in self.scales]

    def forward(self, x):
        x = self.prepare(x)
        grid, h, w = tokens_to_grid(x, self.family)  # (B, G * D, h, w)
        out = []
        for g, (s, linear) in enumerate(zip(self.scales, self.linears)):
            part = grid[:, g * self.group_dim:(g + 1) * self.group_dim]  # (B, D, h, w): depth g alone
            part = F.pad(part, (0, -w % s, 0, -h % s))  # (B, D, h', w'), multiples of s
            if g < self.pool_groups:  # one map per patch, averaged over the cell: no outline, (B, D, h'/s, w'/s)
                merged = F.avg_pool2d(part, s)  # (zero padding counts in the mean, as the shuffle's zeros do)
            else:
                merged = F.pixel_unshuffle(part, s)  # (B, D * s^2, h'/s, w'/s)
            out.append(linear(merged.flatten(2).transpose(1, 2)))  # (B, M_g, D_txt)
        if self.fuse:  # one token per cell: the sum of every group's token of that cell (B, M, D_txt)
            out = [torch.stack(out).sum(0)]
        if self.interleave:  # (B, M, G, D_txt) -> (B, G * M, D_txt): cell 0 of every depth, then cell 1, ...
            out = [torch.stack(out, dim=2).flatten(1, 2)]
        if self.slots:
            out.append(self._slot_tokens(grid.flatten(2).transpose(1, 2)))  # (B, Q, D_txt)
        return torch.cat(out, dim=1)  # (B, M_1 + ... + M_G [+ Q], D_txt)

    def _slot_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (B, h*w, G * D) -> (B, Q, D_txt): one attention-pooled token per learned query."""
        n = patches.shape[1]
        if n > self.slot_pos.shape[0]:
            raise ValueError(f"multidepth slots were built for at most {self.slot_pos.shape[0]} patches, got {n}")
        keys = self.slot_key(patches) + self.slot_pos[:n]  # (B, h*w, r)
        scores = torch.einsum("qr,bnr->bqn", self.slot_queries, keys) / keys.shape[-1] ** 0.5
        weights = scores.softmax(-1)  # (B, Q, h*w)
        self.attn_weights = weights.detach()
        return torch.einsum("bqn,bnd->bqd", weights, self.slot_value(patches)) + self.slot_embed  # (B, Q, D_txt)
