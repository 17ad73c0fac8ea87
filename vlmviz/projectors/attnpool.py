"""Attention pooling with a few learned queries, positions on the keys only, slots concatenated.

Each of Q queries attends over the input tokens and pools their values into one slot (one query per object, in
effect); the Q slots are concatenated and mapped to the text space as ONE output token. Positions (one learned
vector per input position) are added to the keys only, as Qwen-VL adds its 2-D positions to the resampler's keys:
*where* a token is decides which slot it lands in, while *what* it says (the value) reads the same everywhere. So a
shape seen only on the left is still read when it turns up on the right, which a map with one weight per
position (linear on a flattened grid) or position-laden values cannot do (BENCHMARKS.md, relation hold-out).

Meant for short token sets such as `cls+cells` (CLS plus the 4 x 4 max-pooled cells); it works on any (B, N, D_vis).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Projector, register


@register("attnpool")
class AttentionPoolProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 2, rank: int = 64, max_tokens: int = 1024):
        super().__init__(in_dim, out_dim, num_queries=num_queries, rank=rank, max_tokens=max_tokens)
        self.key = nn.Linear(in_dim, rank)
        self.value = nn.Linear(in_dim, rank)
        self.pos_embed = nn.Parameter(torch.zeros(max_tokens, rank))  # (N_max, r), keys only
        self.queries = nn.Parameter(torch.randn(num_queries, rank) * 0.1)  # (Q, r)
        self.out = nn.Linear(num_queries * rank, out_dim)
        self.attn_weights: torch.Tensor | None = None  # (B, Q, N) of the last forward, for plots

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return 1

    def forward(self, x):
        x = self.prepare(x)
        B, N, _ = x.shape
        if N > self.pos_embed.shape[0]:
            raise ValueError(f"attnpool was built for at most {self.pos_embed.shape[0]} tokens, got {N}")
        keys = self.key(x) + self.pos_embed[:N]  # (B, N, r)
        scores = torch.einsum("qr,bnr->bqn", self.queries, keys) / keys.shape[-1] ** 0.5
        weights = scores.softmax(-1)  # (B, Q, N)
        self.attn_weights = weights.detach()
        slots = torch.einsum("bqn,bnr->bqr", weights, self.value(x))  # (B, Q, r)
        return self.out(slots.flatten(1))[:, None]  # (B, 1, D_txt)
