"""Ground truth for lenses: on synthetic scenes, does the top-k of a token that lies on the object name the object's
colour, shape, size or position?

Where the object is comes from the picture itself: scenes (vlmviz.data.scenes.draw_scene) paint saturated colours
on a grey background (equal R, G, B plus noise), so a pixel is object where max - min over its channels exceeds
CHROMA. A projected token lies on the object when at least `min_cover` of its cell of the h x w output grid is
object. The shuffled-label control scores the same readings against the attributes of another scene (a
derangement), so a lens that names "red" everywhere scores the base rate of red in both columns: only the gap
(true - control) says the lens reads the picture.
Shape legend: S scenes, M tokens per scene (h * w), H x W pixels.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

ATTRIBUTES = ("color", "shape", "size", "position")
CHROMA = 60  # scene colours have chroma >= 150, the grey background 0 (noise is added to all channels alike)


def object_mask(image) -> np.ndarray:
    """(H, W) bool: pixels painted with a scene colour."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)  # (H, W, 3)
    return (rgb.max(-1) - rgb.min(-1)) > CHROMA


def on_object(mask: np.ndarray, h: int, w: int, min_cover: float = 0.5) -> np.ndarray:
    """(h * w,) bool in reading order: which cells of an h x w grid over the mask are at least min_cover object."""
    H, W = mask.shape
    rows = np.linspace(0, H, h + 1).round().astype(int)
    cols = np.linspace(0, W, w + 1).round().astype(int)
    cover = np.array([[mask[rows[r]:rows[r + 1], cols[c]:cols[c + 1]].mean() for c in range(w)] for r in range(h)])
    return (cover >= min_cover).reshape(-1)


def _norm(word: str) -> str:
    return re.sub(r"[^a-z]", "", word.lower())


def names(words: Sequence[str], target: str) -> bool:
    """Does a top-k list name `target` (case and punctuation ignored; a plural 'circles' counts)?"""
    target = _norm(target)
    return any(_norm(w) in (target, target + "s") for w in words)


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """perm with perm[i] != i for every i (n >= 2): scene i is scored against scene perm[i]'s attributes."""
    if n < 2:
        raise ValueError(f"the shuffled control needs at least 2 scenes, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=int)
    perm[order] = np.roll(order, -1)  # a single cycle through a random order: no fixed point
    return perm


def score_readings(readings: Sequence[Sequence[Sequence[str]]], on: Sequence[np.ndarray], metas: Sequence[dict],
                   seed: int = 0) -> dict:
    """readings[s][m]: the top-k strings of token m of scene s; on[s] (M,) which tokens lie on the object; metas[s]
    the scene's attributes. -> {attribute: {"true": rate, "control": rate}, "tokens": n on-object tokens scored},
    rates = fraction of on-object tokens whose top-k names the attribute (the control: another scene's)."""
    if not (len(readings) == len(on) == len(metas)):
        raise ValueError(f"got {len(readings)} readings, {len(on)} masks and {len(metas)} metas; expected one each "
                         "per scene")
    perm = derangement(len(metas), seed)
    hits = {a: [0, 0] for a in ATTRIBUTES}
    total = 0
    for s, (rows, mask) in enumerate(zip(readings, on)):
        if len(rows) != len(mask):
            raise ValueError(f"scene {s}: {len(rows)} token readings but a mask of {len(mask)} cells")
        for m in np.flatnonzero(mask):
            total += 1
            for a in ATTRIBUTES:
                hits[a][0] += names(rows[m], metas[s][a])
                hits[a][1] += names(rows[m], metas[perm[s]][a])
    rate = lambda x: x / total if total else float("nan")  # noqa: E731
    return {**{a: {"true": rate(t), "control": rate(c)} for a, (t, c) in hits.items()}, "tokens": total}
