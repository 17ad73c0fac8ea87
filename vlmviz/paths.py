"""Where vlmviz keeps converted weights, tokenizers and feature caches.

Everything derived from a bundled model (a safetensors copy of a GGUF, a tokenizer built once) lives under one
cache folder so a second start is fast; `VLMVIZ_CACHE` moves it (tests point it at a temp dir when they need to).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("VLMVIZ_CACHE", Path.home() / ".cache" / "vlmviz"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha1(path: str | Path) -> str:
    """Content hash of a file, read in 4 MiB blocks (weights, checkpoints, a library's photos)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
