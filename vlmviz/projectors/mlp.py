"""LLaVA-1.5's `mlpNx_gelu`: N linear layers with GELU between them.

LLaVA builds `nn.Sequential(Linear(D_vis, D_txt), GELU(), Linear(D_txt, D_txt))` for mlp2x_gelu
(llava/model/multimodal_projector/builder.py); the hidden width is the text width unless `hidden_dim` is given.
Layers are named linear_1 .. linear_N as in transformers' LlavaMultiModalProjector; checkpoints.py maps them to
LLaVA's mm_projector.0 / .2 indices at the import/export edge.
"""
from __future__ import annotations

from torch import nn

from .base import Projector, register


@register("mlp", pattern=r"mlp(?P<depth>\d+)x_gelu", help="mlpNx_gelu")
class MLPProjector(Projector):
    token_wise = True
    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, hidden_dim: int | None = None):
        if depth < 1:
            raise ValueError(f"mlpNx_gelu needs N >= 1, got N={depth}")
        hidden_dim = int(hidden_dim or out_dim)
        super().__init__(in_dim, out_dim, depth=depth, hidden_dim=hidden_dim)
        self.depth = depth
        dims = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
        for i in range(depth):
            self.add_module(f"linear_{i + 1}", nn.Linear(dims[i], dims[i + 1]))
        self.act = nn.GELU()

    def forward(self, x):
        x = self.prepare(x)
        for i in range(1, self.depth + 1):
            if i > 1:
                x = self.act(x)
            x = getattr(self, f"linear_{i}")(x)  # (B, N, H) ... -> (B, N, D_txt)
        return x
