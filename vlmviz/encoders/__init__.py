"""Frozen vision encoders: bundled real ones and any Hugging Face vision model.

    from vlmviz.encoders import load_vision_encoder
    enc = load_vision_encoder("vit-s14")          # or "efficientnet-lite0", a hub id, a local folder
    enc = load_vision_encoder("vit-s14@4")        # the same model read after block 4 (encoders/layer.py)
    tokens = enc.encode(images)                   # (B, N, D) float32
"""
from __future__ import annotations

import functools
from pathlib import Path

from ..config import TOKEN_MODES
from .base import VisionEncoder, select_tokens, token_dim
from .layer import LayerEncoder, split_layer

__all__ = ["VisionEncoder", "list_vision_encoders", "load_vision_encoder", "select_tokens", "token_dim",
           "TOKEN_MODES"]


def _vit_s14():
    from .vit_s14 import ViTS14

    return ViTS14()


def _efficientnet():
    from .efficientnet import EfficientNetLite0

    return EfficientNetLite0()


BUNDLED = {"vit-s14": _vit_s14, "efficientnet-lite0": _efficientnet}
# offered next to the bundled encoders: ViT-S/14 after block 4 keeps colors that its output blurs (BENCHMARKS.md)
LAYER_CHOICES = ("vit-s14@4", "vit-s14@4+12")  # block 4; blocks 4 and 12 side by side (caption-describe)


def list_vision_encoders() -> list[str]:
    return [*BUNDLED, *LAYER_CHOICES]


def load_vision_encoder(name_or_path: str, device: str = "cpu") -> VisionEncoder:
    """A frozen encoder by bundled name, Hugging Face id or local folder; loaded once per (name, device).
    'NAME@K' reads it after block K (0 the embeddings, negative from the end, as LLaVA's mm_vision_select_layer)."""
    name_or_path = str(name_or_path)
    base, layer = split_layer(name_or_path)
    if layer is not None and not Path(name_or_path).exists():
        return _layered(base, layer, str(device))  # layer: a tuple of block indices
    return _load(name_or_path, str(device))


@functools.cache
def _layered(base: str, layer: tuple[int, ...], device: str) -> VisionEncoder:
    return LayerEncoder(_load(base, device), layer)


@functools.cache
def _load(name_or_path: str, device: str) -> VisionEncoder:
    if name_or_path in BUNDLED:
        return BUNDLED[name_or_path]().to(device)
    from ..hub import check_loadable
    from .hf import HFVisionEncoder

    check_loadable(name_or_path, "vision encoder", list_vision_encoders())
    try:
        return HFVisionEncoder(name_or_path).to(device)
    except (OSError, ValueError) as err:
        where = "local folder" if Path(name_or_path).exists() else "id or local folder"
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ValueError(f"unknown vision encoder {name_or_path!r}: neither a bundled encoder (not one of "
                         f"{list_vision_encoders()}) nor a loadable Hugging Face {where} ({reason})") from None
