"""Feature cache and batching, measured side by side in one run on the bundled ViT-S/14.

    .venv/bin/python bench/bench_cache.py [--images 32] [--steps 5]

1. Training on cached features vs re-encoding every step (the classic lesson's way): time per step of the
   pooled-linear recipe (batch 32) when the batch's tokens come from the cache vs from the frozen encoder.
2. Encoding batched (32 at once) vs one image at a time.
3. A warm feature-cache hit vs encoding the same images.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from vlmviz.config import TrainConfig
from vlmviz.data import make_scenes
from vlmviz.encoders import load_vision_encoder, select_tokens
from vlmviz.features import FeatureCache
from vlmviz.projectors import build_projector
from vlmviz.text import load_text_space
from vlmviz.train import train_projector


def clock(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    enc, txt = load_vision_encoder("vit-s14"), load_text_space("smollm2-135m")
    images = [s.load() for s in make_scenes(args.images, seed=1)]
    captions = txt.encode([s.caption for s in make_scenes(args.images, seed=1)])
    enc.encode(images[:2])  # warm-up

    t_batched, tokens = clock(lambda: enc.encode(images, batch_size=32))
    t_single, _ = clock(lambda: [enc.encode([im]) for im in images])
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp)
        t_fill, _ = clock(lambda: cache.tokens(enc, images))
        t_hit, _ = clock(lambda: cache.tokens(enc, images))
        assert cache.encoder_calls == 1

    x = select_tokens(tokens, True, "cls+mean")  # (B, 1, 768)
    cfg = TrainConfig(loss="infonce", steps=args.steps, batch_size=32, device="cpu", eval_every=0)
    proj = build_projector("linear", 768, txt.dim)
    t_cached, _ = clock(lambda: train_projector(proj, x, captions, cfg))

    def reencode_steps():  # the lesson's loop: every step runs the frozen encoder on the batch again
        for _ in range(args.steps):
            xb = select_tokens(enc.encode(images, batch_size=32), True, "cls+mean")
            train_projector(proj, xb, captions, TrainConfig(loss="infonce", steps=1, batch_size=32, device="cpu",
                                                            eval_every=0))

    t_reencode, _ = clock(reencode_steps)
    n = len(images)
    print(f"machine: CPU x{torch.get_num_threads()} threads; {n} scene images at 224 px; vit-s14")
    print(f"train step, cached features: {t_cached / args.steps * 1e3:8.1f} ms")
    print(f"train step, re-encoding:     {t_reencode / args.steps * 1e3:8.1f} ms")
    print(f"  ratio re-encode / cached: {t_reencode / t_cached:.0f}x  (target >= 20x)")
    print(f"encode batched (32):         {t_batched / n * 1e3:8.1f} ms/image")
    print(f"encode one at a time:        {t_single / n * 1e3:8.1f} ms/image")
    print(f"  ratio single / batched: {t_single / t_batched:.2f}x")
    print(f"cache miss (encode + write): {t_fill / n * 1e3:8.2f} ms/image")
    print(f"cache hit (read):            {t_hit / n * 1e3:8.2f} ms/image")
    print(f"  ratio miss / hit: {t_fill / t_hit:.0f}x")


if __name__ == "__main__":
    main()
