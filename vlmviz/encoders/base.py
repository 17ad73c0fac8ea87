"""The frozen vision encoder interface and token selection.

Shape legend: B images, N tokens (CLS first when there is one), D hidden width, h x w patch grid.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import TOKEN_MODES
from ..images import load_image


class VisionEncoder(nn.Module):
    """A frozen image -> tokens model. Subclasses set the fields and implement `forward(pixel_values)`."""

    name: str
    cache_id: str  # stable id for feature caches: name + weights hash
    hidden_size: int
    image_size: int = 224
    grid: tuple[int, int]
    has_cls: bool
    description: str = ""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: int = 224  # shorter side before the centre crop to image_size

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + int(self.has_cls)

    def freeze(self) -> "VisionEncoder":
        self.requires_grad_(False)
        return self.eval()

    def view(self, image) -> Image.Image:
        """The image_size x image_size RGB crop the encoder actually sees (resize shorter side, centre crop)."""
        img = load_image(image)
        w, h = img.size
        scale = self.resize / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
        return img.crop((left, top, left + self.image_size, top + self.image_size))

    def preprocess(self, images: Sequence) -> torch.Tensor:
        """(B, 3, H, W) float tensor in the model's own normalisation."""
        arrays = [np.asarray(self.view(im), dtype=np.float32) / 255.0 for im in images]  # (H, W, 3) each
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, images: Sequence, batch_size: int = 32,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Images (PIL, paths, bytes or arrays) -> tokens (B, N, D) float32 on the CPU."""
        images = list(images)
        if not images:
            raise ValueError("no images to encode")
        out = []
        for start in range(0, len(images), batch_size):
            pixels = self.preprocess(images[start:start + batch_size]).to(self.device)
            with torch.no_grad():
                out.append(self.forward(pixels).float().cpu())  # (b, N, D)
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
        return torch.cat(out)

    def select(self, tokens: torch.Tensor, mode: str) -> torch.Tensor:
        return select_tokens(tokens, self.has_cls, mode)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, tokens={self.num_tokens}x{self.hidden_size}, "
                f"grid={self.grid}, cls={self.has_cls})")


GRID_SIDE = 4  # 'cls+maxgrid': the patch grid max-pooled to GRID_SIDE x GRID_SIDE cells


def token_dim(hidden_size: int, mode: str) -> int:
    """Width of the selected tokens: each pooled view concatenated ('cls+mean+max') adds one hidden_size."""
    if mode == "cls+maxgrid":
        return hidden_size * (1 + GRID_SIDE * GRID_SIDE)
    if mode == "cls+cells":
        return hidden_size
    return hidden_size * (mode.count("+") + 1)


def select_tokens(tokens: torch.Tensor, has_cls: bool, mode: str) -> torch.Tensor:
    """(B, N, D) -> what the projector sees: all (B, N, D), patch (B, N-1, D), cls / mean (B, 1, D),
    cls+mean (B, 1, 2D), mean+max (B, 1, 2D), cls+mean+max (B, 1, 3D), cls+maxgrid (B, 1, 17D), and the same 17
    vectors as a token set, cls+cells (B, 17, D), for connectors that pool them (attnpool). The pooled views are
    the strongest inputs for pooled connectors (DESIGN.md); the max over patches keeps what a small object
    contributes, which the mean dilutes with background (held-out color accuracy, BENCHMARKS.md). cls+maxgrid keeps
    where things are: the patch grid max-pooled to 4 x 4 cells, flattened in reading order after the CLS token,
    which relations between objects need (two-object scenes, BENCHMARKS.md)."""
    if mode not in TOKEN_MODES:
        raise ValueError(f"token selection must be one of {', '.join(TOKEN_MODES)}; got {mode!r}")
    patches = tokens[:, 1:] if has_cls else tokens  # (B, h*w, D)
    if mode == "all":
        return tokens
    if mode == "patch":
        return patches
    if mode == "mean":
        return patches.mean(1, keepdim=True)  # (B, 1, D)
    if mode == "mean+max":
        return torch.cat([patches.mean(1, keepdim=True), patches.amax(1, keepdim=True)], dim=-1)  # (B, 1, 2D)
    if not has_cls:
        raise ValueError(f"token selection {mode!r} needs a CLS token and this encoder has none; "
                         "use 'mean', 'mean+max', 'patch' or 'all'")
    if mode == "cls":
        return tokens[:, :1]  # (B, 1, D)
    if mode in ("cls+maxgrid", "cls+cells"):
        B, N, D = patches.shape
        side = math.isqrt(N)
        if side * side != N or side < GRID_SIDE:
            raise ValueError(f"token selection {mode!r} needs a square patch grid of at least {GRID_SIDE} x "
                             f"{GRID_SIDE}, got {N} patch tokens")
        grid = patches.transpose(1, 2).reshape(B, D, side, side)
        cells = torch.nn.functional.adaptive_max_pool2d(grid, GRID_SIDE).flatten(2).transpose(1, 2)  # (B, 16, D)
        grid_tokens = torch.cat([tokens[:, :1], cells], dim=1)  # (B, 17, D)
        return grid_tokens if mode == "cls+cells" else grid_tokens.reshape(B, 1, -1)  # (B, 17, D) or (B, 1, 17D)
    views = [tokens[:, :1], patches.mean(1, keepdim=True)]
    if mode == "cls+mean+max":
        views.append(patches.amax(1, keepdim=True))
    return torch.cat(views, dim=-1)  # (B, 1, 2D) or (B, 1, 3D)
