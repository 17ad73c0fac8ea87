"""Open-set evaluation on held-out attribute combinations (DESIGN.md: closed sets of only test captions
overstate quality).

Each test image is ranked against every candidate caption: all training captions (seen combinations), all test
captions, and the attribute-swapped twin of every test caption. We report image->text R@1/R@5 over that open set,
text->image R@1/R@5 over the test images, swap accuracy (the true caption scores above its swapped twin) and
per-attribute accuracy of the top-ranked caption whose attributes are known.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .metrics import modality_gap, ranks, similarity_matrix

ATTRIBUTES = ("color", "shape", "size", "position", "relation", "count", "color2", "shape2")


HARD_NEGATIVES = ("swapped", "swapped_role")


def target_caption(sample) -> str:
    """Scenes phrase the same facts with several templates; evaluation ranks one canonical phrasing per scene so
    that a different template is never counted as a miss."""
    return sample.meta.get("canonical", sample.caption)


def candidate_set(train: Sequence, test: Sequence) -> tuple[list[str], list[dict | None]]:
    """Unique captions of train + test + swapped test captions, with the attributes each one states (None when
    unknown: a swapped caption states a combination nobody drew)."""
    captions, metas, seen = [], [], set()
    for sample in list(train) + list(test):
        text = target_caption(sample)
        if text not in seen:
            seen.add(text)
            captions.append(text)
            metas.append({k: v for k, v in sample.meta.items() if k in ATTRIBUTES})
    for sample in test:
        for key in HARD_NEGATIVES:
            negative = sample.meta.get(key)
            if negative and negative not in seen:
                seen.add(negative)
                captions.append(negative)
                metas.append(None)
    return captions, metas


def open_set_report(img: torch.Tensor, test: Sequence, captions: list[str], metas: list[dict | None],
                    encode_text) -> dict[str, float]:
    """img (N_test, D) projected test vectors; encode_text(list[str]) -> (T, D) vectors of the same space."""
    cand = encode_text(captions)  # (C, D)
    index = {c: i for i, c in enumerate(captions)}
    targets = torch.tensor([index[target_caption(s)] for s in test])
    sim = similarity_matrix(img, cand)  # (N_test, C)
    r = ranks(sim, targets).float()
    report = {"N_test": len(test), "candidates": len(captions),
              "i2t_R@1": float((r <= 1).float().mean()), "i2t_R@5": float((r <= 5).float().mean())}
    test_txt = cand[targets]  # (N_test, D)
    r_t2i = ranks(similarity_matrix(test_txt, img)).float()  # each test caption ranks the test images
    report.update({"t2i_R@1": float((r_t2i <= 1).float().mean()), "t2i_R@5": float((r_t2i <= 5).float().mean())})
    swaps = [(i, index[s.meta["swapped"]]) for i, s in enumerate(test) if s.meta.get("swapped") in index]
    if swaps:
        rows = torch.tensor([i for i, _ in swaps])
        twins = torch.tensor([j for _, j in swaps])
        report["swap_acc"] = float((sim[rows, targets[rows]] > sim[rows, twins]).float().mean())
    roles = [(i, index[s.meta["swapped_role"]]) for i, s in enumerate(test) if s.meta.get("swapped_role") in index]
    if roles:
        rows, twins = torch.tensor([i for i, _ in roles]), torch.tensor([j for _, j in roles])
        report["role_swap_acc"] = float((sim[rows, targets[rows]] > sim[rows, twins]).float().mean())
    known = torch.tensor([m is not None for m in metas])
    top = sim.masked_fill(~known, float("-inf")).argmax(1)  # best caption that states attributes
    for attr in ATTRIBUTES:
        pairs = [(s.meta[attr], metas[int(top[i])].get(attr)) for i, s in enumerate(test) if attr in s.meta]
        if pairs:
            report[f"acc_{attr}"] = sum(a == b for a, b in pairs) / len(pairs)
    report["modality_gap"] = modality_gap(img, test_txt)
    return report
