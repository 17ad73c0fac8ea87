"""Pixel shuffle (space-to-depth) token merge, as in nanoVLM and Idefics3: s x s neighbouring patch tokens are
concatenated channel-wise, so N tokens become N / s^2 tokens of width D_vis * s^2, then one linear layer.

Grids not divisible by s (EfficientNet's 7 x 7) are zero-padded on the bottom/right to the next multiple.

This is Idefics3's / SmolVLM's connector (transformers' `Idefics3Connector`: pixel_shuffle(scale_factor), then
`Idefics3SimpleMLP`, one bias-free Linear(D_vis * s^2, D_txt); scale_factor 2 in Idefics3, 3 in SmolVLM-2.2B, 4 in
SmolVLM-256M/500M) and nanoVLM's, with the same output token order (blocks in reading order), up to one fixed
permutation of the linear layer's input columns: F.pixel_unshuffle orders a block's channels (channel, row, column),
Idefics3 and nanoVLM (row, column, channel). `idefics3_columns` gives that permutation; the Idefics3 adapter and
exporter apply it at the edge, so imported weights give Idefics3's features exactly (tests/test_vlms.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Projector, grid_side, register, tokens_to_grid


@register("pixel_shuffle")
class PixelShuffleProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, scale: int = 2):
        if scale < 1:
            raise ValueError(f"pixel_shuffle needs scale >= 1, got {scale}")
        super().__init__(in_dim, out_dim, scale=scale)
        self.scale = scale
        self.linear = nn.Linear(in_dim * scale * scale, out_dim, bias=False)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return math.ceil(grid_side(num_input_tokens) / self.scale) ** 2

    def forward(self, x):
        x = self.prepare(x)
        grid, h, w = tokens_to_grid(x, self.family)  # (B, D_vis, h, w)
        s = self.scale
        grid = F.pad(grid, (0, -w % s, 0, -h % s))  # (B, D_vis, h', w'), multiples of s
        merged = F.pixel_unshuffle(grid, s)  # (B, D_vis * s^2, h'/s, w'/s)
        tokens = merged.flatten(2).transpose(1, 2)  # (B, M, D_vis * s^2)
        return self.linear(tokens)  # (B, M, D_txt)


def idefics3_columns(in_dim: int, scale: int) -> torch.Tensor:
    """Index `perm` with ours = theirs[:, perm]: our input column c * s^2 + k is Idefics3's column k * D_vis + c
    (k = row * s + column inside the block). The inverse, for export, is perm.argsort()."""
    s2 = scale * scale
    return torch.tensor([k * in_dim + c for c in range(in_dim) for k in range(s2)])
