"""One training run end to end, shared by the CLI, the web app and the notebooks:
dataset -> split -> cached encoder tokens + caption vectors -> train the projector -> metrics -> checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import save_checkpoint
from ..config import ExperimentConfig
from ..data.splits import load_split, split_record
from ..encoders import load_vision_encoder, select_tokens, token_dim
from ..features import FeatureCache
from ..eval.openset import caption_groups, embed_hard_negatives, training_caption
from ..projectors import build_projector
from ..text import load_text_space
from ..train import RunResult, evaluate, train_projector


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
