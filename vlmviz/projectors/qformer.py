"""Q-Former-lite (BLIP-2): learned queries pass through blocks of self-attention, cross-attention to the image
tokens and an MLP, then a linear map into the text width. BLIP-2's Q-Former is a 12-layer BERT with 32 queries;
this keeps its structure at a size that trains on a CPU (2 blocks, width 256 by default).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Projector, register


class QFormerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, q, kv):
        h = self.norm_self(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]  # (B, Q, H)
        h = self.norm_cross(q)
        q = q + self.cross_attn(h, kv, kv, need_weights=False)[0]  # (B, Q, H) attends over (B, N, H)
        return q + self.mlp(self.norm_mlp(q))


@register("qformer")
class QFormerProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 32, hidden_dim: int = 256,
                 num_layers: int = 2, num_heads: int = 4, max_tokens: int = 1024):
        if hidden_dim % num_heads:
            raise ValueError(f"qformer needs hidden_dim divisible by num_heads, got {hidden_dim}, {num_heads}")
        super().__init__(in_dim, out_dim, num_queries=num_queries, hidden_dim=hidden_dim,
                         num_layers=num_layers, num_heads=num_heads, max_tokens=max_tokens)
        self.queries = nn.Parameter(torch.randn(num_queries, hidden_dim) * hidden_dim**-0.5)  # (Q, H)
        self.kv_proj = nn.Linear(in_dim, hidden_dim)
        self.pos_embed = nn.Parameter(torch.zeros(max_tokens, hidden_dim))  # (N_max, H)
        self.norm_kv = nn.LayerNorm(hidden_dim)
        self.blocks = nn.ModuleList(QFormerBlock(hidden_dim, num_heads) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.queries.shape[0]

    def forward(self, x):
        x = self.prepare(x)
        B, N, _ = x.shape
        if N > self.pos_embed.shape[0]:
            raise ValueError(f"qformer was built for at most {self.pos_embed.shape[0]} tokens, got {N}")
        kv = self.norm_kv(self.kv_proj(x) + self.pos_embed[:N])  # (B, N, H)
        q = self.queries.expand(B, -1, -1)  # (B, Q, H)
        for block in self.blocks:
            q = block(q, kv)
        return self.out_proj(self.norm_out(q))  # (B, Q, D_txt)
