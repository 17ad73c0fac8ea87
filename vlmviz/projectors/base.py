"""Projector base class and the name registry (timm's `@register_model`, LLaVA's `build_vision_projector`).

Shape legend for every projector file: B batch, N input tokens, M output tokens, D_vis encoder width,
D_txt text-space width, H hidden width, E experts, Q learned queries, h x w token grid.
Every projector maps (B, N, D_vis) -> (B, M, D_txt).
"""
from __future__ import annotations

import inspect
import math
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

_REGISTRY: dict[str, Callable[..., "Projector"]] = {}
_PATTERNS: list[tuple[re.Pattern, Callable[..., "Projector"], str]] = []


class Projector(nn.Module):
    """Common surface: sizes, parameter count, output token count, an auxiliary loss (MoE), a JSON config."""

    family: str = "?"
    # Families that act on each token alone (linear, MLP ...) accept any leading shape (..., D_vis), as LLaVA's
    # nn.Sequential and transformers' projectors do; the others need a token set or grid: (B, N, D_vis).
    token_wise: bool = False

    def __init__(self, in_dim: int, out_dim: int, **options):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{self.family}: {name} must be a positive integer, got {value!r}")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.options = dict(options)  # everything needed to rebuild it: build_projector(family, in, out, **options)
        # Frozen input standardisation (the trainer sets it from training features). Frozen encoders have a few
        # huge-magnitude dimensions (DINOv2's register-like outliers); without it AdamW spends its steps on them.
        # Exported to LLaVA by folding it into the first linear layer.
        self.register_buffer("input_mean", torch.zeros(self.in_dim))
        self.register_buffer("input_std", torch.ones(self.in_dim))

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def aux_loss(self) -> torch.Tensor:
        """Extra training loss of the last forward (MoE load balancing); zero for most families."""
        return torch.zeros((), device=next(self.parameters(), torch.zeros(())).device)

    def config(self) -> dict:
        return {"family": self.family, "in_dim": self.in_dim, "out_dim": self.out_dim, "options": self.options}

    def __call__(self, x, *args, **kwargs):
        if self.token_wise and isinstance(x, torch.Tensor) and x.ndim != 3 and x.ndim >= 1 \
                and x.shape[-1] == self.in_dim:
            lead = x.shape[:-1]
            out = super().__call__(x.reshape(-1, 1, self.in_dim), *args, **kwargs)  # (prod(lead), 1, D_txt)
            return out.reshape(*lead, out.shape[-1])  # (..., D_txt)
        return super().__call__(x, *args, **kwargs)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check the (B, N, D_vis) contract and standardise the input."""
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            shape = f"(..., {self.in_dim})" if self.token_wise else f"(B, N, {self.in_dim})"
            raise ValueError(f"{self.family} projector expects tokens of shape {shape}, got {tuple(x.shape)}")
        return (x - self.input_mean) / self.input_std

    def prepare_patches(self, x: torch.Tensor, pool: int, positions: int) -> torch.Tensor:
        """prepare(), then the pool x pool block means of the patch grid (pool > 1), refusing more tokens than the
        `positions` the family learned a position for (the resampler's and wordslots' keys)."""
        x = self.prepare(x)
        if pool > 1:
            x = pool_patch_grid(x, pool, self.family)
        if x.shape[1] > positions:
            raise ValueError(f"{self.family} was built for at most {positions} tokens, got {x.shape[1]}")
        return x

    def set_input_stats(self, tokens: torch.Tensor) -> None:
        """Per-dimension mean and std over all training tokens (N, T, D_vis)."""
        flat = tokens.reshape(-1, self.in_dim)
        # in float64 chunks: a double copy of 2000 scenes' 256 patch tokens would be 1.6 GB and take seconds
        total, first = len(flat), flat[:1].double()  # shifting by one row keeps the sums of squares accurate
        s1 = torch.zeros(self.in_dim, dtype=torch.float64)
        s2 = torch.zeros(self.in_dim, dtype=torch.float64)
        for chunk in flat.split(1 << 16):
            c = chunk.double() - first
            s1 += c.sum(0)
            s2 += c.pow(2).sum(0)
        mean = s1 / total
        var = (s2 - total * mean.pow(2)) / max(total - 1, 1)
        self.input_mean.copy_((mean + first[0]).float())
        self.input_std.copy_(var.clamp_min(0).sqrt().clamp_min(1e-6).float())

    def extra_repr(self) -> str:
        return f"{self.in_dim} -> {self.out_dim}, params={self.num_params:,}"


def register(name: str, pattern: str | None = None, help: str = ""):
    """Register a projector class under `name`; `pattern` (a regex) also accepts spellings like mlp3x_gelu."""

    def wrap(cls):
        cls.family = name
        _REGISTRY[name] = cls
        if pattern:
            _PATTERNS.append((re.compile(pattern), cls, help or name))
        return cls

    return wrap


def _resolve(name: str):
    if name in _REGISTRY:
        return _REGISTRY[name], {}
    for regex, cls, _ in _PATTERNS:
        match = regex.fullmatch(name)
        if match:
            return cls, {k: int(v) for k, v in match.groupdict().items()}
    valid = ", ".join(list_projectors())
    raise ValueError(f"unknown projector {name!r}; valid names: {valid} (and mlpNx_gelu for any N >= 1)")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(name: str, cls, options: dict) -> None:
    """Refuse options the family does not take, and values of the wrong kind, naming the option: integer options
    (sizes, counts, layers) must be positive integers, flags booleans. Without this a typo is a TypeError deep
    inside __init__ and `num_queries=0` builds a connector that outputs nothing. A family names the integer
    options for which 0 means something (a block count: none) in its class attribute `zero_options`."""
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
              if k not in ("self", "in_dim", "out_dim") and p.kind is p.POSITIONAL_OR_KEYWORD}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"{name} has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(params) or 'none'}")
    zero_ok = getattr(cls, "zero_options", ())
    for key, value in options.items():
        kind = str(params[key].annotation)
        if "bool" in kind and not isinstance(value, bool):
            raise ValueError(f"{name} option {key} must be true or false, got {value!r}")
        least = 0 if key in zero_ok else 1
        if "int" in kind and not (value is None and "None" in kind) and (not _is_int(value) or value < least):
            raise ValueError(f"{name} option {key} must be a {'non-negative' if least == 0 else 'positive'} "
                             f"integer, got {value!r}")


def pool_patch_grid(x: torch.Tensor, pool: int, family: str) -> torch.Tensor:
    """(B, N, D) patches of a square grid -> (B, N / pool^2, D): the mean of each pool x pool block."""
    B, N, D = x.shape
    side = math.isqrt(N)
    if side * side != N or side % pool:
        raise ValueError(f"{family} pool {pool} needs a square patch grid whose side it divides, got {N} tokens")
    grid = x.transpose(1, 2).reshape(B, D, side, side)
    return F.avg_pool2d(grid, pool).flatten(2).transpose(1, 2)


def build_projector(name: str, in_dim: int, out_dim: int, **options) -> Projector:
    """Build a registered projector: build_projector("mlp2x_gelu", 768, 512, hidden_dim=1024)."""
    cls, from_name = _resolve(name)
    for key, value in from_name.items():
        if options.get(key, value) != value:
            raise ValueError(f"{name!r} fixes {key}={value}, but {key}={options[key]} was also given")
    check_options(name, cls, {**options, **from_name})
    projector = cls(in_dim, out_dim, **{**options, **from_name})
    projector.family = name if from_name else cls.family
    return projector


def list_projectors() -> list[str]:
    return sorted(_REGISTRY)


def tokens_to_grid(x: torch.Tensor, family: str) -> tuple[torch.Tensor, int, int]:
    """(B, N, D) -> (B, D, h, w) for spatial connectors.

    Honeybee and nanoVLM work on patch tokens only: when N = h*w + 1 the first token is a CLS token and is dropped.
    """
    B, N, D = x.shape
    side = math.isqrt(N)
    if side * side != N:
        side = math.isqrt(N - 1)
        if N > 1 and side * side == N - 1:
            x = x[:, 1:]  # drop CLS: (B, h*w, D)
        else:
            raise ValueError(
                f"{family} needs a square grid of patch tokens (N = h*w, optionally + 1 CLS); got N={N}. "
                "Use token selection 'patch' or 'all', not a pooled one."
            )
    grid = x.transpose(1, 2).reshape(B, D, side, side)  # (B, D, h, w)
    return grid, side, side


def grid_side(num_tokens: int) -> int:
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        return side
    side = math.isqrt(num_tokens - 1)
    if num_tokens > 1 and side * side == num_tokens - 1:
        return side
    raise ValueError(f"{num_tokens} tokens do not form a square grid (optionally with one CLS token)")


def merge_blocks(x: torch.Tensor, side: int, merge: int) -> torch.Tensor:
    """Raster tokens (B, h*w, D) -> one token per merge x merge block, (B, M, merge^2 * D), M = ceil(h/m) * ceil(w/m)
    in reading order, channels ordered (row in block, column in block, channel): the layout Qwen2-VL's PatchMerger,
    InternVL's and Idefics3's pixel_shuffle produce (each takes a block as merge^2 consecutive D-wide slices).
    A grid not divisible by `merge` is zero-padded on the bottom/right (EfficientNet's 7 x 7)."""
    B, N, D = x.shape
    m = merge
    grid = x.reshape(B, side, side, D)  # (B, h, w, D)
    pad = -side % m
    grid = torch.nn.functional.pad(grid, (0, 0, 0, pad, 0, pad))  # (B, h', w', D)
    s = (side + pad) // m
    blocks = grid.reshape(B, s, m, s, m, D).permute(0, 1, 3, 2, 4, 5)  # (B, h'/m, w'/m, m, m, D)
    return blocks.reshape(B, s * s, m * m * D)  # (B, M, m^2 D)


def patch_tokens(x: torch.Tensor, family: str) -> tuple[torch.Tensor, int]:
    """(B, N, D) -> raster patch tokens (B, h*w, D) and the side h, dropping a CLS token when N = h*w + 1."""
    grid, side, _ = tokens_to_grid(x, family)  # (B, D, h, w)
    return grid.flatten(2).transpose(1, 2), side  # (B, h*w, D)
