"""On-disk cache of frozen-encoder tokens: run a dataset through the encoder once, train many times.

Layout: <root>/<encoder cache_id>/manifest.json maps an image content hash to (shard file, row); each shard is a
safetensors file holding one batch of tokens (B, N, D_vis) in float16 (DINOv2/EfficientNet activations fit its
range; half the disk and load time of float32). Shards are written to a temp file and renamed, then the manifest
is replaced atomically, so a crash mid-write leaves at worst an unreferenced temp file, never a bad entry; an entry
whose shard is missing or unreadable is treated as a miss and re-encoded. A changed image has a new hash and a
changed encoder a new cache_id, so each invalidates only its own entries.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoints import atomic_write
from .images import load_image
from .paths import cache_dir


def image_hash(image) -> str:
    """Content hash: file bytes for paths and bytes, decoded pixels for PIL images and arrays."""
    h = hashlib.sha1()
    if isinstance(image, (str, Path)):
        h.update(b"file:" + Path(image).read_bytes())
    elif isinstance(image, (bytes, bytearray)):
        h.update(b"file:" + bytes(image))
    else:
        from PIL import Image

        img = image if isinstance(image, Image.Image) else Image.fromarray(image)
        h.update(f"pil:{img.mode}:{img.size}:".encode() + img.tobytes())
    return h.hexdigest()


class FeatureCache:
    def __init__(self, root: str | Path | None = None, dtype: torch.dtype = torch.float16):
        self.root = Path(root) if root is not None else cache_dir("features")
        self.dtype = dtype
        self.encoder_calls = 0  # batches sent to an encoder by this cache (tests count them)
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def _folder(self, encoder) -> Path:
        folder = self.root / re.sub(r"[^A-Za-z0-9_.@-]+", "_", encoder.cache_id)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _manifest(self, folder: Path) -> dict:
        try:
            return json.loads((folder / "manifest.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def tokens(self, encoder, images: Sequence, batch_size: int = 32, progress=None) -> torch.Tensor:
        """Tokens (B, N, D_vis) float32 for `images` (paths, bytes or PIL images), encoding only cache misses.
        progress(done, total) is called as misses are encoded."""
        keys = [image_hash(im) for im in images]
        with self._lock:
            folder = self._folder(encoder)
            manifest = self._manifest(folder)
            found = self._read(folder, manifest, keys)
            missing = [i for i, k in enumerate(keys) if k not in found]
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                batch = encoder.encode([load_image(images[i]) for i in chunk], batch_size=batch_size)  # (b, N, D)
                self.encoder_calls += 1
                shard = f"{uuid.uuid4().hex}.safetensors"
                stored = batch.to(self.dtype).contiguous()
                atomic_write(folder / shard, lambda tmp: save_file({"tokens": stored}, tmp))
                for row, i in enumerate(chunk):
                    manifest[keys[i]] = [shard, row]
                    found[keys[i]] = stored[row]
                atomic_write(folder / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest)))
                if progress is not None:
                    progress(min(start + batch_size, len(missing)), len(missing))
        return torch.stack([found[k] for k in keys]).float()  # (B, N, D_vis)

    def _read(self, folder: Path, manifest: dict, keys: list[str]) -> dict[str, torch.Tensor]:
        by_shard: dict[str, list[tuple[str, int]]] = {}
        for k in set(keys):
            if k in manifest:
                shard, row = manifest[k]
                by_shard.setdefault(shard, []).append((k, row))
        out = {}
        for shard, entries in by_shard.items():
            try:
                with safe_open(str(folder / shard), "pt") as f:
                    tensor = f.get_tensor("tokens")
                out.update({k: tensor[row] for k, row in entries})
            except Exception:  # missing or damaged shard: its entries are misses, re-encoded and re-recorded
                continue
        return out
