"""One caption-objective run end to end (LLaVA stage 1), the `loss="caption"` branch of experiment.run:
dataset -> split -> cached encoder tokens -> connector trained through the frozen LM's next-token loss ->
held-out caption loss before / after, two example captions -> captioning checkpoint.

The caption "targets" handed to the trainer are just indices into the training captions; the CaptionHead turns
them into text. Shape legend: N images, T selected encoder tokens, D_vis encoder width, M visual tokens, D LM width.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .captioner import build_vlm, save_captioner
from .model import CaptionHead, VisualLM
from ..config import ExperimentConfig
from ..encoders import load_vision_encoder, select_tokens, token_dim
from ..features import FeatureCache
from ..projectors import Projector, build_projector
from ..train import RunResult, train_projector

EVAL_IMAGES = 16  # held-out images scored by the caption loss before and after: a few seconds through SmolLM2


def caption_tokens(cfg: ExperimentConfig, samples: Sequence, cache: FeatureCache | None = None,
                   progress=None) -> torch.Tensor:
    """Selected encoder tokens (N, T, D_vis) of the samples' images, through the on-disk feature cache."""
    encoder = load_vision_encoder(cfg.encoder.name)
    tokens = (cache or FeatureCache()).tokens(encoder, [s.load() for s in samples], progress=progress)
    return select_tokens(tokens, encoder.has_cls, cfg.encoder.tokens)


@torch.no_grad()
def held_out_loss(projector: Projector, vlm: VisualLM, tokens: torch.Tensor, captions: Sequence[str],
                  batch: int = 8) -> float:
    """Caption loss on images the connector never trained on, averaged over batches weighted by their size."""
    was = projector.training
    projector.eval()
    device = next(projector.parameters()).device
    total = 0.0
    for i in range(0, len(tokens), batch):
        visual = projector(tokens[i:i + batch].to(device).float())  # (b, M, D)
        total += float(vlm.caption_loss(visual, captions[i:i + batch])) * len(visual)
    projector.train(was)
    return total / len(tokens)


def run_caption(cfg: ExperimentConfig, train: list, test: list, out: str | Path | None = None, callback=None,
                should_stop=None, accelerator=None, progress=None, cache: FeatureCache | None = None,
                dataset: str = "", split=None):
    x_tr = caption_tokens(cfg, train, cache, progress)  # (N, T, D_vis)
    held = test[:EVAL_IMAGES]
    x_te = caption_tokens(cfg, held, cache, progress) if held else None
    encoder = load_vision_encoder(cfg.encoder.name)
    vlm = build_vlm(cfg.text.name, cfg.caption)
    try:
        torch.manual_seed(cfg.train.seed)
        projector = build_projector(cfg.projector.family, token_dim(encoder.hidden_size, cfg.encoder.tokens),
                                    vlm.dim, **cfg.projector.options)
        head = CaptionHead(vlm, [s.caption for s in train])
        truth = [s.caption for s in held]
        before = {"caption_loss": held_out_loss(projector, vlm, x_te, truth), "N": len(held)} if held else None
        result = train_projector(projector, x_tr, torch.arange(len(train)), cfg.train, head=head, callback=callback,
                                 should_stop=should_stop, accelerator=accelerator)
        after, examples = None, []
        if held:
            after = {"caption_loss": held_out_loss(projector, vlm, x_te, truth), "N": len(held)}
            device = next(projector.parameters()).device
            with torch.no_grad():
                said = vlm.generate(projector(x_te[:2].to(device).float()), max_new_tokens=24)
            examples = [{"truth": t, "generated": g} for t, g in zip(truth, said)]
        path = None
        if out is not None and (accelerator is None or accelerator.is_main_process):
            path = save_captioner(out, projector, vlm, cfg.text.name, encoder=cfg.encoder.name,
                                  tokens=cfg.encoder.tokens, text=cfg.text.name, dataset=dataset, split=split,
                                  steps=result.steps_done, cancelled=result.cancelled, metrics=after or {},
                                  config=cfg.to_dict())
    finally:
        vlm.close()  # the LM is shared per process: take this run's cross-attention hooks off it
    return RunResult(result, before, after, path, examples)
