"""The frozen text side: captions -> vectors, plus the two questions the UI asks of any text space.

Every space answers `encode` (captions -> (T, D) float32 on the CPU, not normalized: losses and metrics
normalize when they need to), `nearest_tokens` (which vocabulary words sit closest to a vector, by cosine) and
`collisions` (which captions the space cannot tell apart). Subclasses only say how one batch becomes vectors
and where their vocabulary matrix comes from.

Shape legend: T captions, L tokens per caption (padded), V vocabulary entries, K query vectors, D text width.
"""
from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import torch

COLLISION_TOL = 1e-3  # cosine above 0.999 counts as "the same vector": no ranking can rely on the difference


def check_captions(captions: Sequence[str]) -> list[str]:
    """Reject what no space can encode, naming the bad caption, before any model runs."""
    if isinstance(captions, str):
        raise ValueError("captions must be a sequence of strings, got one str; wrap it in a list")
    captions = list(captions)
    if not captions:
        raise ValueError("no captions given; expected at least one non-empty caption")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise ValueError(f"caption {i} is {type(c).__name__} {c!r}; expected a non-empty str")
        if not c.strip():
            raise ValueError(f"caption {i} is empty; expected non-empty text")
    return captions


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: x (T, L, D), mask (T, L) of 0/1 -> (T, D); padding never enters the mean."""
    m = mask.to(x.dtype).unsqueeze(-1)  # (T, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # (T, D)


def readable_token(text: str) -> str:
    """Display form of one decoded vocabulary entry: surrounding whitespace trimmed (so the word-initial BPE token
    'Ġcat', decoded ' cat', reads "cat"), pure-whitespace tokens shown escaped ('\\n', ' ') so they stay visible."""
    stripped = text.strip()
    return stripped if stripped else repr(text)[1:-1] or "''"


def save_tensor_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write safetensors to a temp file in the same folder, then rename: a crash never leaves a half file."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class TextSpace(ABC):
    """A frozen caption encoder. Attributes are plain fields so the UI can list them without loading more."""

    name: str
    dim: int
    kind: str  # "token-mean" | "contextual" | "sentence" | "clip-text"
    description: str
    cache_id: str  # stable across processes: used to key feature and vocabulary caches
    has_vocab: bool = True
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def _encode_batch(self, captions: list[str]) -> torch.Tensor:
        """One batch of already-checked captions -> (T, D) on any device/dtype."""

    def _vocab(self) -> tuple[list[str], torch.Tensor]:
        """Readable words and their vectors (V, D) in this space; only spaces with has_vocab implement it."""
        raise ValueError(f"text space {self.name!r} has no vocabulary readout; use a space with has_vocab=True")

    def encode(self, captions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Captions -> (T, D) float32 on the CPU, not normalized."""
        captions = check_captions(captions)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # each distinct caption once: class-style data repeats captions, and a repeated caption must get the
        # bit-identical vector (batches padded to other lengths can differ in the last bits), which is what
        # metrics.caption_ids and the trainer's false-negative groups rely on
        unique = list(dict.fromkeys(captions))
        out = []
        with torch.no_grad():
            for i in range(0, len(unique), batch_size):
                out.append(self._encode_batch(unique[i:i + batch_size]).float().cpu())  # (b, D)
        vectors = torch.cat(out)  # (U, D)
        if len(unique) == len(captions):
            return vectors
        index = {c: i for i, c in enumerate(unique)}
        return vectors[torch.tensor([index[c] for c in captions])]  # (T, D)

    def nearest_tokens(self, vectors: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """For each vector (K, D) the k vocabulary words of highest cosine similarity, best first.

        Words are shown in readable form (see `readable_token`); a word whose several tokens trim to the same text
        appears once, with its best score, so a row holds k distinct words.
        """
        if vectors.ndim == 1:
            vectors = vectors.unsqueeze(0)  # (1, D)
        if vectors.ndim != 2 or vectors.shape[-1] != self.dim:
            raise ValueError(f"nearest_tokens expects vectors of shape (K, {self.dim}) for {self.name!r}, "
                             f"got {tuple(vectors.shape)}")
        words, table = self._vocab()  # (V, D)
        if not hasattr(self, "_vocab_norms"):
            self._vocab_norms = table.float().norm(dim=-1).clamp_min(1e-12)  # (V,)
        q = torch.nn.functional.normalize(vectors.detach().float().cpu(), dim=-1)  # (K, D)
        sims = (q @ table.float().T) / self._vocab_norms  # (K, V)
        # Trimmed display forms repeat (' cat' and 'cat' both read "cat"): keep each word's best entry only.
        scores, idx = sims.topk(min(4 * k + 8, len(words)), dim=-1)  # (K, k')
        out = []
        for row_i, row_s in zip(idx.tolist(), scores.tolist()):
            best: dict[str, float] = {}
            for j, s in zip(row_i, row_s):
                best.setdefault(words[j], s)
            out.append(list(best.items())[:k])
        return out

    def collisions(self, captions: Sequence[str]) -> list[list[int]]:
        """Groups (size >= 2) of caption indices this space maps to the same direction (cosine > 0.999).

        A bag-of-words space gives "a red circle left of a blue square" and its attribute swap one vector: no
        projector can then learn which is which, and the UI says so.
        """
        v = torch.nn.functional.normalize(self.encode(captions).double(), dim=-1)  # (T, D)
        same = (v @ v.T) > 1.0 - COLLISION_TOL  # (T, T)
        groups, seen = [], torch.zeros(len(v), dtype=torch.bool)
        for i in range(len(v)):
            if seen[i]:
                continue
            members = (same[i] & ~seen).nonzero().flatten()
            seen[members] = True
            if len(members) >= 2:
                groups.append(members.tolist())
        return groups

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, dim={self.dim})"


