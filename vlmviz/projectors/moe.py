"""Mixture-of-experts connector: each token is routed to its top-k MLP experts (as in MoE-LLaVA / CuMo).

Load balancing follows Switch Transformer (Fedus et al. 2021, eq. 4): E * sum_e f_e * P_e, where f_e is the
fraction of routed slots that went to expert e and P_e the mean router probability of e; it is 1.0 when the
load is uniform. `expert_usage` keeps the last forward's per-token choices so the UI can show them.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Projector, register


@register("moe")
class MoEProjector(Projector):
    token_wise = True
    def __init__(self, in_dim: int, out_dim: int, num_experts: int = 4, top_k: int = 2,
                 hidden_dim: int | None = None):
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"moe needs 1 <= top_k <= num_experts, got top_k={top_k}, num_experts={num_experts}")
        hidden_dim = int(hidden_dim or out_dim)
        super().__init__(in_dim, out_dim, num_experts=num_experts, top_k=top_k, hidden_dim=hidden_dim)
        self.top_k = top_k
        self.router = nn.Linear(in_dim, num_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
            for _ in range(num_experts)
        )
        self.expert_usage: torch.Tensor | None = None  # (B, N, E) routing weights of the last forward
        self._aux = torch.zeros(())

    def forward(self, x):
        x = self.prepare(x)
        B, N, _ = x.shape
        E = len(self.experts)
        probs = self.router(x).softmax(dim=-1)  # (B, N, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (B, N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        gate = torch.zeros_like(probs).scatter(-1, chosen, weights)  # (B, N, E), zero for unrouted experts
        out = x.new_zeros(B, N, self.out_dim)
        for e, expert in enumerate(self.experts):
            routed = gate[..., e] > 0  # (B, N)
            if routed.any():
                out[routed] += gate[..., e][routed, None] * expert(x[routed])  # (n_e, D_txt)
        routed_fraction = (gate > 0).float().mean(dim=(0, 1)) / self.top_k  # f_e, sums to 1
        self._aux = E * (routed_fraction * probs.mean(dim=(0, 1))).sum()
        self.expert_usage = gate.detach()
        return out

    def aux_loss(self) -> torch.Tensor:
        return self._aux
