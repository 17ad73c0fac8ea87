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
    def __init__(self, in_dim: int, out_dim: int, groups: int = 2, scale: int = 4, last_scale: int | None = None):
        if in_dim % groups:
            raise ValueError(f"multidepth expects {groups} depths side by side, so D_vis divisible by {groups}; got "
                             f"{in_dim} (read the encoder at {groups} layers, e.g. vit-s14@4+12)")
        options = {"groups": groups, "scale": scale} | ({"last_scale": last_scale} if last_scale else {})
        super().__init__(in_dim, out_dim, **options)
        self.groups, self.group_dim = groups, in_dim // groups
        self.scales = [scale] * (groups - 1) + [last_scale or scale]
        self.linears = nn.ModuleList(nn.Linear(self.group_dim * s * s, out_dim, bias=False) for s in self.scales)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        side = grid_side(num_input_tokens)
        return sum(math.ceil(side / s) ** 2 for s in self.scales)

    def group_tokens(self, num_input_tokens: int) -> list[int]:
        """Visual tokens per depth group, in prefix order (block 4's first for vit-s14@4+12)."""
        side = grid_side(num_input_tokens)
        return [math.ceil(side / s) ** 2 for s in self.scales]

    def forward(self, x):
        x = self.prepare(x)
        grid, h, w = tokens_to_grid(x, self.family)  # (B, G * D, h, w)
        out = []
        for g, (s, linear) in enumerate(zip(self.scales, self.linears)):
            part = grid[:, g * self.group_dim:(g + 1) * self.group_dim]  # (B, D, h, w): depth g alone
            part = F.pad(part, (0, -w % s, 0, -h % s))  # (B, D, h', w'), multiples of s
            merged = F.pixel_unshuffle(part, s)  # (B, D * s^2, h'/s, w'/s)
            out.append(linear(merged.flatten(2).transpose(1, 2)))  # (B, M_g, D_txt)
        return torch.cat(out, dim=1)  # (B, M_1 + ... + M_G, D_txt)
