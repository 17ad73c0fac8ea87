"""The connector ablation table: every family under the same budget, evaluated open-set on held-out attribute
combinations, next to training-free baselines (untrained projector, least squares, orthogonal Procrustes).

Budget: `steps` optimizer steps, cut short at `budget_s` seconds of training per connector (issue 7: at most 5
CPU-minutes each); `steps_done` in the table says where each one stopped. With several seeds every row is the mean
over seeds and `*_std` columns give the spread: held-out color accuracy hinges on a handful of unseen (color, shape)
pairs, so one seed can swing R@1 by 0.2 (BENCHMARKS.md).

Scenes with two or three objects: pooled families read `cls+maxgrid` (CLS plus a 4 x 4 grid of max-pooled
patches), since one pooled vector cannot say which object is where; and they train on each scene's canonical
statement ("a red circle left of a blue square", never its converse "a blue square right of a red circle"). The
text spaces do not know that a converse states the same fact (MiniLM: cosine 0.956 to it, 0.987 to the role-swapped
caption), so images phrased half one way and half the other are pulled to a point nearer the role swap
(BENCHMARKS.md, two-object scenes). `captions="drawn"` trains on the phrasing as drawn.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from ..config import TrainConfig
from ..data import SCENES
from ..encoders import load_vision_encoder, select_tokens
from ..features import FeatureCache
from ..eval.openset import (ATTRIBUTES, candidate_set, caption_groups, embed_hard_negatives, metadata_attributes,
                      open_set_report, target_caption, training_caption)
from ..projectors import build_projector
from ..text import load_text_space
from ..train import choose_ridge, embed, fit_least_squares, fit_procrustes, train_projector

# family -> projector options; pooled families see one pooled token, token-level ones the patch grid
POOLED = {"linear": {}, "mlp2x_gelu": {}, "residual_mlp": {}, "lowrank": {"rank": 64},
          "moe": {"num_experts": 4, "top_k": 2}}
TOKEN_LEVEL = {"pixel_shuffle": {"scale": 2}, "resampler": {"num_queries": 16},
               "qformer": {"num_queries": 16}, "cabstractor": {"output_side": 4},
               # the connectors real VLMs ship (vlmviz/vlms): Qwen2-VL, InternVL, Gemma 3, Mistral 3, MobileVLM, Ovis
               "qwen2_merger": {}, "internvl": {"scale": 2}, "gemma3": {"pool": 4}, "mistral3": {}, "ldp": {},
               "ovis": {"vocab_size": 1024}}
# attention pooling over the 17 cls+cells tokens (CLS + 4 x 4 max-pooled cells): one query per object
CELL_LEVEL = {"attnpool": {"num_queries": 2}}
FAMILIES = {**POOLED, **TOKEN_LEVEL, **CELL_LEVEL}
METRICS = ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "swap_acc", "role_swap_acc", "count_swap_acc", "acc_color",
           "acc_shape", "acc_size", "acc_position", "acc_relation", "acc_count", "acc_color2", "acc_shape2",
           "modality_gap")


@dataclass
class AblationData:
    train: list
    test: list
    tokens_train: torch.Tensor  # (N_train, N, D_vis) all encoder tokens
    tokens_test: torch.Tensor
    text_train: torch.Tensor  # (N_train, D_txt)
    groups: torch.Tensor  # (N_train,) scenes stating the same facts share an id (never each other's negatives)
    captions: list[str]  # open-set candidates
    metas: list
    attributes: tuple  # the facts scored per attribute: the scenes', or a folder's metadata columns
    hard_train: torch.Tensor | None = None  # (N_train, K, D_txt) each scene's own hard-negative captions
    hard_mask: torch.Tensor | None = None  # (N_train, K) which of them are real


CAPTIONS = ("auto", "drawn", "canonical")


def relational(dataset: str) -> bool:
    return SCENES.get(dataset, {}).get("objects", 1) > 1


def prepare(encoder_name: str, text_name: str, n_train: int = 4000, n_test: int = 200,
            dataset: str = "scenes-1obj", seed: int = 0, cache: FeatureCache | None = None, progress=None,
            captions: str = "auto", hard_negatives: bool = False) -> tuple:
    """captions: train on each scene's caption as drawn, or on its canonical statement; auto = canonical for scenes
    that state a relation (openset.training_caption). hard_negatives: also embed each training scene's twins
    (openset.hard_negative_captions) for InfoNCE."""
    from ..data.splits import load_split

    if captions not in CAPTIONS:
        raise ValueError(f"captions must be one of {', '.join(CAPTIONS)}; got {captions!r}")
    if hard_negatives and dataset not in SCENES:  # before any image is encoded
        raise ValueError(f"hard negatives are the swapped twins that the scene sets carry; {dataset} has none")
    encoder, text = load_vision_encoder(encoder_name), load_text_space(text_name)
    train, test = load_split(dataset, n_train, n_test, seed)
    cache = cache or FeatureCache()
    tokens = cache.tokens(encoder, [s.load() for s in train + test], progress=progress)  # (N_all, N, D_vis)
    attributes = ATTRIBUTES if dataset in SCENES else metadata_attributes(train + test)  # a folder's columns
    candidates, metas = candidate_set(train, test, attributes)
    pick = {"auto": training_caption, "canonical": target_caption, "drawn": lambda s: s.caption}[captions]
    targets = [pick(s) for s in train]
    data = AblationData(train, test, tokens[:len(train)], tokens[len(train):], text.encode(targets),
                        caption_groups(train), candidates, metas, attributes)
    if hard_negatives:
        data.hard_train, data.hard_mask = embed_hard_negatives(text, train)
    return encoder, text, data


def token_mode(family: str, has_cls: bool, dataset: str = "scenes-1obj") -> str:
    if family in TOKEN_LEVEL or (family in CELL_LEVEL and not has_cls):
        return "patch"
    if family in CELL_LEVEL:
        return "cls+cells"
    if relational(dataset) and has_cls:
        return "cls+maxgrid"
    return "cls+mean+max" if has_cls else "mean+max"


def _mean_rows(rows: list[dict]) -> dict:
    """One row from the same connector's rows over seeds: metrics averaged, their spread in *_std columns."""
    out = dict(rows[0])
    for key in METRICS + ("train_s", "steps_done"):
        values = [r[key] for r in rows if key in r]
        if values:
            t = torch.tensor(values, dtype=torch.float64)
            out[key] = float(t.mean())
            if key in ("i2t_R@1", "swap_acc", "acc_color") and len(values) > 1:
                out[f"{key}_std"] = float(t.std())
    out["seeds"] = len(rows)
    return out


