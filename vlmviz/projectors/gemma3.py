"""Gemma 3's connector (transformers' `Gemma3MultiModalProjector`): average-pool the SigLIP token grid with a
k x k kernel (k = patches per side / sqrt(mm_tokens_per_image): 64 x 64 -> 16 x 16 = 256 tokens, k = 4), RMSNorm in
Gemma's form (x / rms(x) * (1 + weight), weight initialised at 0), then a matmul with a [D_vis, D_txt] weight (the
transpose of an nn.Linear's). Parameter names are Gemma's, so its weights load as they are.

AvgPool2d drops what does not fill a kernel (floor), as Gemma's does: a 7 x 7 grid at k = 4 gives one token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Projector, grid_side, register, tokens_to_grid


class GemmaRMSNorm(nn.Module):
    """RMSNorm with Gemma's (1 + weight) scale, computed in float32 (transformers' Gemma3RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)  # (..., D)
        return (y * (1.0 + self.weight.float())).type_as(x)


@register("gemma3")
class Gemma3Projector(Projector):
    def __init__(self, in_dim: int, out_dim: int, pool: int = 4, eps: float = 1e-6):
        super().__init__(in_dim, out_dim, pool=pool, eps=float(eps))
        self.pool = pool
        self.mm_soft_emb_norm = GemmaRMSNorm(in_dim, eps=float(eps))
        # stored (D_vis, D_txt) as Gemma stores it; Gemma initialises it to zeros, a trainable start needs scale
        self.mm_input_projection_weight = nn.Parameter(torch.randn(in_dim, out_dim) / in_dim ** 0.5)

    def set_input_stats(self, tokens) -> None:
        """Kept at identity: a norm comes first, as in Gemma 3, and a per-dimension standardisation
        before it could not be written into Gemma 3's format (vlms/export.py)."""

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return max(1, grid_side(num_input_tokens) // self.pool) ** 2

    def forward(self, x):
        grid, h, _ = tokens_to_grid(self.prepare(x), self.family)  # (B, D_vis, h, w)
        k = min(self.pool, h)  # a grid smaller than the kernel pools to one token
        pooled = F.avg_pool2d(grid, k, k).flatten(2).transpose(1, 2)  # (B, M, D_vis)
        return self.mm_soft_emb_norm(pooled) @ self.mm_input_projection_weight  # (B, M, D_txt)
