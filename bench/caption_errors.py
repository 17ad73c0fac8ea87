"""Where a two-object captioner's colors go wrong on held-out pairs, and whether contrastive decoding (VCD) against
an image that says less puts them right. Reads a checkpoint that `caption-eval --objects 2` saved.

    .venv/bin/python bench/caption_errors.py RUN/pixel_shuffle-pairs-prefix.safetensors \\
        --encoder vit-s14@6+6 --seed 1 [--n-train 2000] [--threads 1]

The scenes are rebuilt exactly as caption-eval built them (scene_split with the same n_train, 100 test scenes, the
seed), so the checkpoint's held-out pairs are the ones scored. Colour misses are sorted by kind: both colours
swapped between the two objects; one colour replaced (and whether each said (colour, shape) pair was a training
pair); unparsed. Then greedy decoding side by side with VCD (model.VisualLM.generate, contrast=) against four
contrast images built from the test image alone: the mean training image, the image's patches shuffled, the
image's spatial mean at every place, the image in greyscale.
"""
from __future__ import annotations

import argparse
import collections

import torch
from PIL import ImageOps

from vlmviz.caption.captioner import load_captioner
from vlmviz.caption.evaluate import score
from vlmviz.caption.model import parse_relation
from vlmviz.data.scenes import held_out_combos, scene_split
from vlmviz.encoders import load_vision_encoder, select_tokens
from vlmviz.features import FeatureCache


def color_misses(said: list[str], test: list, held: set) -> collections.Counter:
    kinds = collections.Counter()
    for text, sample in zip(said, test):
        parsed = parse_relation(text)
        if parsed is None:
            kinds["unparsed"] += 1
            continue
        colors, shapes, _ = parsed
        truth = [sample.meta["color"], sample.meta["color2"]]
        if colors == truth:
            kinds["both colors right"] += 1
        elif colors == truth[::-1]:
            kinds["colors swapped between the objects"] += 1
        else:
            seen = sum((c, s) not in held for c, s in zip(colors, shapes))
            kinds[f"{sum(c in truth for c in colors)} of 2 true colors named, {seen} of 2 said pairs seen"] += 1
    return kinds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = scene_split(args.n_train, 100, seed=args.seed, objects=2)
    enc, cache = load_vision_encoder(args.encoder), FeatureCache()
    tokens = lambda images: select_tokens(cache.tokens(enc, images), enc.has_cls, "patch").float()  # noqa: E731
    x, x_tr = tokens([s.load() for s in test]), tokens([s.load() for s in train])
    x_gray = tokens([ImageOps.grayscale(s.load()).convert("RGB") for s in test])
    captioner = load_captioner(args.checkpoint)
    proj, vlm = captioner.projector, captioner.vlm
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))
    contrasts = {"mean training image": proj(x_tr.mean(0, keepdim=True)),
                 "own patches shuffled": proj(x[:, perm]),
                 "own spatial mean": proj(x.mean(1, keepdim=True).expand_as(x).contiguous()),
                 "own greyscale": proj(x_gray)}
    print("| decoding | color | shape | relation | all5 |\n| --- | --- | --- | --- | --- |")
    with torch.no_grad():
        visual = proj(x)
        said = vlm.generate(visual, max_new_tokens=20)
        s = score(said, test)
        print(f"| greedy | {s['color']:.2f} | {s['shape']:.2f} | {s['relation']:.2f} | {s['all5']:.2f} |")
        for name, contrast in contrasts.items():
            for alpha in (0.5, 1.0):
                s = score(vlm.generate(visual, max_new_tokens=20, contrast=contrast, alpha=alpha), test)
                print(f"| VCD, {name}, alpha {alpha:g} | {s['color']:.2f} | {s['shape']:.2f} | {s['relation']:.2f} "
                      f"| {s['all5']:.2f} |")
    print("\ngreedy captions' colors:", dict(color_misses(said, test, held_out_combos(args.seed))))
    captioner.close()


if __name__ == "__main__":
    main()
