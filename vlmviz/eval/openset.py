"""Open-set evaluation on held-out attribute combinations (DESIGN.md: closed sets of only test captions
overstate quality).

Each test image is ranked against every candidate caption: all training captions (seen combinations), all test
captions, and the hard-negative twins of every test caption (colors swapped, relation reversed, count changed). We
report image->text R@1/R@5 over that open set, text->image R@1/R@5 over the test images, swap accuracies (the true
caption scores above its twin), per-attribute accuracy of the top-ranked caption whose attributes are known
(relation accuracy among them), N_test, the number of candidates, and how many candidates collide in the text
space (cosine > 0.999, so no connector can order them).
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from .metrics import first_relevant_ranks, modality_gap, ranks, similarity_matrix

ATTRIBUTES = ("color", "shape", "size", "position", "relation", "count", "color2", "shape2", "color3", "shape3")
# hard-negative meta keys -> the accuracy reported for them (true caption scored above that twin)
SWAP_NAMES = {"swapped": "swap_acc", "swapped_role": "role_swap_acc", "swapped_count": "count_swap_acc"}
HARD_NEGATIVES = tuple(SWAP_NAMES)


def target_caption(sample) -> str:
    """Scenes phrase the same facts with several templates; evaluation ranks one canonical phrasing per scene so
    that a different template is never counted as a miss."""
    return sample.meta.get("canonical", sample.caption)


def training_caption(sample) -> str:
    """What a connector trains towards: the caption as drawn, except for scenes that state a relation, where the
    canonical statement is used. The text spaces do not know that 'B right of A' says 'A left of B' (MiniLM puts
    it nearer the role swap 'B left of A'), so training on both phrasings pulls images towards the wrong fact."""
    return target_caption(sample) if "relation" in sample.meta else sample.caption


def caption_groups(samples: Sequence) -> torch.Tensor:
    """(N,) ids: samples whose canonical captions agree state the same facts, so none is another's negative."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(target_caption(s), len(ids)) for s in samples])


def _pairs(text: str) -> set[tuple[str, str]]:
    """The (color, shape) pairs a scene caption names: 'a red circle left of two blue squares' -> red circle, ..."""
    from ..data.scenes import COLORS, SHAPES

    pattern = rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})s?\b"
    return set(re.findall(pattern, text))


def hard_negative_captions(train: Sequence) -> tuple[list[list[str]], torch.Tensor]:
    """Each training scene's own hard negatives for InfoNCE (NegCLIP): its twins with colors swapped, roles
    reversed or count changed, (N, K) captions padded with "" and an (N, K) mask of the real ones.

    A twin is used only when every (color, shape) pair it names occurs in some training caption. Otherwise the
    held-out pairs would enter training only as negatives and the connector would learn that a caption naming
    'a red circle' is never right, which is exactly what the held-out test asks (BENCHMARKS.md measured the drop).
    """
    seen = set().union(*(_pairs(target_caption(s)) for s in train)) if train else set()
    rows = []
    for sample in train:
        twins = [sample.meta[k] for k in HARD_NEGATIVES if sample.meta.get(k)]
        rows.append([t for t in twins if _pairs(t) <= seen])
    k = max((len(r) for r in rows), default=0)
    mask = torch.tensor([[j < len(r) for j in range(k)] for r in rows], dtype=torch.bool).reshape(len(rows), k)
    return [r + [""] * (k - len(r)) for r in rows], mask


def embed_hard_negatives(text, train: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, D_txt) text vectors of each scene's hard-negative twins (zeros where masked) and the (N, K) mask."""
    rows, mask = hard_negative_captions(train)
    unique = sorted({c for row in rows for c in row if c})
    if not unique:
        raise ValueError("hard negatives are the swapped twins that synthetic scene sets (scenes-*) carry; this "
                         "training set has none that name only seen color+shape pairs")
    vectors = text.encode(unique)  # (U, D)
    index = {c: i for i, c in enumerate(unique)}
    picks = torch.tensor([[index.get(c, 0) for c in row] for row in rows])  # (N, K)
    return vectors[picks] * mask[..., None], mask


NOT_ATTRIBUTES = ("image_id", "source", "license", "canonical", *HARD_NEGATIVES)


