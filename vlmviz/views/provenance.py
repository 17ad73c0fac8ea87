"""Patch provenance: which source patches feed one projected token.

For any connector the answer is read off the connector itself, not from its family's name: the gradient of the
chosen output token with respect to every input token. A merge-style connector (Qwen2-VL's 2 x 2 merger,
InternVL's and Idefics3's pixel shuffle, Gemma 3's 4 x 4 average pool) gives exactly zero outside its block, so
the patches with a non-zero share are the block; a per-token MLP (LLaVA) gives one patch; a convolution (LDP,
C-Abstractor) its receptive field. A learned-query connector that keeps its attention (resampler, attnpool) shows
that attention instead: every patch feeds every query a little.

Shape legend: N' tokens the connector reads (CLS first when kept), D_vis their width, M output tokens, D_txt output
width, P random probes, gh x gw the tower's patch grid, h x w the output grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..encoders import select_tokens

SHOWN_AT = 448  # side of the pictures the app draws (plots.heatmap_overlay, plots.provenance_overlay)


@dataclass
class Provenance:
    token: int  # index among the projected tokens
    cell: tuple[int, int] | None  # (row, col) on the output grid; None for a CLS output or learned queries
    out_grid: tuple[int, int] | None  # (h, w) of the output grid
    weights: np.ndarray  # (gh, gw): each source patch's share of the token, summing to 1 with cls_weight
    cls_weight: float | None  # the CLS token's share, when the connector reads one
    how: str  # "gradient" | "attention"
    note: str


def _inputs(pipe, image) -> tuple[torch.Tensor, bool]:
    """The tokens the connector reads (1, N', D_vis) and whether the first is a CLS token."""
    if pipe.tokens not in ("all", "patch"):
        raise ValueError(f"this connector reads '{pipe.tokens}': pooled vectors, not one token per patch, so no "
                         "projected token comes from particular patches. Open a real VLM, or pick a connector on "
                         "'all' or 'patch' tokens")
    vis = pipe.image_tokens(image)  # (1, N, D_vis)
    selected = select_tokens(vis, pipe.encoder.has_cls, pipe.tokens).float()  # (1, N', D_vis)
    cls_in = bool(pipe.encoder.has_cls and pipe.tokens == "all")
    gh, gw = pipe.encoder.grid
    if selected.shape[1] - cls_in != gh * gw:
        raise ValueError(f"{pipe.encoder.name} gives {selected.shape[1] - cls_in} patch tokens, not its "
                         f"{gh} x {gw} grid, so patches cannot be placed")
    return selected, cls_in


def _attention(projector, x: torch.Tensor) -> torch.Tensor | None:
    """(M, N') attention of each learned query over the input tokens, when the connector keeps it."""
    if not hasattr(projector, "attn_weights"):
        return None
    with torch.no_grad():
        projector(x)
    return projector.attn_weights[0].float().cpu()  # heads averaged by nn.MultiheadAttention


def _gradient_share(projector, x: torch.Tensor, token: int, probes: int = 4) -> torch.Tensor:
    """(N',) root-mean-square gradient of output token `token` along P random directions, per input token: an
    estimate of each input token's Jacobian norm, exactly zero for tokens the output does not read."""
    device = next(projector.parameters(), x).device
    xs = x.to(device).repeat(probes, 1, 1).requires_grad_(True)  # (P, N', D_vis): one probe per copy
    with torch.enable_grad():
        out = projector(xs)[:, token]  # (P, D_txt)
        u = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
        (out * u).sum().backward()
    return xs.grad.pow(2).sum(-1).mean(0).sqrt().cpu()  # (N',)


def patch_provenance(pipe, image, token: int) -> Provenance:
    """Which of the tower's patches feed projected token `token` of `pipe` (an explore.Pipeline) on `image`."""
    x, cls_in = _inputs(pipe, image)
    n = x.shape[1]
    m = pipe.projector.num_output_tokens(n)
    if token is None or not float(token).is_integer() or not 0 <= int(token) < m:
        raise ValueError(f"token {token} is out of range: this connector gives {m} tokens per image (0 to {m - 1})")
    token = int(token)
    grid = pipe.output_grid(n)
    attn = _attention(pipe.projector, x)
    share = attn[token] if attn is not None else _gradient_share(pipe.projector, x, token)
    share = share / share.sum().clamp_min(1e-30)  # (N',)
    cls_weight = float(share[0]) if cls_in else None
    gh, gw = pipe.encoder.grid
    weights = share[int(cls_in):].reshape(gh, gw).numpy()  # (gh, gw)
    cell, out_grid = None, None
    if grid is not None:
        h, w, offset = grid
        out_grid = (h, w)
        if token >= offset:
            cell = divmod(token - offset, w)
    how = "attention" if attn is not None else "gradient"
    return Provenance(token, cell, out_grid, weights, cls_weight, how,
                      _describe(pipe, token, cell, out_grid, weights, cls_weight, how))


def _describe(pipe, token, cell, out_grid, weights, cls_weight, how) -> str:
    gh, gw = weights.shape
    family = pipe.projector.family
    where = f"row {cell[0]}, column {cell[1]} of the {out_grid[0]} x {out_grid[1]} output grid" if cell else \
        ("the token before the grid, a CLS or summary token" if out_grid else f"learned query {token}")
    cls = f"; the CLS token {cls_weight:.0%}" if cls_weight is not None and cls_weight > 1e-6 else ""
    if how == "attention":
        top = np.argsort(weights, axis=None)[::-1][:3]
        best = ", ".join(f"({i // gw}, {i % gw}) {weights.flat[i]:.1%}" for i in top)
        return (f"Token {token} ({where}) is made by {family}'s attention over all {gh * gw} patches of the "
                f"{gh} x {gw} tower grid (mean of heads); strongest (row, column): {best}{cls}.")
    rows, cols = np.nonzero(weights > weights.max() * 1e-6)
    k = len(rows)
    if k == 0:
        return f"Token {token} ({where}) reads no patch at all, only the CLS token{cls}."
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    full = k == (r1 - r0 + 1) * (c1 - c0 + 1)
    if k == 1:
        return f"Token {token} ({where}) is made by {family} from one tower patch: row {r0}, column {c0}{cls}."
    block = f"a {r1 - r0 + 1} x {c1 - c0 + 1} block" if full else f"{k} patches within"
    return (f"Token {token} ({where}) is made from {k} of the {gh} x {gw} tower patches by {family}: {block} "
            f"(rows {r0}-{r1}, columns {c0}-{c1}){cls}. Shading: each patch's share of the token's gradient.")


def token_at(pipe, image, x: float, y: float, size: int = SHOWN_AT) -> int | None:
    """The projected token under pixel (x, y) of a picture drawn `size` px square over the image: the output grid
    cell there, or for learned queries the query that attends most to the patch there. None when neither."""
    if not (0 <= x < size and 0 <= y < size):
        return None  # e.g. the heatmap's colour bar
    selected, cls_in = _inputs(pipe, image)
    grid = pipe.output_grid(selected.shape[1])
    if grid is not None:
        h, w, offset = grid
        return offset + int(y * h // size) * w + int(x * w // size)
    attn = _attention(pipe.projector, selected)
    if attn is None:
        return None
    gh, gw = pipe.encoder.grid
    patch = int(cls_in) + int(y * gh // size) * gw + int(x * gw // size)
    return int(attn[:, patch].argmax())


def outline(prov: Provenance, size: int = SHOWN_AT) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the output cell's place in a `size` px picture."""
    if prov.cell is None:
        return None
    (h, w), (r, c) = prov.out_grid, prov.cell
    return (math.floor(c * size / w), math.floor(r * size / h), math.ceil((c + 1) * size / w) - 1,
            math.ceil((r + 1) * size / h) - 1)
