"""Which ViT-S/14 block keeps an object's colour and shape in the same token? Linear probes on the patch tokens
that lie on each object of two-object scenes, trained on tokens of seen (colour, shape) pairs and scored on tokens
of scenes whose both objects are held-out pairs (vlmviz.data.scenes.scene_split, holdout 'pair').

    .venv/bin/python bench/probe_blocks.py [--n-train 400] [--blocks 2 4 6 8 10 12] [--seed 0] [--threads 1]

A token is assigned to the object whose drawn centre is nearer and counts when at least half of its 14 x 14 px cell
is painted (lens_score.object_mask). Each block's 384-d tokens are standardised on the training tokens; the probe
is a multinomial logistic regression (C = 0.1). `both` = colour and shape right on the same token: the binding a
captioner needs when two objects share a picture.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from vlmviz.data.scenes import RELATIONS, scene_split
from vlmviz.encoders import load_vision_encoder, select_tokens
from vlmviz.eval.lens_score import object_mask, on_object


def object_cells(sample, grid: int = 16) -> list[np.ndarray]:
    """Per object (canonical order: the first stands at RELATIONS[relation][0]): its cells in reading order."""
    mask = object_mask(sample.load())
    H, W = mask.shape
    (ax, ay), (bx, by) = RELATIONS[sample.meta["relation"]]
    yy, xx = np.mgrid[0:H, 0:W] / H
    near_a = (xx - ax) ** 2 + (yy - ay) ** 2 < (xx - bx) ** 2 + (yy - by) ** 2
    return [np.nonzero(on_object(m, grid, grid))[0] for m in (mask & near_a, mask & ~near_a)]


def on_object_tokens(encoder, samples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (T, D), colours (T,), shapes (T,)) of every patch token on an object."""
    tokens = select_tokens(encoder.encode([s.load() for s in samples]), encoder.has_cls, "patch")  # (S, 256, D)
    X, colors, shapes = [], [], []
    for i, s in enumerate(samples):
        objs = [(s.meta["color"], s.meta["shape"]), (s.meta["color2"], s.meta["shape2"])]
        for (color, shape), cells in zip(objs, object_cells(s)):
            X.append(tokens[i, cells].numpy())
            colors += [color] * len(cells)
            shapes += [shape] * len(cells)
    return np.concatenate(X), np.array(colors), np.array(shapes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 6, 8, 10, 12])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = scene_split(args.n_train, args.n_test, seed=args.seed, objects=2)
    encoder = load_vision_encoder("vit-s14@" + "+".join(map(str, args.blocks)))  # the blocks side by side
    t0 = time.time()
    Xtr, ctr, s_tr = on_object_tokens(encoder, train)
    Xte, cte, s_te = on_object_tokens(encoder, test)
    print(f"{len(train)} + {len(test)} two-object scenes (seed {args.seed}), {len(Xtr)} + {len(Xte)} tokens on "
          f"objects, encoded in {time.time() - t0:.0f} s")
    d = Xtr.shape[1] // len(args.blocks)
    print("block | color | shape | both")
    for b, block in enumerate(args.blocks):
        cols = slice(b * d, (b + 1) * d)
        mu, sd = Xtr[:, cols].mean(0), Xtr[:, cols].std(0) + 1e-6
        A, B = (Xtr[:, cols] - mu) / sd, (Xte[:, cols] - mu) / sd
        pc = LogisticRegression(max_iter=300, C=0.1).fit(A, ctr).predict(B)
        ps = LogisticRegression(max_iter=300, C=0.1).fit(A, s_tr).predict(B)
        print(f"{block:5d} | {np.mean(pc == cte):.3f} | {np.mean(ps == s_te):.3f} | "
              f"{np.mean((pc == cte) & (ps == s_te)):.3f}", flush=True)


if __name__ == "__main__":
    main()