def run_ablation(encoder_name: str = "vit-s14", text_name: str = "smollm2-135m", families=None,
                 steps: int = 1000, batch_size: int = 256, lr: float = 1e-2, loss: str = "infonce",
                 n_train: int = 4000, n_test: int = 200, dataset: str = "scenes-1obj", seed: int = 0,
                 seeds: int = 1, weight_decay: float = 0.5, budget_s: float = 300.0,
                 false_negatives: bool = True, captions: str = "auto", hard_negatives: bool = False,
                 log=print) -> pd.DataFrame:
    """Train every family on the same cached features and score each open-set on the held-out test scenes.
    hard_negatives: InfoNCE also pushes each scene from its own color- and role-swapped twins (NegCLIP), those
    that name only seen (color, shape) pairs."""
    encoder, text, data = prepare(encoder_name, text_name, n_train, n_test, dataset, seed, captions=captions,
                                  hard_negatives=hard_negatives)
    families = list(families or FAMILIES)
    unknown = [f for f in families if f not in FAMILIES and not f.startswith("mlp")]
    if unknown:
        raise ValueError(f"unknown families {unknown}; valid: {', '.join(FAMILIES)}")
    rows = []

    def score(img_test) -> dict:
        return open_set_report(img_test, data.test, data.captions, data.metas, text.encode, data.attributes)

    def record(name, kind, reports, params, out_tokens, seconds, steps_done=0):
        row = _mean_rows([{"connector": name, "kind": kind, **rep, "params": params, "out_tokens": out_tokens,
                           "train_s": round(s, 1), "steps_done": steps_done} for rep, s in zip(reports, seconds)])
        rows.append(row)
        log(f"{name:>16}  i2t R@1 {row['i2t_R@1']:.3f}  R@5 {row['i2t_R@5']:.3f}  t2i R@1 {row['t2i_R@1']:.3f}  "
            f"swap {row.get('swap_acc', float('nan')):.3f}  color {row.get('acc_color', float('nan')):.3f}  "
            f"({row['train_s']:.1f}s, {row['seeds']} seed(s))")

    # training-free baselines on the same pooled view as the pooled families
    mode = token_mode("linear", encoder.has_cls, dataset)
    x_tr = select_tokens(data.tokens_train, encoder.has_cls, mode)[:, 0]  # (N_train, D)
    x_te = select_tokens(data.tokens_test, encoder.has_cls, mode)[:, 0]
    torch.manual_seed(seed)
    untrained = build_projector("linear", x_tr.shape[1], text.dim)
    record("untrained linear", "baseline", [score(embed(untrained, x_te[:, None], "mean"))], untrained.num_params,
           1, [0.0])
    t0 = time.perf_counter()
    choice, _ = choose_ridge(x_tr, data.text_train, seed=seed)  # ridge and scaling chosen on held-out pairs
    w, b = fit_least_squares(x_tr, data.text_train, **choice)
    scaling = "standardised" if choice["standardize"] else "RMS-scaled"
    record("least squares", f"baseline ({scaling}, ridge {choice['ridge']:g})", [score(x_te @ w + b)],
           w.numel() + b.numel(), 1, [time.perf_counter() - t0])
    t0 = time.perf_counter()
    r = fit_procrustes(x_tr, data.text_train)
    record("procrustes", "baseline", [score(torch.nn.functional.normalize(x_te - x_tr.mean(0), dim=-1) @ r)],
           r.numel(), 1, [time.perf_counter() - t0])

    groups = data.groups if false_negatives else torch.arange(len(data.train))
    for family in families:
        mode = token_mode(family, encoder.has_cls, dataset)
        tr = select_tokens(data.tokens_train, encoder.has_cls, mode)
        te = select_tokens(data.tokens_test, encoder.has_cls, mode)
        reports, seconds, done = [], [], []
        for s in range(seed, seed + seeds):
            cfg = TrainConfig(loss=loss, steps=steps, batch_size=batch_size, lr=lr, seed=s, eval_every=0,
                              weight_decay=weight_decay)
            torch.manual_seed(s)
            proj = build_projector(family, tr.shape[-1], text.dim, **FAMILIES.get(family, {}))
            start = time.perf_counter()
            result = train_projector(proj, tr, data.text_train, cfg, groups=groups,
                                     hard_negatives=data.hard_train, hard_mask=data.hard_mask,
                                     should_stop=lambda: time.perf_counter() - start > budget_s)
            reports.append(score(embed(proj, te, cfg.pooling)))
            seconds.append(result.seconds)
            done.append(result.steps_done)
        kind = f"trained ({mode}{', hard negatives' if hard_negatives else ''})"
        record(family, kind, reports, proj.num_params, proj.num_output_tokens(tr.shape[1]), seconds,
               sum(done) / len(done))
    table = pd.DataFrame(rows)
    table.insert(0, "dataset", dataset)
    table.insert(0, "text", text_name)
    table.insert(0, "encoder", encoder_name)
    return table
