"""Convolutional abstractor (Honeybee's C-Abstractor, Cha et al. CVPR 2024): residual conv blocks keep local
context, adaptive average pooling sets the output token count (s x s), more blocks, then an MLP to the text
width. Honeybee uses RegNet blocks; these are plain pre-norm 3x3 conv residual blocks of the same role.
tokens_per_cell k > 1 (not Honeybee's): the MLP writes k consecutive text tokens for each pooled cell, so a frozen
LM can read one place as a short phrase ("red", "circle") and copy from it the way it copies from text.
"""
from __future__ import annotations

from torch import nn

from .base import Projector, register, tokens_to_grid


class ConvBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, dim)  # LayerNorm over (C, h, w) per sample
        self.conv_1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.act = nn.SiLU()
        self.conv_2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x):
        return x + self.conv_2(self.act(self.conv_1(self.norm(x))))  # (B, H, h, w)


@register("cabstractor")
class CAbstractorProjector(Projector):
    zero_options = ("depth",)  # depth 0: no conv blocks, the pool and the MLP alone

    def __init__(self, in_dim: int, out_dim: int, output_side: int = 4, hidden_dim: int = 256,
                 depth: int = 1, tokens_per_cell: int = 1):
        super().__init__(in_dim, out_dim, output_side=output_side, hidden_dim=hidden_dim, depth=depth,
                         tokens_per_cell=tokens_per_cell)
        self.output_side, self.tokens_per_cell = output_side, tokens_per_cell
        self.in_proj = nn.Conv2d(in_dim, hidden_dim, 1)
        self.blocks_before = nn.Sequential(*(ConvBlock(hidden_dim) for _ in range(depth)))
        self.pool = nn.AdaptiveAvgPool2d(output_side)
        self.blocks_after = nn.Sequential(*(ConvBlock(hidden_dim) for _ in range(depth)))
        self.linear_1 = nn.Linear(hidden_dim, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim * tokens_per_cell)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.output_side**2 * self.tokens_per_cell

    def forward(self, x):
        x = self.prepare(x)
        grid, _, _ = tokens_to_grid(x, self.family)  # (B, D_vis, h, w)
        y = self.blocks_before(self.in_proj(grid))  # (B, H, h, w)
        y = self.blocks_after(self.pool(y))  # (B, H, s, s)
        y = y.flatten(2).transpose(1, 2)  # (B, s*s, H)
        y = self.linear_2(self.act(self.linear_1(y)))  # (B, s*s, k * D_txt)
        return y.reshape(y.shape[0], -1, self.out_dim)  # (B, M = s*s*k, D_txt): a cell's k tokens in a row
