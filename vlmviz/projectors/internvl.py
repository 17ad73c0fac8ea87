"""InternVL's connector (transformers' `InternVLMultiModalProjector` after `InternVLModel.pixel_shuffle`):
pixel shuffle with downsample_ratio 0.5 (each 2 x 2 block of tokens concatenated, 4x fewer tokens), then
LayerNorm(4 D_vis) -> Linear(4 D_vis, D_txt) -> GELU -> Linear(D_txt, D_txt).

InternVL's shuffle lays a block's channels out as (row in block, column in block, channel), exactly as
`merge_blocks` does, so layer_norm / linear_1 / linear_2 (transformers' names) load without any permutation.
"""
from __future__ import annotations

import math

from torch import nn

from .base import Projector, grid_side, merge_blocks, patch_tokens, register


@register("internvl")
class InternVLProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, scale: int = 2):
        super().__init__(in_dim, out_dim, scale=scale)
        self.scale = scale  # 1 / downsample_ratio
        width = in_dim * scale * scale
        self.layer_norm = nn.LayerNorm(width)  # eps 1e-5, torch's default, as InternVL builds it
        self.linear_1 = nn.Linear(width, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def set_input_stats(self, tokens) -> None:
        """Kept at identity: a norm comes first, as in InternVL, and a per-dimension standardisation
        before it could not be written into InternVL's format (vlms/export.py)."""

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return math.ceil(grid_side(num_input_tokens) / self.scale) ** 2

    def forward(self, x):
        x, side = patch_tokens(self.prepare(x), self.family)  # (B, h*w, D_vis)
        x = merge_blocks(x, side, self.scale)  # (B, M, 4 D_vis)
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))  # (B, M, D_txt)
