"""Low-rank connector: D_vis -> r -> D_txt, (D_vis + D_txt) * r weights instead of D_vis * D_txt.

A bottleneck tests how many directions of the vision space the text side actually needs.
"""
from __future__ import annotations

from torch import nn

from .base import Projector, register


@register("lowrank")
class LowRankProjector(Projector):
    token_wise = True
    def __init__(self, in_dim: int, out_dim: int, rank: int = 64):
        if rank < 1:
            raise ValueError(f"lowrank needs rank >= 1, got {rank}")
        super().__init__(in_dim, out_dim, rank=rank)
        self.down = nn.Linear(in_dim, rank, bias=False)
        self.up = nn.Linear(rank, out_dim)

    def forward(self, x):
        x = self.prepare(x)
        return self.up(self.down(x))  # (B, N, D_vis) -> (B, N, r) -> (B, N, D_txt)
