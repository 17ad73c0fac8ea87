"""A CLIP text tower as the text space: the caption's projected EOS embedding (`text_embeds`).

This is the target of contrastive image-text training (CLIP, and the open-set setting of vlmviz): the space is
shared with CLIP's image tower, so a connector trained into it can be compared with CLIP's own image embeddings.
No package ships CLIP weights offline, so this path serves models the user has (Hub cache or local folder) and
is tested with tiny random configs. A full CLIPModel checkpoint loads as CLIPTextModelWithProjection: the text
keys (`text_model.*`, `text_projection.*`) are the same and the vision tower's weights are skipped.
Nearest words: the first VOCAB_LIMIT whole words of its BPE vocabulary (the '</w>' tokens, in merge order),
each encoded once as a one-word caption and cached. Shape legend: T captions, L tokens, V words, D width.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..hub import MODEL_LOAD
from .base import TextSpace, encoded_vocab, whole_words
from .hf_causal import freeze, offline, source_id

VOCAB_LIMIT = 10_000


class ClipTextSpace(TextSpace):
    kind = "clip-text"

    def __init__(self, name: str, model, tokenizer, description: str, cache_id: str,
                 device: str | torch.device = "cpu"):
        self.name, self.description, self.cache_id = name, description, cache_id
        self.device = torch.device(device)
        self.model, self.tokenizer = freeze(model).to(self.device), tokenizer
        self.dim = int(model.config.projection_dim)
        self.max_length = int(model.config.max_position_embeddings)
        self._vocab_cache: tuple[list[str], torch.Tensor] | None = None

    def _encode_batch(self, captions: list[str]) -> torch.Tensor:
        # CLIP pools at the first EOS token, so padding after it (with EOS or a pad id) never changes the vector;
        # captions longer than the position table are cut, as CLIP itself does.
        batch = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.text_embeds  # (T, D)

    def _vocab(self) -> tuple[list[str], torch.Tensor]:
        if self._vocab_cache is None:
            words = whole_words(self.tokenizer, VOCAB_LIMIT)
            self._vocab_cache = words, encoded_vocab(self, words)  # (V, D)
        return self._vocab_cache


def load_clip_text(name_or_path: str, device: str = "cpu") -> ClipTextSpace:
    """A CLIPModel or CLIPTextModelWithProjection checkpoint (Hub id or folder) -> its projected text embeddings."""
    from transformers import AutoConfig, AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection

    kw = {"local_files_only": offline()}
    config = CLIPTextConfig.from_pretrained(name_or_path, **kw)
    full = AutoConfig.from_pretrained(name_or_path, **kw)
    if full.model_type == "clip":  # the projection width is a top-level field; the text sub-config may disagree
        config.projection_dim = full.projection_dim
    with MODEL_LOAD:
        model, info = CLIPTextModelWithProjection.from_pretrained(name_or_path, config=config,
                                                                  output_loading_info=True, **kw)
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ValueError(f"{name_or_path!r} is not a CLIP text tower with a projection: missing weights "
                         f"{sorted(missing)[:5]}; expected a CLIPModel or CLIPTextModelWithProjection checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kw)
    label = Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path
    description = (f"Projected text embedding ({model.config.projection_dim}-d) of the CLIP text tower of {label}: "
                   "the space CLIP aligns with its images. Nearest words: its whole BPE words, each encoded alone.")
    cache_id = f"clip-text:{name_or_path}@{source_id(name_or_path, model.config)}"
    return ClipTextSpace(label, model, tokenizer, description, cache_id, device)
