"""Pooling of projector outputs. Shape legend: B images, M projector tokens, D text width."""
from __future__ import annotations

import torch

from .config import POOLINGS


def pool_tokens(x: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, M, D) -> (B, D) for mean / cls (the first token); (B, M, D) unchanged for none (token-level)."""
    if pooling == "mean":
        return x.mean(1)
    if pooling == "cls":
        return x[:, 0]
    if pooling == "none":
        return x
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
