"""Word slots: Q queries choose places, a per-patch reading says what is there, one output token per query.

Each query scores every patch by its key plus a learned position (positions on the keys only, as attnpool) and
averages the patches' values; a value is an MLP of one patch alone, so what a patch says is read the same wherever
it is and before anything is mixed. Made for `caption-eval --echo-steps` (caption.model.EchoWords): slot k becomes the
LM's embedding of the k-th content word of a scene's statement. Read per patch, the words of held-out (color, shape)
pairs come out right where a reading of mixed tokens learns the training pairs instead (BENCHMARKS.md, echo).
`prompt` P appends P learned tokens that do not depend on the image (a soft prompt: how to phrase the words), and
`pool` p averages p x p blocks of a square patch grid first, as the resampler's pool does.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Projector, register


@register("wordslots")
class WordSlotsProjector(Projector):
    zero_options = ("prompt", "hidden_dim")  # no prompt tokens; a linear reading per patch

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 5, rank: int = 64, hidden_dim: int = 512,
                 prompt: int = 0, pool: int = 1, max_tokens: int = 1024):
        if num_queries < 1 or prompt < 0 or pool < 1:
            raise ValueError(f"wordslots needs num_queries >= 1, prompt >= 0 and pool >= 1, got {num_queries}, "
                             f"{prompt} and {pool}")
        super().__init__(in_dim, out_dim, num_queries=num_queries, rank=rank, hidden_dim=hidden_dim, prompt=prompt,
                         pool=pool, max_tokens=max_tokens)
        self.pool = pool
        self.key = nn.Linear(in_dim, rank)
        self.pos_embed = nn.Parameter(torch.zeros(max_tokens, rank))  # (N_max, r), keys only
        self.queries = nn.Parameter(torch.randn(num_queries, rank) * 0.1)  # (Q, r)
        self.log_sharpness = nn.Parameter(torch.tensor(2.0))
        self.value = (nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
                      if hidden_dim else nn.Linear(in_dim, out_dim))  # per patch: (B, N, D_txt)
        self.bias = nn.Parameter(torch.zeros(num_queries, out_dim))  # (Q, D_txt)
        # about a word embedding's scale (SmolLM2: norm 2.4 over 576 dims)
        self.prompt = nn.Parameter(torch.randn(prompt, out_dim) * 0.1)  # (P, D_txt)
        self.attn_weights: torch.Tensor | None = None  # (B, Q, N) of the last forward, for plots

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.queries.shape[0] + self.prompt.shape[0]

    def forward(self, x):
        x = self.prepare_patches(x, self.pool, self.pos_embed.shape[0])
        B, N, _ = x.shape
        keys = self.key(x) + self.pos_embed[:N]  # (B, N, r)
        scores = torch.einsum("qr,bnr->bqn", self.queries, keys) / keys.shape[-1] ** 0.5
        weights = (scores * self.log_sharpness.exp()).softmax(-1)  # (B, Q, N)
        self.attn_weights = weights.detach()
        slots = torch.einsum("bqn,bnd->bqd", weights, self.value(x)) + self.bias  # (B, Q, D_txt)
        return torch.cat([slots, self.prompt.expand(B, -1, -1)], dim=1)  # (B, Q + P, D_txt)
