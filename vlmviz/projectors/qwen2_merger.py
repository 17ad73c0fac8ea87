"""Qwen2-VL / Qwen2.5-VL patch merger (transformers' `PatchMerger`, `Qwen2_5_VLPatchMerger`): normalise each vision
token (LayerNorm in Qwen2-VL, RMSNorm in Qwen2.5-VL and Qwen3-VL's merger-style stacks), concatenate each 2 x 2
block of neighbouring tokens into one of width 4 * D_vis, then Linear(4D, 4D) -> GELU -> Linear(4D, D_txt):
4x fewer tokens.

Token order: vlmviz hands every connector raster order (row by row over the h x w grid). Qwen2-VL's image
processor instead orders patches so that each 4 consecutive ones form a 2 x 2 block, and its merger is then a plain
`view(-1, 4 * D)`. The Qwen adapter (vlmviz/vlms/qwen2_vl.py) converts its tower's tokens to raster order at the
edge; `merge_blocks` regroups them here with the same channel layout, so Qwen's weights load unchanged.
Layers are named ln_q, linear_1, linear_2 (Qwen's ln_q, mlp.0, mlp.2; mapped at the import/export edge).
"""
from __future__ import annotations

import math

from torch import nn

from .base import Projector, grid_side, merge_blocks, patch_tokens, register

NORMS = ("layernorm", "rmsnorm")


@register("qwen2_merger")
class Qwen2MergerProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, norm: str = "layernorm", merge: int = 2,
                 hidden_dim: int | None = None):
        if norm not in NORMS:
            raise ValueError(f"qwen2_merger option norm must be one of {', '.join(NORMS)}, got {norm!r}")
        hidden_dim = int(hidden_dim or in_dim * merge * merge)  # Qwen: the merged width, 4 * D_vis
        super().__init__(in_dim, out_dim, norm=norm, merge=merge, hidden_dim=hidden_dim)
        self.merge = merge
        # eps 1e-6 as both Qwen mergers use
        norm_cls = nn.LayerNorm if norm == "layernorm" else nn.RMSNorm
        self.ln_q = norm_cls(in_dim, eps=1e-6)
        self.linear_1 = nn.Linear(in_dim * merge * merge, hidden_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def set_input_stats(self, tokens) -> None:
        """Kept at identity: a norm comes first, as in Qwen's merger, and a per-dimension standardisation
        before it could not be written into Qwen's merger's format (vlms/export.py)."""

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return math.ceil(grid_side(num_input_tokens) / self.merge) ** 2

    def forward(self, x):
        x, side = patch_tokens(self.prepare(x), self.family)  # (B, h*w, D_vis) raster order
        x = merge_blocks(self.ln_q(x), side, self.merge)  # (B, M, 4 D_vis): norm first, as Qwen does
        return self.linear_2(self.act(self.linear_1(x)))  # (B, M, D_txt)
