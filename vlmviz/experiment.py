"""One training run end to end, shared by the CLI, the web app and the notebooks:
dataset -> split -> cached encoder tokens + caption vectors -> train the projector -> metrics -> checkpoint."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import save_checkpoint
from .config import ExperimentConfig
from .encoders import load_vision_encoder, select_tokens, token_dim
from .features import FeatureCache
from .openset import embed_hard_negatives, training_caption
from .projectors import build_projector
from .text import load_text_space
from .train import TrainResult, evaluate, train_projector


def load_split(dataset: str, n_train: int = 600, n_test: int = 200, seed: int = 0) -> tuple[list, list]:
    """Synthetic scenes split by held-out attribute combinations; any other dataset by a seeded random split."""
    from .data import SCENES, load_dataset, scene_split

    if dataset in SCENES:
        return scene_split(n_train, n_test, seed=seed, **SCENES[dataset])
    loaded = load_dataset(dataset, n=None if dataset != "digits" else n_train + n_test, seed=seed)
    if loaded.problems:
        print(f"[vlmviz] {len(loaded.problems)} rows of {dataset} skipped, first: {loaded.problems[0]}")
    samples = list(loaded.samples)
    random.Random(seed).shuffle(samples)
    n_test = min(n_test, max(2, len(samples) // 5))
    if len(samples) - n_test < 2:
        raise ValueError(f"{dataset} has {len(samples)} usable pairs; training needs at least 4")
    return samples[n_test:n_test + n_train], samples[:n_test]


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


@dataclass
class RunResult:
    result: TrainResult
    before: dict | None
    after: dict | None
    checkpoint: Path | None
    examples: list | None = None  # caption runs: a few held-out images' true and generated captions


def run(cfg: ExperimentConfig, dataset: str = "scenes-1obj", n_train: int = 600, n_test: int = 200,
        out: str | Path | None = None, callback=None, should_stop=None, accelerator=None, progress=None,
        cache: FeatureCache | None = None) -> RunResult:
    train, test = load_split(dataset, n_train, n_test, cfg.train.seed)
    if cfg.train.loss == "caption":  # LLaVA stage 1 through the frozen LM: its own module
        from .caption_train import run_caption

        return run_caption(cfg, train, test, out, callback, should_stop, accelerator, progress, cache, dataset)
    tr = featurize(cfg, train, cache, progress)
    te = featurize(cfg, test, cache, progress) if len(test) >= 2 else None
    encoder, text = load_vision_encoder(cfg.encoder.name), load_text_space(cfg.text.name)
    torch.manual_seed(cfg.train.seed)
    projector = build_projector(cfg.projector.family, token_dim(encoder.hidden_size, cfg.encoder.tokens), text.dim,
                                **cfg.projector.options)
    before = evaluate(projector, te.tokens, te.text, cfg.train.pooling) if te else None
    hard, mask = embed_hard_negatives(text, train) if cfg.train.hard_negatives else (None, None)
    result = train_projector(projector, tr.tokens, tr.text, cfg.train,
                             te.tokens if te else None, te.text if te else None,
                             callback=callback, should_stop=should_stop, accelerator=accelerator,
                             hard_negatives=hard, hard_mask=mask)
    after = result.evals[-1] if result.evals else None
    path = None
    if out is not None and (accelerator is None or accelerator.is_main_process):
        path = save_checkpoint(out, projector, encoder=cfg.encoder.name, tokens=cfg.encoder.tokens,
                               text=cfg.text.name, pooling=cfg.train.pooling, loss=cfg.train.loss,
                               dataset=dataset, steps=result.steps_done, cancelled=result.cancelled,
                               metrics={k: v for k, v in (after or {}).items() if isinstance(v, (int, float))},
                               config=cfg.to_dict())
    return RunResult(result, before, after, path)
