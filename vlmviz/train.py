"""Projector-only training on cached encoder features.

The encoder ran once (features.py); the text side is a fixed matrix of caption vectors; the optimizer sees only
the projector's parameters (plus the loss's temperature / bias). Progress leaves through a callback so a Gradio
generator, tqdm or a notebook can show it; `should_stop` is polled between steps to cancel.

Shapes: N training pairs, T selected encoder tokens, D_vis encoder width, M projector tokens, D_txt text width.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .config import TrainConfig
from .losses import LossHead
from .eval.metrics import alignment_report, retrieval_metrics
from .projectors import Projector
from .tokens import pool_tokens


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to 10% of it (the usual CLIP / LLaVA schedule)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class TrainResult:
    projector: Projector
    loss_head: LossHead
    history: list[dict] = field(default_factory=list)  # one row per step: step, loss, lr, temperature
    evals: list[dict] = field(default_factory=list)  # alignment_report rows with their step
    cancelled: bool = False
    steps_done: int = 0
    seconds: float = 0.0
    device: str = "cpu"


@dataclass
class RunResult:
    """A whole run (experiment or caption): the training result, held-out metrics before and after, the checkpoint."""
    result: TrainResult
    before: dict | None
    after: dict | None
    checkpoint: Path | None
    examples: list | None = None  # caption runs: a few held-out images' true and generated captions


def embed(projector: Projector, tokens: torch.Tensor, pooling: str, batch_size: int = 256) -> torch.Tensor:
    """Projected, pooled vectors for evaluation: (N, T, D_vis) -> (N, D_txt); token-level outputs are mean-pooled."""
    device = next(projector.parameters()).device
    was_training = projector.training
    projector.eval()
    with torch.no_grad():
        out = torch.cat([
            pool_tokens(projector(tokens[i:i + batch_size].to(device).float()), "mean" if pooling == "none" else pooling)
            for i in range(0, len(tokens), batch_size)
        ]).float().cpu()
    projector.train(was_training)
    return out


def evaluate(projector: Projector, tokens: torch.Tensor, text: torch.Tensor, pooling: str, k: int = 10) -> dict:
    return alignment_report(embed(projector, tokens, pooling), text, k=k)


def train_projector(
    projector: Projector,
    tokens: torch.Tensor,
    text: torch.Tensor,
    cfg: TrainConfig,
    eval_tokens: torch.Tensor | None = None,
    eval_text: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    accelerator=None,
    head: torch.nn.Module | None = None,
    groups: torch.Tensor | None = None,
    hard_negatives: torch.Tensor | None = None,
    hard_mask: torch.Tensor | None = None,
    snapshot: Callable[[int, Projector, torch.Tensor, torch.Tensor], None] | None = None,
) -> TrainResult:
    """Train `projector` so that pool(projector(tokens[i])) aligns with text[i].

    tokens (N, T, D_vis) selected encoder tokens; text (N, D_txt) caption vectors of the frozen text space.
    For loss 'caption', `head` is a captioning.CaptionHead over the frozen LM and `text` holds caption indices (N,).
    `groups` (N,) ids pairs that state the same facts (openset.caption_groups); contrastive losses never use one as
    the other's negative. By default pairs with identical caption vectors share a group.
    `hard_negatives` (N, K, D_txt) gives each pair K negative captions of its own (openset.hard_negative_captions),
    `hard_mask` (N, K) which of them are real; contrastive losses only.
    With an `accelerate.Accelerator`, each process draws its slice of the same global batch and gradients are
    averaged across processes (DistributedDataParallel), so results match one process with the same global batch.
    `snapshot(step, projector, eval_tokens, eval_text)` is called before the first step and at every evaluation
    (the app's Train tab draws the held-out points moving from it).
    """
    if len(tokens) != len(text):
        raise ValueError(f"got {len(tokens)} images but {len(text)} captions; expected one caption per image")
    if tokens.ndim != 3 or tokens.shape[-1] != projector.in_dim:
        raise ValueError(f"tokens must be (N, T, {projector.in_dim}) for this projector, got {tuple(tokens.shape)}")
    captioning = cfg.loss == "caption"
    if captioning and (head is None or text.ndim != 1):
        raise ValueError("loss 'caption' needs head=CaptionHead(...) and text as caption indices of shape (N,)")
    if not captioning and text.shape[-1] != projector.out_dim:
        raise ValueError(f"text vectors must be {projector.out_dim}-d for this projector, got {text.shape[-1]}")
    if not (torch.isfinite(tokens).all() and torch.isfinite(text).all()):
        raise ValueError("training features contain NaN or infinity")
    if cfg.loss in ("infonce", "sigmoid") and len(tokens) < 2:
        raise ValueError(f"{cfg.loss} needs at least 2 pairs (it contrasts each pair with the others)")
    if groups is None and not captioning:
        groups = torch.unique(text, dim=0, return_inverse=True)[1]  # identical captions are never negatives
    if groups is not None and len(groups) != len(tokens):
        raise ValueError(f"groups must give one id per pair: {len(tokens)} pairs, {len(groups)} ids")
    if hard_negatives is not None:
        if cfg.loss not in ("infonce", "sigmoid"):
            raise ValueError(f"hard negatives need loss infonce or sigmoid, not {cfg.loss!r}")
        if hard_negatives.ndim != 3 or hard_negatives.shape[0] != len(tokens) or \
                hard_negatives.shape[-1] != text.shape[-1]:
            raise ValueError(f"hard_negatives must be (N, K, {text.shape[-1]}) with N = {len(tokens)} pairs, got "
                             f"{tuple(hard_negatives.shape)}")
        if hard_mask is not None and hard_mask.shape != hard_negatives.shape[:2]:
            raise ValueError(f"hard_mask must be {tuple(hard_negatives.shape[:2])}, got {tuple(hard_mask.shape)}")
    torch.manual_seed(cfg.seed)
    if cfg.standardize and any(True for _ in projector.parameters()):
        projector.set_input_stats(tokens)
    device = accelerator.device if accelerator is not None else resolve_device(cfg.device)
    head = head if head is not None else LossHead(cfg.loss)
    projector.to(device).train()
    head.to(device)
    optimizer = torch.optim.AdamW(
        [{"params": list(projector.parameters()), "weight_decay": cfg.weight_decay},
         # never decay a temperature; a frozen LM inside a caption head contributes nothing trainable
         {"params": [p for p in head.parameters() if p.requires_grad], "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    model = _Trainable(projector, head)
    if accelerator is not None:
        model, optimizer = accelerator.prepare(model, optimizer)
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator is not None else (1, 0)
    batch = min(cfg.batch_size, len(tokens))
    if batch % world:
        raise ValueError(f"batch_size {batch} must be divisible by the {world} processes")
    generator = torch.Generator().manual_seed(cfg.seed)  # same on every process: same global batches
    autocast = device.type == "cuda"
    result = TrainResult(projector, head, device=str(device))
    start = time.perf_counter()

    def run_eval(step):
        if eval_tokens is None or eval_text is None:
            return None
        report = {"step": step, **evaluate(projector, eval_tokens, eval_text, cfg.pooling)}
        result.evals.append(report)
        if snapshot is not None:
            snapshot(step, projector, eval_tokens, eval_text)
        return report

    if snapshot is not None and eval_tokens is not None and eval_text is not None:
        snapshot(0, projector, eval_tokens, eval_text)  # where the held-out points start

    for step in range(cfg.steps):
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        idx = torch.randperm(len(tokens), generator=generator)[:batch]  # the global batch
        idx = idx[rank * batch // world:(rank + 1) * batch // world]  # this process's slice
        x, y = tokens[idx].to(device).float(), text[idx].to(device)
        y = y if captioning else y.float()
        g = groups[idx] if groups is not None else None
        hard = None
        if hard_negatives is not None:
            hard = (hard_negatives[idx].to(device).float(),
                    hard_mask[idx].to(device) if hard_mask is not None else None)
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, aux = model(x, y, cfg.pooling, g, hard)
            total = loss + cfg.aux_loss_weight * aux
        optimizer.zero_grad(set_to_none=True)
        if accelerator is not None:
            accelerator.backward(total)
        else:
            total.backward()
        optimizer.step()
        row = {"step": step + 1, "loss": float(loss.detach()), "lr": lr, "temperature": head.temperature}
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"loss became {row['loss']} at step {step + 1}; lower the learning rate")
        result.history.append(row)
        result.steps_done = step + 1
        is_eval = cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps)
        metrics = run_eval(step + 1) if is_eval else None
        if callback is not None:
            callback({**row, "steps": cfg.steps, "metrics": metrics, "elapsed": time.perf_counter() - start})
    if result.cancelled and eval_tokens is not None and result.steps_done:
        run_eval(result.steps_done)  # what we have, measured
    projector.eval()
    result.seconds = time.perf_counter() - start
    return result


class _Trainable(torch.nn.Module):
    """Projector + loss head as one module, so DDP (accelerate) wraps and syncs both."""

    def __init__(self, projector: Projector, head: LossHead):
        super().__init__()
        self.projector, self.head = projector, head

    def forward(self, x, y, pooling, groups=None, hard=None):
        out = pool_tokens(self.projector(x), pooling)  # (b, D_txt) or (b, M, D_txt)
        if hard is not None:
            loss = self.head(out.float(), y, groups, *hard)
        else:
            loss = self.head(out.float(), y) if groups is None else self.head(out.float(), y, groups)
        return loss, self.projector.aux_loss()


RIDGES = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)  # lambda, in units of N on scaled x


def _ridge_solutions(x: torch.Tensor, y: torch.Tensor, ridges, standardize: bool = True) -> tuple[
        list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge maps for every lambda from one SVD of the scaled, centred features: each dimension to unit variance
    (standardize) or all of them by one number, their RMS std (the raw geometry, scale-free lambda).
    x (N, D_vis), y (N, D_txt) -> [W (D_vis, D_txt) per lambda] on scaled x, and mean_x, scale_x, mean_y."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    sx = x.std(0).clamp_min(1e-6) if standardize else x.var(0).mean().sqrt().clamp_min(1e-6).expand(x.shape[1])
    u, sv, vh = torch.linalg.svd((x - mx) / sx, full_matrices=False)  # (N, r), (r,), (r, D_vis)
    uty = u.T @ (y - my)  # (r, D_txt)
    keep = sv > sv.max() * 1e-10  # lambda = 0 is the minimum-norm solution over the non-null directions
    solutions = []
    for lam in ridges:
        gain = torch.where(keep, sv / (sv.pow(2) + lam * len(x)), torch.zeros_like(sv))  # (r,)
        solutions.append(vh.T @ (gain[:, None] * uty))  # (D_vis, D_txt)
    return solutions, mx, sx, my


def choose_ridge(x: torch.Tensor, y: torch.Tensor, ridges=RIDGES, val_fraction: float = 0.2,
                 seed: int = 0) -> tuple[dict, dict[tuple[bool, float], float]]:
    """The least-squares map that, fitted on a seeded (1 - val_fraction) of the pairs, retrieves the held-out rest
    best (image->text R@1 against their distinct captions; ties go to the lower validation MSE), over the ridge
    strength and whether to standardise each feature (which helps on some encoders and hurts on others: measured
    in BENCHMARKS.md). Returns {"ridge": lambda, "standardize": bool} and {(standardize, lambda): val R@1}."""
    n = len(x)
    n_val = max(2, int(round(n * val_fraction)))
    if n - n_val < 2:
        raise ValueError(f"choosing the ridge needs at least 4 pairs, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, fit = perm[:n_val], perm[n_val:]
    scores, best = {}, None
    for standardize in (True, False):
        solutions, mx, sx, my = _ridge_solutions(x[fit], y[fit], ridges, standardize)
        xv = (x[val].double() - mx) / sx  # (n_val, D_vis)
        for lam, w in zip(ridges, solutions):
            pred = xv @ w + my  # (n_val, D_txt)
            r1 = retrieval_metrics(pred.float(), y[val].float(), ks=(1,))["i2t_R@1"]
            key = (r1, -float((pred - y[val].double()).pow(2).mean()))
            scores[(standardize, lam)] = r1
            if best is None or key > best[0]:
                best = (key, {"ridge": lam, "standardize": standardize})
    return best[1], scores


def fit_least_squares(x: torch.Tensor, y: torch.Tensor, ridge: float | None = None,
                      standardize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-free baseline at its best: W, b minimising ||x W + b - y||^2 + lambda N ||W'||^2, where W' acts on
    scaled features (each dimension to unit variance, as the trainer standardises its input, or all by their RMS
    std), so the ridge does not depend on feature scale. ridge None: the ridge and the scaling are chosen on
    held-out pairs (choose_ridge). x (N, D_vis), y (N, D_txt); W (D_vis, D_txt) and b (D_txt,) act on raw x."""
    if ridge is None:
        choice, _ = choose_ridge(x, y)
        ridge, standardize = choice["ridge"], choice["standardize"]
    (w,), mx, sx, my = _ridge_solutions(x, y, (ridge,), standardize)
    w = w / sx[:, None]  # fold the scaling in: ((x - m) / s) W' = x (W' / s) - m (W' / s)
    return w.float(), (my - mx @ w).float()


def fit_procrustes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Orthogonal Procrustes on centred, unit-normalised features (Choi et al.): the rotation R minimising
    ||x R - y||_F; when widths differ, R is the (D_vis, D_txt) semi-orthogonal map from the SVD of x^T y."""
    xn = torch.nn.functional.normalize(x.double() - x.double().mean(0), dim=-1)
    yn = torch.nn.functional.normalize(y.double() - y.double().mean(0), dim=-1)
    u, _, vh = torch.linalg.svd(xn.T @ yn, full_matrices=False)  # (D_vis, r), (r, D_txt)
    return (u @ vh).float()

