"""Ovis's visual embedding table (Lu et al. 2024, "Ovis: structural embedding alignment"): each (merged) vision
token becomes a probability distribution over a visual vocabulary, and its embedding is the probability-weighted
mix of a learnable table's rows, the way a text token id picks a row of the LM's embedding table, only soft.

Ovis's visual tokenizer: hidden_stride x hidden_stride neighbouring tokens concatenated (2 in Ovis 1.6 / 2), a
bias-free Linear to the vocabulary, LayerNorm over the logits, softmax; then probs @ VTE, the visual embedding table
(V, D_txt). `visual_probs` returns the distributions so the app can show which visual words fire where.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Projector, grid_side, merge_blocks, patch_tokens, register


@register("ovis")
class OvisProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, vocab_size: int = 4096, stride: int = 2):
        super().__init__(in_dim, out_dim, vocab_size=vocab_size, stride=stride)
        self.stride = stride
        self.head_linear = nn.Linear(in_dim * stride * stride, vocab_size, bias=False)
        self.head_norm = nn.LayerNorm(vocab_size)
        self.vte = nn.Embedding(vocab_size, out_dim)  # the visual embedding table (V, D_txt)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return math.ceil(grid_side(num_input_tokens) / self.stride) ** 2

    def visual_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D_vis) -> (B, M, V): each output token's distribution over the visual vocabulary."""
        x, side = patch_tokens(self.prepare(x), self.family)  # (B, h*w, D_vis)
        x = merge_blocks(x, side, self.stride)  # (B, M, s^2 D_vis)
        return self.head_norm(self.head_linear(x)).softmax(-1)  # (B, M, V)

    def forward(self, x):
        return self.visual_probs(x) @ self.vte.weight  # (B, M, V) @ (V, D_txt) -> (B, M, D_txt)