def vocab_strings(tokenizer, size: int) -> list[str]:
    """Readable form of token ids 0..size-1, decoded through the tokenizer (bytes -> text, 'Ġ' -> space)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast path: one Rust call for the whole vocabulary
        texts = backend.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
    else:
        texts = [tokenizer.decode([i]) for i in range(size)]
    return [readable_token(t) for t in texts]


def whole_words(tokenizer, limit: int | None = None) -> list[str]:
    """Whole ASCII words of a tokenizer's vocabulary, in id order (frequency order for WordPiece and CLIP BPE).

    Skips special and [unused*] entries and word pieces: '##ing' (WordPiece) and BPE tokens that do not start a
    word. CLIP marks word ends with '</w>', byte-level BPE marks word starts with 'Ġ', SentencePiece with '▁'.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    if any(t.endswith("</w>") for t in tokens):
        candidates = [t[:-4] for t in tokens if t.endswith("</w>")]
    elif any(t.startswith(("Ġ", "▁")) for t in tokens):
        candidates = [t[1:] for t in tokens if t.startswith(("Ġ", "▁"))]
    else:
        candidates = [t for t in tokens if not t.startswith("##")]
    words, seen = [], set()
    for w in candidates:
        if w.isascii() and w.isalpha() and w.lower() not in seen:
            seen.add(w.lower())
            words.append(w)
    return words[:limit] if limit else words


def encoded_vocab(space: TextSpace, words: list[str], batch_size: int = 256) -> torch.Tensor:
    """Vectors (V, D) of `words` encoded as one-word captions by `space`, computed once and cached on disk.

    The cache file is keyed by the space's cache_id and a hash of the word list, so a changed model or list
    re-encodes instead of silently reusing stale vectors.
    """
    import hashlib
    import re

    from safetensors.torch import load_file

    from ..paths import cache_dir

    digest = hashlib.sha1("\n".join(words).encode()).hexdigest()[:12]
    safe_id = re.sub(r"[^A-Za-z0-9_.@-]+", "_", space.cache_id)
    path = cache_dir("text", "vocab") / f"{safe_id}-{digest}.safetensors"
    if path.exists():
        try:
            table = load_file(str(path))["vectors"]
            if table.shape == (len(words), space.dim):
                return table
        except Exception:  # unreadable (e.g. disk full mid-write elsewhere): recompute below
            pass
    table = space.encode(words, batch_size=batch_size)  # (V, D)
    save_tensor_atomic(path, {"vectors": table})
    return table
