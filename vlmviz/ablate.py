"""The connector ablation table: every family under the same budget, evaluated open-set on held-out attribute
combinations, next to training-free baselines (untrained projector, least squares, orthogonal Procrustes)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from .config import TrainConfig
from .encoders import load_vision_encoder, select_tokens
from .features import FeatureCache
from .openset import candidate_set, open_set_report
from .projectors import build_projector
from .text import load_text_space
from .train import embed, fit_least_squares, fit_procrustes, train_projector

# family -> (token selection for encoders with CLS, without CLS, projector options)
POOLED = {"linear": {}, "mlp2x_gelu": {}, "residual_mlp": {}, "lowrank": {"rank": 64},
          "moe": {"num_experts": 4, "top_k": 2}}
TOKEN_LEVEL = {"pixel_shuffle": {"scale": 2}, "resampler": {"num_queries": 16},
               "qformer": {"num_queries": 16}, "cabstractor": {"output_side": 4}}
FAMILIES = {**POOLED, **TOKEN_LEVEL}


@dataclass
class AblationData:
    train: list
    test: list
    tokens_train: torch.Tensor  # (N_train, N, D_vis) all encoder tokens
    tokens_test: torch.Tensor
    text_train: torch.Tensor  # (N_train, D_txt)
    captions: list[str]  # open-set candidates
    metas: list


def prepare(encoder_name: str, text_name: str, n_train: int = 600, n_test: int = 200, objects: int = 1,
            seed: int = 0, cache: FeatureCache | None = None, progress=None) -> tuple:
    from .data import scene_split

    encoder, text = load_vision_encoder(encoder_name), load_text_space(text_name)
    train, test = scene_split(n_train, n_test, seed=seed, objects=objects)
    cache = cache or FeatureCache()
    tokens = cache.tokens(encoder, [s.load() for s in train + test], progress=progress)  # (N_all, N, D_vis)
    captions, metas = candidate_set(train, test)
    data = AblationData(train, test, tokens[:len(train)], tokens[len(train):],
                        text.encode([s.caption for s in train]), captions, metas)
    return encoder, text, data


def token_mode(family: str, has_cls: bool) -> str:
    if family in TOKEN_LEVEL:
        return "patch"
    return "cls+mean" if has_cls else "mean"


def run_ablation(encoder_name: str = "vit-s14", text_name: str = "smollm2-135m", families=None,
                 steps: int = 1000, batch_size: int = 256, lr: float = 1e-2, loss: str = "infonce",
                 n_train: int = 600, n_test: int = 200, objects: int = 1, seed: int = 0,
                 log=print) -> pd.DataFrame:
    encoder, text, data = prepare(encoder_name, text_name, n_train, n_test, objects, seed)
    families = list(families or FAMILIES)
    encode_text = text.encode
    rows = []

    def record(name, kind, img_test, params, out_tokens, seconds):
        rep = open_set_report(img_test, data.test, data.captions, data.metas, encode_text)
        rows.append({"connector": name, "kind": kind, **rep, "params": params, "out_tokens": out_tokens,
                     "train_s": round(seconds, 1)})
        log(f"{name:>16}  i2t R@1 {rep['i2t_R@1']:.3f}  R@5 {rep['i2t_R@5']:.3f}  "
            f"t2i R@1 {rep['t2i_R@1']:.3f}  swap {rep.get('swap_acc', float('nan')):.3f}  ({seconds:.1f}s)")

    # training-free baselines on the pooled tokens of the strongest pooled recipe
    mode = token_mode("linear", encoder.has_cls)
    x_tr = select_tokens(data.tokens_train, encoder.has_cls, mode)[:, 0]  # (N_train, D)
    x_te = select_tokens(data.tokens_test, encoder.has_cls, mode)[:, 0]
    torch.manual_seed(seed)
    untrained = build_projector("linear", x_tr.shape[1], text.dim)
    record("untrained linear", "baseline", embed(untrained, x_te[:, None], "mean"), untrained.num_params, 1, 0.0)
    t0 = time.perf_counter()
    w, b = fit_least_squares(x_tr, data.text_train)
    record("least squares", "baseline", x_te @ w + b, w.numel() + b.numel(), 1, time.perf_counter() - t0)
    t0 = time.perf_counter()
    r = fit_procrustes(x_tr, data.text_train)
    record("procrustes", "baseline", torch.nn.functional.normalize(x_te - x_tr.mean(0), dim=-1) @ r,
           r.numel(), 1, time.perf_counter() - t0)

    cfg = TrainConfig(loss=loss, steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=0)
    for family in families:
        mode = token_mode(family, encoder.has_cls)
        tr = select_tokens(data.tokens_train, encoder.has_cls, mode)
        te = select_tokens(data.tokens_test, encoder.has_cls, mode)
        torch.manual_seed(seed)
        proj = build_projector(family, tr.shape[-1], text.dim, **FAMILIES.get(family, {}))
        result = train_projector(proj, tr, data.text_train, cfg)
        record(family, f"trained ({mode})", embed(proj, te, cfg.pooling), proj.num_params,
               proj.num_output_tokens(tr.shape[1]), result.seconds)
    table = pd.DataFrame(rows)
    table.insert(0, "text", text_name)
    table.insert(0, "encoder", encoder_name)
    return table