def metadata_attributes(samples: Sequence) -> tuple[str, ...]:
    """The metadata columns of a user's folder that read as attributes to score (acc_<column>): scalar values that
    repeat across rows (a column unique to every row is an id, not an attribute)."""
    values: dict[str, list] = {}
    for sample in samples:
        for key, value in sample.meta.items():
            if key not in NOT_ATTRIBUTES and isinstance(value, (str, int, bool)) and value != "":
                values.setdefault(key, []).append(value)
    return tuple(k for k, v in values.items() if len(set(v)) < len(v))


def candidate_set(train: Sequence, test: Sequence, attributes: Sequence[str] = ATTRIBUTES,
                  extra: Sequence[str] = ()) -> tuple[list[str], list[dict | None]]:
    """Unique captions of train + test + swapped test captions, with the attributes each one states (None when
    unknown: a swapped caption states a combination nobody drew)."""
    captions, metas, seen = [], [], set()
    for sample in list(train) + list(test):
        text = target_caption(sample)
        if text not in seen:
            seen.add(text)
            captions.append(text)
            metas.append({k: v for k, v in sample.meta.items() if k in attributes})
    for sample in test:
        for key in HARD_NEGATIVES:
            negative = sample.meta.get(key)
            if negative and negative not in seen:
                seen.add(negative)
                captions.append(negative)
                metas.append(None)
    for text in extra:  # candidates given by the user, with no known attributes
        if text not in seen:
            seen.add(text)
            captions.append(text)
            metas.append(None)
    return captions, metas


def open_set_report(img: torch.Tensor, test: Sequence, captions: list[str], metas: list[dict | None],
                    encode_text, attributes: Sequence[str] = ATTRIBUTES) -> dict[str, float]:
    """img (N_test, D) projected test vectors; encode_text(list[str]) -> (T, D) vectors of the same space.
    `attributes`: the meta keys scored as acc_<key> (scenes' by default; a user folder's metadata columns)."""
    cand = encode_text(captions)  # (C, D)
    index = {c: i for i, c in enumerate(captions)}
    targets = torch.tensor([index[target_caption(s)] for s in test])
    sim = similarity_matrix(img, cand)  # (N_test, C)
    r = ranks(sim, targets).float()
    report = {"N_test": len(test), "candidates": len(captions),
              "i2t_R@1": float((r <= 1).float().mean()), "i2t_R@5": float((r <= 5).float().mean())}
    test_txt = cand[targets]  # (N_test, D)
    # each distinct test caption ranks the test images; right when an image carrying it comes first (captions
    # repeat when scenes share their facts, and a repeat is not a miss)
    distinct = targets.unique()  # (U,)
    r_t2i = first_relevant_ranks(similarity_matrix(cand[distinct], img), distinct[:, None] == targets[None]).float()
    report.update({"t2i_queries": len(distinct), "t2i_R@1": float((r_t2i <= 1).float().mean()),
                   "t2i_R@5": float((r_t2i <= 5).float().mean())})
    for key, name in SWAP_NAMES.items():  # the true caption above its hard-negative twin
        pairs = [(i, index[s.meta[key]]) for i, s in enumerate(test) if s.meta.get(key) in index]
        if pairs:
            rows, twins = torch.tensor([i for i, _ in pairs]), torch.tensor([j for _, j in pairs])
            report[name] = float((sim[rows, targets[rows]] > sim[rows, twins]).float().mean())
    known = torch.tensor([m is not None for m in metas])
    top = sim.masked_fill(~known, float("-inf")).argmax(1)  # best caption that states attributes
    for attr in attributes if known.any() else ():
        pairs = [(s.meta[attr], metas[int(top[i])].get(attr)) for i, s in enumerate(test) if attr in s.meta]
        if pairs:
            report[f"acc_{attr}"] = sum(a == b for a, b in pairs) / len(pairs)
    report["modality_gap"] = modality_gap(img, test_txt)
    # candidates the text space cannot tell apart (cosine > 0.999): no connector can rank one above the other
    unit = torch.nn.functional.normalize(cand.double(), dim=-1)
    report["colliding_captions"] = int(((unit @ unit.T > 1 - 1e-3).sum(1) > 1).sum())
    return report
