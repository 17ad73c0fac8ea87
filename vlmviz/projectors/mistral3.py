"""Mistral 3 / Pixtral's connector (transformers' `Mistral3MultiModalProjector`): RMSNorm over D_vis, a patch
merger (each 2 x 2 block of tokens through a bias-free Linear(4 D_vis, D_vis)), then Linear(D_vis, D_txt) -> GELU
-> Linear(D_txt, D_txt). Names are transformers' (norm, patch_merger.merging_layer, linear_1, linear_2).

The merger gathers blocks with `F.unfold`, whose channel order is (channel, row in block, column in block):
F.pixel_unshuffle's, not the (row, column, channel) of Qwen's and InternVL's merges. Grids not divisible by the
merge size are zero-padded (Mistral's own images always divide: its processor sizes them to multiples).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from .base import Projector, grid_side, register, tokens_to_grid


@register("mistral3")
class Mistral3Projector(Projector):
    def __init__(self, in_dim: int, out_dim: int, merge: int = 2, bias: bool = True, eps: float = 1e-5):
        super().__init__(in_dim, out_dim, merge=merge, bias=bias, eps=float(eps))
        self.merge = merge
        self.norm = nn.RMSNorm(in_dim, eps=float(eps))  # Mistral3RMSNorm: weight * x / rms(x), eps of the text model
        self.patch_merger = nn.Module()
        self.patch_merger.merging_layer = nn.Linear(in_dim * merge * merge, in_dim, bias=False)
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim, bias=bias)

    def set_input_stats(self, tokens) -> None:
        """Kept at identity: a norm comes first, as in Mistral 3, and a per-dimension standardisation
        before it could not be written into Mistral 3's format (vlms/export.py)."""

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return math.ceil(grid_side(num_input_tokens) / self.merge) ** 2

    def forward(self, x):
        x = self.prepare(x)
        grid, h, w = tokens_to_grid(self.norm(x), self.family)  # (B, D_vis, h, w), normed per token first
        m = self.merge
        grid = F.pad(grid, (0, -w % m, 0, -h % m))  # (B, D_vis, h', w')
        blocks = F.pixel_unshuffle(grid, m).flatten(2).transpose(1, 2)  # (B, M, D_vis * m^2), unfold's order
        x = self.patch_merger.merging_layer(blocks)  # (B, M, D_vis)
        return self.linear_2(self.act(self.linear_1(x)))  # (B, M, D_txt)
