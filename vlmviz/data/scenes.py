"""Synthetic compositional scenes drawn with PIL, with captions from templates, deterministic by seed.

One-object scenes vary color x shape x size x position, optionally with a count ("two small red circles on the
left"); two-object scenes place two shapes in a relation ("a red circle left of a blue square"); three-object scenes
put three in a row or a column ("a red circle left of a blue square left of a green star").
`scene_split` holds out whole (color, shape) combinations (holdout="pair"): every color and every shape is seen in
training, but never the held-out pairings, so the test measures composition, not memory. holdout="relation" holds
out (shape, relation) pairings instead: a circle is never "above" anything in training, though circles and "above"
both are. Each sample carries hard negatives in its meta: `swapped` (colors swapped between the objects, or for one
object another color with the same shape), for two and three objects `swapped_role` (the arrangement reversed), and
for counted scenes `swapped_count` (another count). The meta states facts canonically: 'a blue square right of a red
circle' is stored as 'a red circle left of a blue square' (canonical_order), so a converse phrasing is never scored
as a different caption; the caption itself keeps the phrasing that was drawn.
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
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
COUNT_TEMPLATES = ("{count} {size} {color} {shape}s {where}", "a photo of {count} {size} {color} {shape}s {where}")
THREE_TEMPLATES = ("a {color} {shape} {relation} a {color2} {shape2} {relation} a {color3} {shape3}",
                   "a photo of a {color} {shape} {relation} a {color2} {shape2} {relation} a {color3} {shape3}")
TWO_TEMPLATES = ("a {color} {shape} {relation} a {color2} {shape2}",
                 "a photo of a {color} {shape} {relation} a {color2} {shape2}")


def _articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def canonical_order(objs: list[tuple[str, str]], relation: str) -> tuple[list[tuple[str, str]], str]:
    """'a blue square right of a red circle' states the same fact as 'a red circle left of a blue square': facts are
    compared in one direction, 'left of' or 'above', read first to last."""
    if relation in ("right of", "below"):
        return list(reversed(objs)), INVERSE[relation]
    return list(objs), relation


def _statement(template: str, objs: list[tuple[str, str]], relation: str) -> tuple[str, dict]:
    objs, relation = canonical_order(objs, relation)
    fields = {"relation": relation}
    for i, (color, shape) in enumerate(objs):
        suffix = str(i + 1) if i else ""
        fields.update({f"color{suffix}": color, f"shape{suffix}": shape})
    return _articles(template.format(**fields)), fields


def _relation_meta(template: str, objs: list[tuple[str, str]], relation: str) -> dict:
    """Attributes of the canonical statement (so evaluation compares facts, not phrasings) and its hard negatives:
    the first two objects' colors exchanged, and the objects' arrangement reversed (role swap)."""
    canonical, fields = _statement(template, objs, relation)
    (c1, s1), (c2, s2) = objs[:2]
    swapped = [(c2, s1), (c1, s2), *objs[2:]]
    return {**fields, "canonical": canonical, "swapped": _statement(template, swapped, relation)[0],
            "swapped_role": _statement(template, objs, INVERSE[relation])[0]}


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


def _one(rng: random.Random, color: str, shape: str, index: int, image_size: int, counts: bool = False) -> Sample:
    size, position = rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
    count = rng.choice(list(COUNT_WORDS)) if counts else 1
    if count > 1:
        size = "small"  # several large shapes would not fit side by side
    cx, cy = POSITIONS[position]
    jitter, r = 0.04, SIZES[size]
    spread = [0.0] if count == 1 else [(i - (count - 1) / 2) * 2.3 * r for i in range(count)]
    horizontal = position in ("top", "bottom", "center")  # rows along the edge they sit on, columns at the sides
    ox, oy = cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter)
    objs = [{"color": color, "shape": shape, "r": r, "cx": ox + (d if horizontal else 0), "cy": oy + (0 if horizontal
             else d)} for d in spread]
    fields = {"size": size, "color": color, "shape": shape, "where": WHERE[position], "count": COUNT_WORDS[count]}
    templates = COUNT_TEMPLATES if counts else ONE_TEMPLATES
    caption = _articles(rng.choice(templates).format(**fields))
    other = rng.choice([c for c in COLORS if c != color])
    canonical = templates[0]  # evaluation compares facts, not which template phrased them
    meta = {"color": color, "shape": shape, "size": size, "position": position,
            "canonical": _articles(canonical.format(**fields)),
            "swapped": _articles(canonical.format(**{**fields, "color": other}))}
    if counts:
        wrong = rng.choice([c for c in COUNT_WORDS if c != count])
        meta.update(count=count, swapped_count=_articles(canonical.format(**{**fields, "count": COUNT_WORDS[wrong]})))
    return Sample(draw_scene(objs, image_size, seed=rng.randrange(1 << 30)), caption, meta, f"scene1-{index}")


def _three(rng: random.Random, objs: list[tuple[str, str]], relation: str, index: int, image_size: int) -> Sample:
    """Three objects in a row ('left of' / 'right of') or a column ('above' / 'below'), read first to last."""
    start, end = RELATIONS[relation]
    r = 0.12
    j = lambda: rng.uniform(-0.02, 0.02)  # noqa: E731
    points = [(start[0] + (end[0] - start[0]) * t * 1.2 - (end[0] - start[0]) * 0.1,
               start[1] + (end[1] - start[1]) * t * 1.2 - (end[1] - start[1]) * 0.1) for t in (0.0, 0.5, 1.0)]
    drawn = [{"color": c, "shape": sh, "r": r, "cx": x + j(), "cy": y + j()} for (c, sh), (x, y) in zip(objs, points)]
    meta = _relation_meta(THREE_TEMPLATES[0], objs, relation)
    (c1, s1), (c2, s2), (c3, s3) = objs
    fields = {"color": c1, "shape": s1, "color2": c2, "shape2": s2, "color3": c3, "shape3": s3, "relation": relation}
    caption = _articles(rng.choice(THREE_TEMPLATES).format(**fields))
    return Sample(draw_scene(drawn, image_size, seed=rng.randrange(1 << 30)), caption, meta, f"scene3-{index}")


def _two(rng: random.Random, a: tuple[str, str], b: tuple[str, str], index: int, image_size: int,
         relation: str | None = None) -> Sample:
    relation = relation or rng.choice(list(RELATIONS))
    (ax, ay), (bx, by) = RELATIONS[relation]
    r = 0.15
    j = lambda: rng.uniform(-0.03, 0.03)  # noqa: E731
    objects = [{"color": a[0], "shape": a[1], "r": r, "cx": ax + j(), "cy": ay + j()},
               {"color": b[0], "shape": b[1], "r": r, "cx": bx + j(), "cy": by + j()}]
    fields = {"color": a[0], "shape": a[1], "relation": relation, "color2": b[0], "shape2": b[1]}
    caption = _articles(rng.choice(TWO_TEMPLATES).format(**fields))
    meta = _relation_meta(TWO_TEMPLATES[0], [a, b], relation)
    return Sample(draw_scene(objects, image_size, seed=rng.randrange(1 << 30)), caption, meta, f"scene2-{index}")


def _combos(held: set, train: bool) -> list[tuple[str, str]]:
    all_combos = [(c, s) for c in COLORS for s in SHAPES]
    return [cs for cs in all_combos if (cs in held) != train]


def held_out_relations(seed: int = 0) -> set[tuple[str, str]]:
    """One held-out (shape, relation) per shape, rotating so every relation stays in training. (circle, 'left of')
    holds out the picture, whichever way it is phrased: 'a circle left of X' and 'X right of a circle' alike."""
    relations = list(RELATIONS)
    return {(shape, relations[(i + seed) % len(relations)]) for i, shape in enumerate(SHAPES)}


def _always(shape: str, relation: str) -> bool:
    return True


def _make(n: int, seed: int, objects: int, image_size: int, combos: list, start: int = 0, counts: bool = False,
          first_ok=_always, last_ok=_always, swappable: bool = False) -> list[Sample]:
    """first_ok(shape, relation) / last_ok(shape, relation): may the first / last named object have this shape?
    swappable (two objects): only pairs a, b whose exchanged pairing (a's color with b's shape and b's with a's) is
    in combos too, so which color goes with which shape can be told from the picture only, never from the pairs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if objects == 1:
            color, shape = rng.choice(combos)
            out.append(_one(rng, color, shape, start + i, image_size, counts))
            continue
        a = rng.choice(combos)
        others = [cs for cs in combos if cs[0] != a[0] and cs[1] != a[1]]
        if swappable:
            others = [cs for cs in others if (a[0], cs[1]) in combos and (cs[0], a[1]) in combos]
        b = rng.choice(others)
        last = b[1] if objects == 2 else None
        relation = rng.choice([r for r in RELATIONS if first_ok(a[1], r) and (last is None or last_ok(last, r))])
        if objects == 2:
            out.append(_two(rng, a, b, start + i, image_size, relation))
        else:
            c = rng.choice([cs for cs in others if cs[0] != b[0] and cs[1] != b[1] and last_ok(cs[1], relation)])
            out.append(_three(rng, [a, b, c], relation, start + i, image_size))
    return out


