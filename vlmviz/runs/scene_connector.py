"""The built-in scenes connector: the best one-object-scene recipe BENCHMARKS.md proved, affordable on a fresh CPU.

Recipe (BENCHMARKS.md, "One-object scenes at block 4"): ViT-S/14 read after block 4, the pooled view
cls+mean+max (3 x 384), a low-rank connector (rank 64) into the SmolLM2 token-mean space, InfoNCE with
false-negative masking, weight decay 0.5, 1000 steps at batch 256 and lr 1e-2, seed 0. The benchmark trained on
4000 scenes (held-out R@1 0.988 over 3 seeds); encoding is what a build pays for (the training itself takes
seconds), so the built-in trains on fewer scenes, chosen where the held-out figure stays close (N_TRAIN below).

Only the pooled view of each scene is kept while encoding, not its 257 tokens: the build needs nothing else, and
4 MB of pooled vectors instead of about 400 MB of cached tokens keeps the user's feature cache for their own data.
Shape legend: N scenes, D_vis = 384, D_pool = 3 * D_vis, D_txt text width.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..checkpoints import save_checkpoint
from ..config import TrainConfig
from ..data import scene_split
from ..encoders import load_vision_encoder, select_tokens
from ..eval.openset import ATTRIBUTES, caption_groups, candidate_set, open_set_report, training_caption
from ..projectors import build_projector
from ..text import load_text_space
from ..train import embed, train_projector

ENCODER, TOKENS, TEXT, DATASET = "vit-s14@4", "cls+mean+max", "smollm2-135m", "scenes-1obj"
N_TRAIN, N_TEST, SEED = 1500, 200, 0
RECIPE = {"family": "lowrank", "rank": 64, "loss": "infonce", "false_negative_masking": True, "steps": 1000,
          "batch_size": 256, "lr": 1e-2, "weight_decay": 0.5, "seed": SEED, "encoder": ENCODER, "tokens": TOKENS,
          "text": TEXT, "dataset": DATASET, "n_train": N_TRAIN, "n_test": N_TEST}
TRAINED_ON = (f"{N_TRAIN} synthetic one-object scenes (vlmviz.data.scenes: a colored circle, square, triangle, star "
              "or diamond, small or large, at one of five places, on a plain background) and their generated "
              "captions; scored on 200 scenes of the (color, shape) pairs it never saw. Made for those scenes: on a "
              "photo, a drawing or a two-object scene its ranking means little.")


def build_key() -> list:
    """What the scenes connector depends on: its recipe and both frozen models (vlmviz.builtins)."""
    return [RECIPE, load_vision_encoder(ENCODER).cache_id, load_text_space(TEXT).cache_id]


def pooled_features(encoder, samples, batch_size: int = 32, progress=None) -> torch.Tensor:
    """(N, 1, D_pool) cls+mean+max of each scene, encoded batch by batch (never all 257 tokens of every scene)."""
    out = []
    for start in range(0, len(samples), batch_size):
        images = [s.load() for s in samples[start:start + batch_size]]
        with torch.no_grad():
            tokens = encoder.encode(images, batch_size=batch_size)  # (b, 257, D_vis)
        out.append(select_tokens(tokens, encoder.has_cls, TOKENS).float())  # (b, 1, D_pool)
        if progress is not None:
            progress(start + len(images), len(samples))
    return torch.cat(out)


def train_scenes_connector(progress=None, log=print) -> tuple:
    """Train by RECIPE and score open-set on the held-out scenes: (projector, report, split record)."""
    from ..data.splits import split_record

    encoder, text = load_vision_encoder(ENCODER), load_text_space(TEXT)
    train, test = scene_split(N_TRAIN, N_TEST, seed=SEED)  # test: only (color, shape) pairs never trained on
    log(f"[vlmviz] scenes connector: encoding {len(train) + len(test)} scenes with {ENCODER}")
    x = pooled_features(encoder, train + test, progress=progress)  # (N_train + N_test, 1, D_pool)
    x_train, x_test = x[:len(train)], x[len(train):]
    cfg = TrainConfig(loss=RECIPE["loss"], steps=RECIPE["steps"], batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
                      weight_decay=RECIPE["weight_decay"], seed=SEED, eval_every=0)
    torch.manual_seed(SEED)
    proj = build_projector(RECIPE["family"], x.shape[-1], text.dim, rank=RECIPE["rank"])
    # scenes stating the same facts share a group and are never each other's negatives (false-negative masking)
    train_projector(proj, x_train, text.encode([training_caption(s) for s in train]), cfg,
                    groups=caption_groups(train))
    candidates, metas = candidate_set(train, test, ATTRIBUTES)  # seen, held-out and color-swapped captions
    report = open_set_report(embed(proj, x_test, cfg.pooling), test, candidates, metas, text.encode, ATTRIBUTES)
    split = split_record(DATASET, N_TRAIN, N_TEST, SEED, train, test)
    return proj.eval(), report, split


def build_checkpoint(path: str | Path, label: str, progress=None) -> Path:
    """Write the scenes connector at `path` with its recipe, what it saw and its held-out open-set figures."""
    proj, report, split = train_scenes_connector(progress)
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()
               if isinstance(v, (int, float))}
    return save_checkpoint(path, proj, encoder=ENCODER, tokens=TOKENS, text=TEXT, pooling="mean",
                           loss=RECIPE["loss"], steps=RECIPE["steps"], label=label, domain="scenes",
                           dataset=DATASET, split=split, trained_on=TRAINED_ON, recipe=RECIPE, metrics=metrics)


def scenes_gallery(n: int = 6, distractors: int = 5) -> list:
    """A few held-out scenes (those the connector was scored on) for the app's scenes gallery, each a GalleryItem
    with a PNG path, its caption and distractors: its color-swapped twin first (the hard negative), then the
    captions of other held-out scenes. One scene per held-out (color, shape) pair, in test-split order."""
    from ..checkpoints import atomic_write
    from ..data.gallery import GalleryItem
    from ..eval.openset import target_caption

    _, test = scene_split(1, 8 * n, seed=SEED)  # the test split's first scenes: the same images at any n_train
    picked, seen = [], set()
    for sample in test:
        combo = (sample.meta["color"], sample.meta["shape"])
        if combo not in seen:
            seen.add(combo)
            picked.append(sample)
    picked = picked[:n]
    # under the system temp folder, not the vlmviz cache: the web app may only hand out files from the working
    # directory or the temp folder (Gradio refuses other paths); they are redrawn whenever they are missing
    folder = Path(tempfile.gettempdir()) / "vlmviz-scenes-gallery" / f"seed{SEED}"
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, sample in enumerate(picked):
        path = folder / f"held-out-{i}.png"
        if not path.exists():
            atomic_write(path, lambda tmp, im=sample.load(): im.save(tmp, format="PNG"))
        others = [target_caption(s) for s in picked if s is not sample]
        wrong = [sample.meta["swapped"], *others][:distractors]
        items.append(GalleryItem(f"scene {i + 1}: {sample.meta['color']} {sample.meta['shape']}", path,
                                 target_caption(sample), wrong, "synthetic scene (vlmviz.data.scenes), held out",
                                 "generated by vlmviz"))
    return items
