"""Where does a frozen encoder keep color? A logistic-regression probe of each object's color and shape, read from
the `cls+maxgrid` view of every few ViT-S/14 blocks, trained on seen (color, shape) pairs and scored on the held-out
pairs of the two-object scenes (BENCHMARKS.md, "Reading the encoder earlier").

    .venv/bin/python scripts/probe_layers.py [--n-train 1500] [--layers 2 4 6 8 10 12]
"""
from __future__ import annotations

import argparse

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from vlmviz.encoders import load_vision_encoder, select_tokens
from vlmviz.data.splits import load_split


def hidden_states(encoder, samples, layers, batch_size: int = 50) -> dict[int, torch.Tensor]:
    """One forward pass per batch, every requested block's tokens kept: {layer: (N, 257, 384)}."""
    out = {k: [] for k in layers}
    for start in tqdm(range(0, len(samples), batch_size), desc="encoding"):
        pixels = encoder.preprocess([s.load() for s in samples[start:start + batch_size]])
        with torch.no_grad():
            states = encoder.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        for k in layers:
            out[k].append(select_tokens(states[k], encoder.has_cls, "cls+maxgrid")[:, 0])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8, 10, 12])
    ap.add_argument("--dataset", default="scenes-2obj")
    args = ap.parse_args()
    encoder = load_vision_encoder("vit-s14")
    train, test = load_split(args.dataset, 4000, 200, 0)  # the ablation's split; its first n_train scenes
    train = train[:args.n_train]
    x_train, x_test = hidden_states(encoder, train, args.layers), hidden_states(encoder, test, args.layers)
    keys = [k for k in ("color", "color2", "shape", "shape2") if k in train[0].meta]
    print(f"held-out accuracy of a linear probe ({len(train)} training scenes, {len(test)} held-out)")
    print("block  " + "  ".join(f"{k:>7}" for k in keys))
    for layer in args.layers:
        scaler = StandardScaler().fit(x_train[layer])
        a, b = scaler.transform(x_train[layer]), scaler.transform(x_test[layer])
        scores = []
        for key in keys:
            probe = LogisticRegression(C=0.1, max_iter=500).fit(a, [s.meta[key] for s in train])
            scores.append(probe.score(b, [s.meta[key] for s in test]))
        print(f"{layer:>5}  " + "  ".join(f"{v:7.3f}" for v in scores), flush=True)


if __name__ == "__main__":
    main()
