"""Synthetic compositional scenes drawn with PIL, with captions from templates, deterministic by seed.

One-object scenes vary color x shape x size x position; two-object scenes place two shapes in a relation
("a red circle left of a blue square"). `scene_split` holds out whole (color, shape) combinations: every color and
every shape is seen in training, but never the held-out pairings, so the test measures composition, not memory.
Each test sample carries hard negatives in its meta: `swapped` (attributes swapped between the objects, or for one
object another color with the same shape) and, for two objects, `swapped_role` (the relation reversed).
"""
from __future__ import annotations

import math
import random
import re

import numpy as np
from PIL import Image, ImageDraw

from .base import Sample

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 60, 180), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
SIZES = {"small": 0.13, "large": 0.24}  # radius as a fraction of the image side
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
             "center": (0.5, 0.5)}
WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "center": "in the center"}
RELATIONS = {"left of": ((0.27, 0.5), (0.73, 0.5)), "right of": ((0.73, 0.5), (0.27, 0.5)),
             "above": ((0.5, 0.27), (0.5, 0.73)), "below": ((0.5, 0.73), (0.5, 0.27))}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
ONE_TEMPLATES = ("a {size} {color} {shape} {where}", "a photo of a {size} {color} {shape} {where}",
                 "there is a {size} {color} {shape} {where}")
TWO_TEMPLATES = ("a {color} {shape} {relation} a {color2} {shape2}",
                 "a photo of a {color} {shape} {relation} a {color2} {shape2}")


def _articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "star":
        return [(cx + (r if i % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + i * math.pi / 5),
                 cy + (r if i % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    raise ValueError(f"unknown shape {shape!r}")


def draw_scene(objects: list[dict], size: int = 224, seed: int = 0) -> Image.Image:
    """objects: dicts with color, shape, cx, cy (fractions of the side), r (fraction). A lightly noisy background
    keeps the encoder from seeing a perfectly flat canvas."""
    rng = np.random.default_rng(seed)
    base = 235 + rng.integers(-8, 8)
    canvas = np.clip(base + rng.normal(0, 4, (size, size, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        cx, cy, r = obj["cx"] * size, obj["cy"] * size, obj["r"] * size
        fill = COLORS[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(obj["shape"], cx, cy, r), fill=fill)
    return img


def held_out_combos(seed: int = 0) -> set[tuple[str, str]]:
    """One held-out shape per color, rotating so every shape stays in training with other colors."""
    colors = list(COLORS)
    return {(c, SHAPES[(i + seed) % len(SHAPES)]) for i, c in enumerate(colors)}


def _one(rng: random.Random, color: str, shape: str, index: int, image_size: int) -> Sample:
    size, position = rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
    cx, cy = POSITIONS[position]
    jitter = 0.04
    obj = {"color": color, "shape": shape, "r": SIZES[size], "cx": cx + rng.uniform(-jitter, jitter),
           "cy": cy + rng.uniform(-jitter, jitter)}
    fields = {"size": size, "color": color, "shape": shape, "where": WHERE[position]}
    template = rng.choice(ONE_TEMPLATES)
    caption = _articles(template.format(**fields))
    other = rng.choice([c for c in COLORS if c != color])
    canonical = ONE_TEMPLATES[0]  # evaluation compares facts, not which template phrased them
    meta = {"color": color, "shape": shape, "size": size, "position": position,
            "canonical": _articles(canonical.format(**fields)),
            "swapped": _articles(canonical.format(**{**fields, "color": other}))}
    return Sample(draw_scene([obj], image_size, seed=rng.randrange(1 << 30)), caption, meta, f"scene1-{index}")


def _two(rng: random.Random, a: tuple[str, str], b: tuple[str, str], index: int, image_size: int) -> Sample:
    relation = rng.choice(list(RELATIONS))
    (ax, ay), (bx, by) = RELATIONS[relation]
    r = 0.15
    j = lambda: rng.uniform(-0.03, 0.03)  # noqa: E731
    objects = [{"color": a[0], "shape": a[1], "r": r, "cx": ax + j(), "cy": ay + j()},
               {"color": b[0], "shape": b[1], "r": r, "cx": bx + j(), "cy": by + j()}]
    template = rng.choice(TWO_TEMPLATES)
    fields = {"color": a[0], "shape": a[1], "relation": relation, "color2": b[0], "shape2": b[1]}
    caption = _articles(template.format(**fields))
    canonical = TWO_TEMPLATES[0]  # evaluation compares facts, not which template phrased them
    meta = {"color": a[0], "shape": a[1], "color2": b[0], "shape2": b[1], "relation": relation,
            "canonical": _articles(canonical.format(**fields)),
            "swapped": _articles(canonical.format(**{**fields, "color": b[0], "color2": a[0]})),  # colors moved
            "swapped_role": _articles(canonical.format(**{**fields, "relation": INVERSE[relation]}))}
    return Sample(draw_scene(objects, image_size, seed=rng.randrange(1 << 30)), caption, meta, f"scene2-{index}")


def _combos(held: set, train: bool) -> list[tuple[str, str]]:
    all_combos = [(c, s) for c in COLORS for s in SHAPES]
    return [cs for cs in all_combos if (cs in held) != train]


def _make(n: int, seed: int, objects: int, image_size: int, combos: list, start: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if objects == 1:
            color, shape = rng.choice(combos)
            out.append(_one(rng, color, shape, start + i, image_size))
        else:
            a = rng.choice(combos)
            b = rng.choice([cs for cs in combos if cs[0] != a[0] and cs[1] != a[1]])
            out.append(_two(rng, a, b, start + i, image_size))
    return out


def make_scenes(n: int, seed: int = 0, objects: int = 1, image_size: int = 224) -> list[Sample]:
    """n scenes over all combinations (no hold-out), deterministic by seed."""
    if objects not in (1, 2):
        raise ValueError(f"objects must be 1 or 2, got {objects}")
    return _make(n, seed, objects, image_size, [(c, s) for c in COLORS for s in SHAPES])


def scene_split(n_train: int, n_test: int, seed: int = 0, objects: int = 1,
                image_size: int = 224) -> tuple[list[Sample], list[Sample]]:
    """Train on seen (color, shape) combinations; test only on held-out ones (both objects, for two)."""
    if objects not in (1, 2):
        raise ValueError(f"objects must be 1 or 2, got {objects}")
    held = held_out_combos(seed)
    train = _make(n_train, seed, objects, image_size, _combos(held, train=True))
    test = _make(n_test, seed + 10_000, objects, image_size, _combos(held, train=False), start=n_train)
    return train, test
