"""Where vlmviz keeps converted weights, tokenizers and feature caches.

Everything derived from a bundled model (a safetensors copy of a GGUF, a tokenizer built once) lives under one
cache folder so a second start is fast; `VLMVIZ_CACHE` moves it (tests point it at a temp dir when they need to).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("VLMVIZ_CACHE", Path.home() / ".cache" / "vlmviz"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