def _check(objects: int, holdout: str, counts: bool, swappable: bool = False) -> None:
    if objects not in (1, 2, 3):
        raise ValueError(f"objects must be 1, 2 or 3, got {objects}")
    if holdout not in ("pair", "relation"):
        raise ValueError(f"holdout must be 'pair' (color+shape) or 'relation' (shape+relation), got {holdout!r}")
    if holdout == "relation" and objects == 1:
        raise ValueError("holdout 'relation' needs scenes with 2 or 3 objects")
    if counts and objects != 1:
        raise ValueError("counted scenes have one kind of object: use objects=1 with counts=True")
    if swappable and (objects != 2 or holdout != "pair"):
        raise ValueError("swappable training scenes need objects=2 and holdout 'pair'")


def make_scenes(n: int, seed: int = 0, objects: int = 1, image_size: int = 224, counts: bool = False) -> list[Sample]:
    """n scenes over all combinations (no hold-out), deterministic by seed."""
    _check(objects, "pair", counts)
    return _make(n, seed, objects, image_size, [(c, s) for c in COLORS for s in SHAPES], counts=counts)


def scene_split(n_train: int, n_test: int, seed: int = 0, objects: int = 1, image_size: int = 224,
                holdout: str = "pair", counts: bool = False,
                swappable: bool = False) -> tuple[list[Sample], list[Sample]]:
    """holdout 'pair': train on seen (color, shape) combinations, test only on held-out ones (every object).
    swappable (objects 2, holdout 'pair'): every training scene's color-swapped twin names seen pairs only, so the
    binding of colors to shapes is never given away by which pairs exist (test scenes are unchanged).
    holdout 'relation': all color+shape pairs everywhere, but the test scenes' (shape, relation) pairing (a circle
    left of something, in either phrasing) never occurs in training."""
    _check(objects, holdout, counts, swappable)
    if holdout == "relation":
        every = [(c, s) for c in COLORS for s in SHAPES]
        held = held_out_relations(seed)
        train = _make(n_train, seed, objects, image_size, every, first_ok=lambda sh, r: (sh, r) not in held,
                      last_ok=lambda sh, r: (sh, INVERSE[r]) not in held)
        test = _make(n_test, seed + 10_000, objects, image_size, every, start=n_train,
                     first_ok=lambda sh, r: (sh, r) in held)
        return train, test
    held = held_out_combos(seed)
    train = _make(n_train, seed, objects, image_size, _combos(held, train=True), counts=counts, swappable=swappable)
    test = _make(n_test, seed + 10_000, objects, image_size, _combos(held, train=False), start=n_train,
                 counts=counts)
    return train, test
