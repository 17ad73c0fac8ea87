"""One training run end to end, shared by the CLI, the web app and the notebooks:
dataset -> split -> cached encoder tokens + caption vectors -> train the projector -> metrics -> checkpoint."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import save_checkpoint
from ..config import ExperimentConfig
from ..encoders import load_vision_encoder, select_tokens, token_dim
from ..features import FeatureCache
from ..eval.openset import caption_groups, embed_hard_negatives, training_caption
from ..projectors import build_projector
from ..text import load_text_space
from ..train import RunResult, evaluate, train_projector


def load_split(dataset: str, n_train: int = 600, n_test: int = 200, seed: int = 0, log=print) -> tuple[list, list]:
    """Synthetic scenes split by held-out attribute combinations; any other dataset by a seeded random split.
    A folder's test split is at most a fifth of it (at least 2 pairs), and a cut is said, never silent."""
    from ..data import SCENES, load_dataset, scene_split

    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive number of image-caption pairs, got {value!r}")
    if dataset in SCENES:
        return scene_split(n_train, n_test, seed=seed, **SCENES[dataset])
    loaded = load_dataset(dataset, n=None if dataset != "digits" else n_train + n_test, seed=seed)
    if loaded.problems:
        log(f"[vlmviz] {len(loaded.problems)} rows of {dataset} skipped, first: {loaded.problems[0]}")
    samples = list(loaded.samples)
    random.Random(seed).shuffle(samples)
    cut = min(n_test, max(2, len(samples) // 5))
    if cut < n_test:
        log(f"[vlmviz] {dataset}: test split of {cut} pairs, not {n_test} (a fifth of its {len(samples)} usable pairs "
            "stays for testing; to score every row of another folder, use eval --split all)")
    if len(samples) - cut < 2:
        raise ValueError(f"{dataset} has {len(samples)} usable pairs; training needs at least 4")
    return samples[cut:cut + n_train], samples[:cut]


def split_digest(samples) -> str:
    """sha1 of the (id, caption) pairs on one side of a split: checkpoints record it, so eval can tell when the data
    changed since training."""
    return hashlib.sha1("\n".join(f"{s.id}|{s.caption}" for s in samples).encode()).hexdigest()[:16]


def split_record(dataset: str, n_train: int, n_test: int, seed: int, train: list, test: list) -> dict:
    """What a checkpoint records of its split, so that eval scores the same held-out pairs and can tell when the
    data changed: the load_split arguments and a digest of the pairs on each side."""
    return {"dataset": dataset, "n_train": n_train, "n_test": n_test, "seed": seed,
            "train_digest": split_digest(train), "test_digest": split_digest(test), "train_size": len(train),
            "test_size": len(test)}


def check_training_set(cfg: ExperimentConfig, dataset: str) -> None:
    """What can be refused before any image is encoded."""
    from ..data import SCENES

    if cfg.train.hard_negatives and dataset not in SCENES:
        raise ValueError(f"hard negatives are the color- and role-swapped twins that the synthetic scene sets "
                         f"({', '.join(SCENES)}) carry; {dataset} has none: drop --hard-negatives")


@dataclass
class Features:
    tokens: torch.Tensor  # (N, T, D_vis') selected encoder tokens
    text: torch.Tensor  # (N, D_txt) caption vectors


def featurize(cfg: ExperimentConfig, samples: list, cache: FeatureCache | None = None, progress=None) -> Features:
    encoder, text = load_vision_encoder(cfg.encoder.name), load_text_space(cfg.text.name)
    cache = cache or FeatureCache()
    tokens = cache.tokens(encoder, [s.load() for s in samples], progress=progress)  # (N, T, D_vis)
    return Features(select_tokens(tokens, encoder.has_cls, cfg.encoder.tokens),
                    text.encode([training_caption(s) for s in samples]))


def run(cfg: ExperimentConfig, dataset: str = "scenes-1obj", n_train: int = 600, n_test: int = 200,
        out: str | Path | None = None, callback=None, should_stop=None, accelerator=None, progress=None,
        cache: FeatureCache | None = None, snapshot=None) -> RunResult:
    check_training_set(cfg, dataset)
    train, test = load_split(dataset, n_train, n_test, cfg.train.seed)
    split = split_record(dataset, n_train, n_test, cfg.train.seed, train, test)
    if cfg.train.loss == "caption":  # LLaVA stage 1 through the frozen LM: its own module
        from ..caption.train import run_caption

        return run_caption(cfg, train, test, out, callback, should_stop, accelerator, progress, cache, dataset,
                           split=split)
    tr = featurize(cfg, train, cache, progress)
    te = featurize(cfg, test, cache, progress) if len(test) >= 2 else None
    encoder, text = load_vision_encoder(cfg.encoder.name), load_text_space(cfg.text.name)
    torch.manual_seed(cfg.train.seed)
    projector = build_projector(cfg.projector.family, token_dim(encoder.hidden_size, cfg.encoder.tokens), text.dim,
                                **cfg.projector.options)
    before = evaluate(projector, te.tokens, te.text, cfg.train.pooling) if te else None
    hard, mask = embed_hard_negatives(text, train) if cfg.train.hard_negatives else (None, None)
    # scenes stating the same facts in other words are never each other's negatives, as in the ablation
    result = train_projector(projector, tr.tokens, tr.text, cfg.train,
                             te.tokens if te else None, te.text if te else None,
                             callback=callback, should_stop=should_stop, accelerator=accelerator,
                             groups=caption_groups(train), hard_negatives=hard, hard_mask=mask, snapshot=snapshot)
    after = result.evals[-1] if result.evals else None
    path = None
    if out is not None and (accelerator is None or accelerator.is_main_process):
        path = save_checkpoint(out, projector, encoder=cfg.encoder.name, tokens=cfg.encoder.tokens,
                               text=cfg.text.name, pooling=cfg.train.pooling, loss=cfg.train.loss,
                               dataset=dataset, split=split, steps=result.steps_done, cancelled=result.cancelled,
                               metrics={k: v for k, v in (after or {}).items() if isinstance(v, (int, float))},
                               config=cfg.to_dict())
    return RunResult(result, before, after, path)
