"""Alignment losses between projected image vectors and text vectors. Pure functions of tensors.

Shapes: img (B, D) pooled, or (B, M, D) token-level; txt (B, D); row i of img and of txt are a matched pair.
Token-level image sets are scored against a caption by the mean cosine over their M tokens (late interaction
with mean aggregation), so every token is pulled towards its caption and contrasted with the other captions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def cosine_scores(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """Cosine score of every image with every caption: (B, D) or (B, M, D) with (C, D) -> (B, C)."""
    txt = F.normalize(txt, dim=-1)
    if img.ndim == 3:
        return torch.einsum("bmd,cd->bc", F.normalize(img, dim=-1), txt) / img.shape[1]  # mean over M tokens
    return F.normalize(img, dim=-1) @ txt.T


def cosine_alignment_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(pred_i, target_i)): 0 for identical directions, 1 orthogonal, 2 opposite.

    The classic projector lesson's loss: it pulls each pair together but never pushes non-pairs apart, so on its
    own it can collapse all images onto the mean caption; InfoNCE and sigmoid losses add the push.
    """
    if pred.ndim == 3:
        target = target[:, None, :]  # (B, 1, D): every token of image i aims at caption i
    return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()


def false_negatives(groups: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
    """(B, B) mask of off-diagonal pairs in the same group: two images whose captions state the same facts are not
    each other's negatives (with 6 colors x 5 shapes, a batch of 256 scenes is full of them)."""
    if groups is None:
        return None
    groups = groups.to(device)
    return (groups[:, None] == groups[None, :]) & ~torch.eye(n, dtype=torch.bool, device=device)


def hard_scores(img: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Cosine of each image with its own K hard-negative captions: (B, D) or (B, M, D) with (B, K, D) -> (B, K)."""
    hard = F.normalize(hard, dim=-1)
    if img.ndim == 3:
        return torch.einsum("bmd,bkd->bk", F.normalize(img, dim=-1), hard) / img.shape[1]
    return torch.einsum("bd,bkd->bk", F.normalize(img, dim=-1), hard)


def info_nce_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                  groups: torch.Tensor | None = None, hard: torch.Tensor | None = None,
                  hard_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, Fig. 3): cross-entropy over the batch both ways.

    `logit_scale` is log(1 / temperature), learned and clamped at log(100) as in CLIP. `groups` (B,) marks pairs
    that state the same facts; they are dropped from each other's negatives (false-negative elimination).
    `hard` (B, K, D) gives each image K extra negative captions of its own (its caption with colors or roles
    swapped, as in NegCLIP, Yuksekgonul et al. 2023), added to the image->text side; `hard_mask` (B, K) says which
    are real (False: padding, left out).
    """
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    logits = scale * cosine_scores(img, txt)  # (B, B)
    same = false_negatives(groups, len(img), logits.device)
    if same is not None:
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(img), device=img.device)
    t2i = F.cross_entropy(logits.T, labels)
    if hard is not None:
        extra = scale * hard_scores(img, hard)  # (B, K)
        if hard_mask is not None:
            extra = extra.masked_fill(~hard_mask, float("-inf"))
        logits = torch.cat([logits, extra], dim=1)  # (B, B + K)
    return 0.5 * (F.cross_entropy(logits, labels) + t2i)


def sigmoid_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor, groups: torch.Tensor | None = None, hard: torch.Tensor | None = None,
                 hard_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, Algorithm 1): every pair is a binary problem,
    +1 on the diagonal and -1 elsewhere, summed over pairs and divided by the batch size. Same-group pairs
    (`groups`) are left out rather than pushed apart; hard negatives (`hard` (B, K, D)) are K more -1 pairs per
    image."""
    logits = logit_scale.exp() * cosine_scores(img, txt) + logit_bias  # (B, B)
    signs = 2.0 * torch.eye(len(img), device=img.device, dtype=logits.dtype) - 1.0  # +1 diag, -1 off
    terms = -F.logsigmoid(signs * logits)  # (B, B)
    same = false_negatives(groups, len(img), logits.device)
    if same is not None:
        terms = terms.masked_fill(same, 0.0)
    total = terms.sum()
    if hard is not None:
        extra = -F.logsigmoid(-(logit_scale.exp() * hard_scores(img, hard) + logit_bias))  # (B, K)
        total = total + (extra if hard_mask is None else extra.masked_fill(~hard_mask, 0.0)).sum()
    return total / len(img)


class LossHead(nn.Module):
    """The learnable scalars a loss needs (temperature, SigLIP bias); trained together with the projector."""

    def __init__(self, kind: str, init_temperature: float = 0.07):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
        self.kind = kind
        if kind == "infonce":
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        elif kind == "sigmoid":
            # SigLIP's initialisation: t' = log 10, b = -10, so the loss starts near the all-negative prior
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, groups: torch.Tensor | None = None,
                hard: torch.Tensor | None = None, hard_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "cosine":
            if hard is not None:
                raise ValueError("hard negatives need a contrastive loss (infonce or sigmoid); cosine has no negatives")
            return cosine_alignment_loss(img, txt)
        if self.kind == "infonce":
            return info_nce_loss(img, txt, self.logit_scale, groups, hard, hard_mask)
        return sigmoid_loss(img, txt, self.logit_scale, self.logit_bias, groups, hard, hard_mask)

    @property
    def temperature(self) -> float | None:
        return None if self.kind == "cosine" else float(1.0 / self.logit_scale.detach().exp())


LOSSES = ("cosine", "infonce", "sigmoid")
