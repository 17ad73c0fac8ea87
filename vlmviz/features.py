"""On-disk cache of frozen-encoder tokens: run a dataset through the encoder once, train many times.

Layout: <root>/<encoder cache_id>/manifest.json maps an image content hash to (shard file, row); each shard is a
safetensors file holding one batch of tokens (B, N, D_vis) in float16 (DINOv2/EfficientNet activations fit its
range; half the disk and load time of float32). Shards are written to a temp file and renamed, then the manifest
is replaced atomically, so a crash mid-write leaves at worst an unreferenced temp file, never a bad entry; an entry
whose shard is missing or unreadable is treated as a miss and re-encoded. A changed image has a new hash and a
changed encoder a new cache_id, so each invalidates only its own entries.

Several writers share one folder: the app's training thread, a Map request, a CLI run in another process. Each
manifest update therefore re-reads the file under a lock (a thread lock plus an flock on the folder) and merges
its new entries into what is there. Rewriting a copy read at the start of a long encode erased every entry another
writer had added meanwhile: the cache grew on disk while the manifest forgot it, and runs encoded again.

The cache is bounded (`max_bytes`, default VLMVIZ_CACHE_MAX_GB or 8 GiB): after a write pushes it past the bound,
the least recently used shards (reads touch their mtime) are deleted along with their entries.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoints import atomic_write
from .images import load_image
from .paths import cache_dir

DEFAULT_MAX_GB = 8.0
ENCODE_CHUNK = 8  # images per encoder call: progress (and a cancel) is seen at least this often


class EncodingCancelled(Exception):
    """Raised by a progress callback to stop encoding; what was encoded before it stays cached."""


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


_FOLDER_LOCKS: dict[str, threading.Lock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _locked(folder: Path):
    """One writer at a time per folder: threads of this process, then other processes (flock)."""
    with _FOLDER_LOCKS_GUARD:
        lock = _FOLDER_LOCKS.setdefault(str(folder), threading.Lock())
    with lock, open(folder / ".lock", "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock (Windows, some network disks): the thread lock still holds
            pass
        yield


_CLOCK = [0]
_CLOCK_LOCK = threading.Lock()


def _touch(path: Path) -> None:
    """Mark a shard used now. File systems tick mtime every few ms, so a shard read and one written just after
    could tie; an explicit, strictly increasing time keeps least-recently-used order exact within a process."""
    with _CLOCK_LOCK:
        _CLOCK[0] = max(time.time_ns(), _CLOCK[0] + 1)
        now = _CLOCK[0]
    os.utime(path, ns=(now, now))


def _max_bytes() -> int:
    return int(float(os.environ.get("VLMVIZ_CACHE_MAX_GB", DEFAULT_MAX_GB)) * 1024**3)


class FeatureCache:
    def __init__(self, root: str | Path | None = None, dtype: torch.dtype = torch.float16,
                 max_bytes: int | None = None):
        # VLMVIZ_FEATURES moves only the token cache (tests start it empty without rebuilding converted models)
        env = os.environ.get("VLMVIZ_FEATURES")
        self.root = Path(root) if root is not None else Path(env) if env else cache_dir("features")
        self.dtype = dtype
        self.max_bytes = max_bytes if max_bytes is not None else _max_bytes()
        self.encoder_calls = 0  # batches sent to an encoder by this cache (tests count them)
        self.hits = self.misses = self.evicted = 0

    def _folder(self, encoder) -> Path:
        folder = self.root / re.sub(r"[^A-Za-z0-9_.@-]+", "_", encoder.cache_id)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _manifest(self, folder: Path) -> dict:
        try:
            return json.loads((folder / "manifest.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write_manifest(self, folder: Path, manifest: dict) -> None:
        atomic_write(folder / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest)))

    def tokens(self, encoder, images: Sequence, batch_size: int = 32, progress=None,
               keys: Sequence[str] | None = None) -> torch.Tensor:
        """Tokens (B, N, D_vis) float32 for `images` (paths, bytes or PIL images), encoding only cache misses.
        progress(done, total) is called every few encoded images; raising EncodingCancelled from it stops the
        encoding (the shards written so far stay cached). `keys`: their image_hash values, when already known."""
        keys = list(keys) if keys is not None else [image_hash(im) for im in images]
        folder = self._folder(encoder)
        found = self._read(folder, self._manifest(folder), keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))  # each distinct image once
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        self.hits += len(keys) - sum(k not in found for k in keys)
        self.misses += sum(k not in found for k in keys)
        for start in range(0, len(missing), batch_size):
            chunk, parts = missing[start:start + batch_size], []
            try:
                for sub in range(0, len(chunk), ENCODE_CHUNK):  # small encoder calls: progress and cancel stay prompt
                    pixels = [load_image(images[first[k]]) for k in chunk[sub:sub + ENCODE_CHUNK]]
                    parts.append(encoder.encode(pixels, batch_size=ENCODE_CHUNK))  # (b, N, D_vis)
                    self.encoder_calls += 1
                    if progress is not None:
                        progress(start + sub + len(pixels), len(missing))
            except EncodingCancelled:
                if parts:  # keep what was encoded before the cancel
                    self._store(folder, chunk[:sum(len(p) for p in parts)], torch.cat(parts))
                raise
            found.update(self._store(folder, chunk, torch.cat(parts)))
        if missing:
            self._evict()  # this call's shards are the newest (written or touched now): evicted last
        return torch.stack([found[k] for k in keys]).float()  # (B, N, D_vis)

    def _store(self, folder: Path, keys: list[str], batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Write one shard of tokens (B, N, D_vis) and merge its entries into the manifest as it is now."""
        stored = batch.to(self.dtype).contiguous()
        shard = f"{uuid.uuid4().hex}.safetensors"
        atomic_write(folder / shard, lambda tmp: save_file({"tokens": stored}, tmp))
        _touch(folder / shard)
        with _locked(folder):  # re-read: another writer may have added entries since we started
            manifest = self._manifest(folder)
            manifest.update({k: [shard, row] for row, k in enumerate(keys)})
            self._write_manifest(folder, manifest)
        return {k: stored[row] for row, k in enumerate(keys)}

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
                _touch(folder / shard)  # recently used: last in line for eviction
            except Exception:  # missing or damaged shard: its entries are misses, re-encoded and re-recorded
                continue
        return out

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.safetensors"))

    def _evict(self) -> None:
        """Delete least recently used shards (and their manifest entries) until the cache fits max_bytes."""
        shards = []
        for path in self.root.glob("*/*.safetensors"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                shards.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in shards)
        if total <= self.max_bytes:
            return
        doomed: dict[Path, set[str]] = {}
        for _, size, path in sorted(shards):
            if total <= self.max_bytes:
                break
            doomed.setdefault(path.parent, set()).add(path.name)
            total -= size
        for folder, names in doomed.items():
            with _locked(folder):
                manifest = self._manifest(folder)
                self._write_manifest(folder, {k: v for k, v in manifest.items() if v[0] not in names})
                for name in names:
                    with contextlib.suppress(FileNotFoundError):
                        (folder / name).unlink()
                        self.evicted += 1
