"""Linear and identity connectors (MiniGPT-4, LLaVA-1: one nn.Linear from vision width to LM width)."""
from __future__ import annotations

from torch import nn

from .base import Projector, register


@register("linear")
class LinearProjector(Projector):
    token_wise = True
    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__(in_dim, out_dim, bias=bias)
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x):
        x = self.prepare(x)
        return self.linear(x)  # (B, N, D_vis) -> (B, N, D_txt)


@register("identity")
class IdentityProjector(Projector):
    token_wise = True
    """No parameters: only valid when the encoder width already equals the text width."""

    def __init__(self, in_dim: int, out_dim: int):
        if in_dim != out_dim:
            raise ValueError(f"identity projector needs in_dim == out_dim, got {in_dim} -> {out_dim}")
        super().__init__(in_dim, out_dim)

    def forward(self, x):
        self.prepare(x)  # checks the shape; identity ignores standardisation by definition
        return x
