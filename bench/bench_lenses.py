"""Three lenses judged against the ground truth of synthetic scenes (issue 18). Results go in BENCHMARKS.md.

    .venv/bin/python bench/bench_lenses.py [--train 300] [--test 20] [--layers 0,4,15,30] [--k 5]

Token-level connectors (one projected token per patch or 2 x 2 block) on ViT-S/14 block-4 patch tokens into the
SmolLM2-135M input space, trained with the existing trainer (InfoNCE on the mean of the projected tokens against
the captions' token-mean vectors, held-out (color, shape) pairs for the test), plus an untrained one as control.
For each held-out scene, each projected token on the object (vlmviz.eval.lens_score) is read by each lens; a cell gives
the fraction of those tokens whose top-k names the object's attribute, true / shuffled-label control.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENCODER, TEXT = "vit-s14@4", "smollm2-135m"


def connectors(train_tokens, train_text, dim_in, dim_out, steps):
    from vlmviz.config import TrainConfig
    from vlmviz.projectors import build_projector
    from vlmviz.train import train_projector

    out = {}
    for family, kw in (("linear", {}), ("pixel_shuffle", {"scale": 2})):
        torch.manual_seed(0)
        proj = build_projector(family, dim_in, dim_out, **kw)
        t = time.perf_counter()
        cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-2, eval_every=0, device="cpu")
        train_projector(proj, train_tokens, train_text, cfg)
        out[f"{family} (trained)"] = proj.eval()
        print(f"trained {family} in {time.perf_counter() - t:.1f} s", flush=True)
    torch.manual_seed(0)
    untrained = build_projector("pixel_shuffle", dim_in, dim_out, scale=2)
    untrained.set_input_stats(train_tokens)  # same standardisation as the trained ones, random weights
    out["pixel_shuffle (untrained)"] = untrained.eval()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--layers", default="0,4,15,30")
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]

    from vlmviz.data import scene_split
    from vlmviz.encoders import load_vision_encoder, select_tokens
    from vlmviz.features import FeatureCache
    from vlmviz.eval.lens_score import ATTRIBUTES, object_mask, on_object, score_readings
    from vlmviz.lenses import ContextualLens, EmbeddingLens, LogitLens, corpus_states, default_corpus
    from vlmviz.text import load_smollm2_lm, load_text_space

    t0 = time.perf_counter()
    train, test = scene_split(args.train, args.test, seed=0)
    enc, text = load_vision_encoder(ENCODER), load_text_space(TEXT)
    model, tok = load_smollm2_lm()
    cache = FeatureCache()
    x_train = select_tokens(cache.tokens(enc, [s.load() for s in train]), enc.has_cls, "patch").float()
    x_test = select_tokens(cache.tokens(enc, [s.load() for s in test]), enc.has_cls, "patch").float()
    y_train = text.encode([s.caption for s in train])
    print(f"features {tuple(x_train.shape)} + {tuple(x_test.shape)} in {time.perf_counter() - t0:.1f} s", flush=True)

    sentences = default_corpus()
    corpus = corpus_states(model, tok, sentences, [x for x in layers if x > 0], cache_id=f"{text.cache_id}-lm")
    print(f"contextual corpus: {len(sentences)} sentences, {len(corpus['strings'])} tokens, encoded in "
          f"{corpus['seconds']:.1f} s (0 = from the cache)", flush=True)
    lenses = [("embedding", "-", EmbeddingLens(text))]
    lenses += [("logit", str(x), LogitLens(model, tok, x)) for x in layers]
    lenses += [("contextual", str(x), ContextualLens(model, tok, x, sentences, corpus=corpus)) for x in layers if x > 0]
    lenses += [("contextual, query L0", str(x), ContextualLens(model, tok, x, sentences, query_layer=0, corpus=corpus))
               for x in layers if x > 0]
    masks = [object_mask(s.load()) for s in test]
    metas = [s.meta for s in test]
    reader = lenses[1][2]

    rows = []
    for name, proj in connectors(x_train, y_train, enc.hidden_size, text.dim, args.steps).items():
        t = time.perf_counter()
        with torch.no_grad():
            projected = proj(x_test)  # (S, M, D_txt)
        side = int(round(projected.shape[1] ** 0.5))
        on = [on_object(m, side, side) for m in masks]
        readings = {i: [] for i in range(len(lenses))}
        for s in range(len(test)):
            states = reader.states(projected[s], layers)  # one LM pass serves every lens and layer
            for i, (_, _, lens) in enumerate(lenses):
                readings[i].append(lens.read(projected[s], args.k, states=states))
        for i, (lens_name, layer, _) in enumerate(lenses):
            rows.append((name, lens_name, layer, score_readings(readings[i], on, metas)))
        print(f"{name}: {side}x{side} tokens, read in {time.perf_counter() - t:.1f} s", flush=True)

    print(f"\ntop-{args.k} names the attribute, fraction of on-object tokens, true / shuffled control "
          f"({args.test} held-out scenes)\n")
    print("| connector | lens | layer | " + " | ".join(ATTRIBUTES) + " | tokens |")
    print("|---|---|---|" + "---|" * len(ATTRIBUTES) + "---|")
    for name, lens_name, layer, score in rows:
        cells = " | ".join(f"{score[a]['true']:.2f} / {score[a]['control']:.2f}" for a in ATTRIBUTES)
        print(f"| {name} | {lens_name} | {layer} | {cells} | {score['tokens']} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
