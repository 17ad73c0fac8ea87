"""Residual MLP connector: a linear map into the text width plus pre-LayerNorm residual MLP blocks.

The residual path starts as the plain linear map (the block's last layer is zero-initialised), so training
begins from the linear connector and only adds non-linearity where the loss asks for it.
"""
from __future__ import annotations

from torch import nn

from .base import Projector, register


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear_1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, x):
        return x + self.linear_2(self.act(self.linear_1(self.norm(x))))  # (B, N, D_txt)


@register("residual_mlp")
class ResidualMLPProjector(Projector):
    token_wise = True
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, num_blocks: int = 1):
        hidden_dim = int(hidden_dim or 2 * out_dim)
        super().__init__(in_dim, out_dim, hidden_dim=hidden_dim, num_blocks=num_blocks)
        self.in_proj = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList(ResidualBlock(out_dim, hidden_dim) for _ in range(num_blocks))

    def forward(self, x):
        x = self.prepare(x)
        x = self.in_proj(x)  # (B, N, D_txt)
        for block in self.blocks:
            x = block(x)
        return x
