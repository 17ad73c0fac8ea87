"""Learned-query resampler (Flamingo's Perceiver resampler, Qwen-VL's single cross-attention layer).

Q learned queries cross-attend to the (projected) image tokens, so any number of input tokens becomes exactly Q
output tokens. Qwen-VL adds 2-D positional information to the keys; we add a learned position embedding for up to
`max_tokens` input positions for the same reason: without it the queries cannot tell where a token came from.
pool p > 1 first averages each p x p block of the square patch grid (a 16 x 16 grid becomes 8 x 8 at p = 2), which
cuts the keys and values, and so a training step, by p^2.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Projector, register


@register("resampler")
class ResamplerProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 32, num_heads: int = 8,
                 max_tokens: int = 1024, pool: int = 1):
        if out_dim % num_heads:
            raise ValueError(f"resampler needs out_dim divisible by num_heads, got {out_dim} and {num_heads}")
        if pool < 1:
            raise ValueError(f"resampler pool must be >= 1 (1: every patch), got {pool}")
        options = {"pool": pool} if pool != 1 else {}  # stated only when used: older checkpoints' configs still match
        super().__init__(in_dim, out_dim, num_queries=num_queries, num_heads=num_heads, max_tokens=max_tokens,
                         **options)
        self.pool = pool
        self.queries = nn.Parameter(torch.randn(num_queries, out_dim) * out_dim**-0.5)  # (Q, D_txt)
        self.kv_proj = nn.Linear(in_dim, out_dim, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(max_tokens, out_dim))  # (N_max, D_txt)
        self.norm_kv = nn.LayerNorm(out_dim)
        self.norm_q = nn.LayerNorm(out_dim)
        self.attn = nn.MultiheadAttention(out_dim, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(out_dim)
        self.proj = nn.Linear(out_dim, out_dim)
        self.attn_weights: torch.Tensor | None = None  # (B, Q, N) of the last forward, for plots

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.queries.shape[0]

    def forward(self, x):
        x = self.prepare_patches(x, self.pool, self.pos_embed.shape[0])
        B, N, _ = x.shape
        kv = self.norm_kv(self.kv_proj(x) + self.pos_embed[:N])  # (B, N, D_txt)
        q = self.norm_q(self.queries).expand(B, -1, -1)  # (B, Q, D_txt)
        out, weights = self.attn(q, kv, kv, need_weights=True)  # (B, Q, D_txt), (B, Q, N)
        self.attn_weights = weights.detach()
        return self.proj(self.norm_out(out))  # (B, Q, D_txt)
