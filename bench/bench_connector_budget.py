"""Training budget and input standardisation for the ablation's families, on the ablation's own data (issue 15).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_connector_budget.py gemma3,1000,256,1e-2,1 internvl,1000,64,3e-3,0
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_connector_budget.py --baselines

Each variant is FAMILY,STEPS,BATCH,LR,STD: train that family (the ablation's options, InfoNCE with false-negative
masking, weight decay 0.5, seed 0) on `vlmviz.runs.ablate.prepare`'s split (2000 one-object scenes, 200 held-out, ViT-S/14
output tokens, SmolLM2 token-mean space) and score it open-set as `python -m vlmviz ablate` does. STD=1 gives the
norm-first families (gemma3, internvl, qwen2_merger, mistral3) the per-dimension input standardisation they skip by
default; the others standardise anyway. --baselines: least squares with standardisation only (its ridge chosen on
held-out training pairs) beside the held-out choice of scaling, and the pooled linear connector at 300 x 64 and at
1000 x 256. One JSON line per result; figures in BENCHMARKS.md ("Connectors real VLMs ship").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEYS = ("i2t_R@1", "i2t_R@5", "t2i_R@1", "swap_acc", "acc_color", "acc_shape", "acc_size", "acc_position")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="*", help="FAMILY,STEPS,BATCH,LR,STD")
    ap.add_argument("--baselines", action="store_true")
    args = ap.parse_args()

    from vlmviz.runs.ablate import FAMILIES, prepare, token_mode
    from vlmviz.config import TrainConfig
    from vlmviz.encoders import select_tokens
    from vlmviz.eval.openset import open_set_report
    from vlmviz.projectors import build_projector
    from vlmviz.projectors.base import Projector
    from vlmviz.train import choose_ridge, embed, fit_least_squares, train_projector

    encoder, text, data = prepare("vit-s14", "smollm2-135m", 2000, 200, "scenes-1obj", 0)

    def report(name, vectors, seconds=None, steps=None):
        rep = open_set_report(vectors, data.test, data.captions, data.metas, text.encode, data.attributes)
        row = {"variant": name, **{k: round(float(rep[k]), 3) for k in KEYS}}
        row.update({"steps_done": steps, "train_s": round(seconds, 1)} if seconds is not None else {})
        print(json.dumps(row), flush=True)

    def train(family, x_tr, x_te, steps, batch, lr, standardise=False):
        torch.manual_seed(0)
        proj = build_projector(family, x_tr.shape[-1], text.dim, **FAMILIES.get(family, {}))
        if standardise:  # the base class's standardisation, which the norm-first families override to identity
            Projector.set_input_stats(proj, x_tr)
        cfg = TrainConfig(loss="infonce", steps=steps, batch_size=batch, lr=lr, seed=0, eval_every=0,
                          weight_decay=0.5)
        result = train_projector(proj, x_tr, data.text_train, cfg, groups=data.groups)
        return embed(proj, x_te, cfg.pooling), result

    patch_tr = select_tokens(data.tokens_train, encoder.has_cls, "patch")  # (N, 256, 384)
    patch_te = select_tokens(data.tokens_test, encoder.has_cls, "patch")
    for spec in args.variants:
        family, steps, batch, lr, std = spec.split(",")
        vectors, result = train(family, patch_tr, patch_te, int(steps), int(batch), float(lr), std == "1")
        report(spec, vectors, result.seconds, result.steps_done)

    if args.baselines:
        mode = token_mode("linear", encoder.has_cls, "scenes-1obj")
        x_tr = select_tokens(data.tokens_train, encoder.has_cls, mode)[:, 0]  # (N, 1152) cls+mean+max
        x_te = select_tokens(data.tokens_test, encoder.has_cls, mode)[:, 0]
        choice, val = choose_ridge(x_tr, data.text_train, seed=0)
        print(json.dumps({"choice": choice, "val_R@1": {f"{'std' if s else 'rms'} {lam:g}": round(r, 3)
                                                       for (s, lam), r in val.items()}}), flush=True)
        best_std = max((k for k in val if k[0]), key=lambda k: val[k])[1]
        for std, lam in ((True, best_std), (choice["standardize"], choice["ridge"])):
            w, b = fit_least_squares(x_tr, data.text_train, ridge=lam, standardize=std)
            report(f"least squares {'standardised' if std else 'RMS-scaled'}, ridge {lam:g}", x_te @ w + b)
        for steps, batch, lr in ((300, 64, 3e-3), (1000, 256, 1e-2)):
            vectors, result = train("linear", x_tr[:, None], x_te[:, None], steps, batch, lr)
            report(f"linear ({mode}),{steps},{batch},{lr:g}", vectors, result.seconds, result.steps_done)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
