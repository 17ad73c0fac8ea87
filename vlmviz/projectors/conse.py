"""ConSE connector (Norouzi et al., ICLR 2014, "Zero-shot learning by convex combination of semantic embeddings"):
a classifier head gives class probabilities and the output is the probability-weighted mix of the classes' text
embeddings, so it lands in the frozen text space without any image-caption training.

Applied to every token: the head is linear, so running it on each of EfficientNet's 49 spatial tokens gives
per-place class logits whose mean is exactly the head on the average-pooled features. Every token then gets its
own ConSE vector (what that patch looks like), and one image-level vector goes first, like a CLS token:
  image_pool="max":  per class, the highest probability any token gives it (multiple-instance view: the image
                     shows a concept if some patch does; keeps small objects the global average dilutes);
  image_pool="head": the softmax of the mean logits, i.e. the network's own image prediction (classic ConSE).
Untrained (random head and class table) it is chance; vlmviz.runs.concepts fills both from the bundled models.

Legend: B batch, N tokens, M = 1 + N outputs, C classes, k top classes kept, D_vis / D_txt widths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Projector, register

IMAGE_POOLS = ("max", "head")


@register("conse")
class ConSEProjector(Projector):
    def __init__(self, in_dim: int, out_dim: int, num_classes: int = 1000, top_k: int = 10,
                 temperature: float = 1.0, image_pool: str = "max"):
        if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0):
            raise ValueError(f"conse option temperature must be a number > 0, got {temperature!r}")
        if image_pool not in IMAGE_POOLS:
            raise ValueError(f"conse option image_pool must be one of {', '.join(IMAGE_POOLS)}, got {image_pool!r}")
        if top_k > num_classes:
            raise ValueError(f"conse option top_k={top_k} exceeds num_classes={num_classes}")
        super().__init__(in_dim, out_dim, num_classes=num_classes, top_k=top_k, temperature=float(temperature),
                         image_pool=image_pool)
        self.num_classes, self.top_k, self.temperature, self.image_pool = num_classes, top_k, temperature, image_pool
        # The head is trainable (fine-tuning it moves which concepts fire); the class table is the frozen text side.
        self.head = nn.Linear(in_dim, num_classes)
        self.register_buffer("class_embeddings", F.normalize(torch.randn(num_classes, out_dim), dim=-1))

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return 1 + num_input_tokens

    def set_input_stats(self, tokens: torch.Tensor) -> None:
        """Kept at identity: the head was trained on the encoder's raw features, standardising would break it."""

    def concept_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D_vis) -> class probabilities (B, 1 + N, C): the image-level distribution first, then one per
        token. The max-pooled image row is renormalised to sum to 1 so it reads as probabilities too."""
        logits = self.head(self.prepare(x))  # (B, N, C)
        probs = (logits / self.temperature).softmax(-1)  # (B, N, C)
        if self.image_pool == "max":
            image = probs.amax(1, keepdim=True)  # (B, 1, C)
            image = image / image.sum(-1, keepdim=True)
        else:
            image = (logits.mean(1, keepdim=True) / self.temperature).softmax(-1)  # (B, 1, C)
        return torch.cat([image, probs], dim=1)  # (B, 1 + N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.concept_probs(x)  # (B, M, C)
        top, idx = probs.topk(self.top_k, dim=-1)  # (B, M, k)
        # ConSE keeps the k most likely classes and divides by their total probability (its 1/Z)
        weights = torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))  # (B, M, C)
        return weights @ self.class_embeddings  # (B, M, C) @ (C, D_txt) -> (B, M, D_txt)
