"""Frozen text spaces: where a connector's output is compared with captions.

    from vlmviz.text import list_text_spaces, load_text_space
    space = load_text_space("smollm2-135m")         # bundled name, Hub id, or local folder
    vecs = space.encode(["a red circle", "a blue square"])   # (T, D) float32, not normalized

Bundled: "smollm2-135m" (LLM input-embedding mean, a bag of words), "smollm2-135m-ctx" (mean of the same LM's
last hidden states, order-aware), "minilm-l6" (sentence embedding). Any other name is tried as a Hugging Face
model: a sentence-transformers folder (modules.json) -> sentence space, a CLIP checkpoint -> its text tower, a
causal LM -> the mean of its input embeddings.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from .base import TextSpace
from .clip_text import ClipTextSpace, load_clip_text
from .hf_causal import ContextualLMSpace, TokenMeanSpace, load_causal_token_mean, offline
from .sentence import SentenceSpace, load_sentence_space, minilm_l6
from .smollm2 import load_smollm2_lm, smollm2_contextual, smollm2_token_mean

__all__ = ["TextSpace", "TokenMeanSpace", "ContextualLMSpace", "SentenceSpace", "ClipTextSpace",
           "list_text_spaces", "load_text_space", "load_smollm2_lm"]

BUNDLED: dict[str, Callable[[str], TextSpace]] = {
    "smollm2-135m": smollm2_token_mean,
    "smollm2-135m-ctx": smollm2_contextual,
    "minilm-l6": minilm_l6,
}
CLIP_TYPES = ("clip", "clip_text_model")


def list_text_spaces() -> list[str]:
    return list(BUNDLED)


def load_text_space(name_or_path: str, device: str = "cpu") -> TextSpace:
    """A frozen text space by bundled name, Hugging Face id or local folder; loaded once per (name, device)."""
    return _load(str(name_or_path), str(device))


@functools.cache
def _load(name_or_path: str, device: str) -> TextSpace:
    if name_or_path in BUNDLED:
        return BUNDLED[name_or_path](device)
    from ..hub import check_loadable

    check_loadable(name_or_path, "text space", list_text_spaces())
    return _load_hf(name_or_path, device)


def _has_file(name_or_path: str, filename: str) -> bool:
    if Path(name_or_path).is_dir():
        return (Path(name_or_path) / filename).is_file()
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(name_or_path, filename, local_files_only=offline())
        return True
    except Exception:  # not a repo id, not cached offline, or no such file: all mean "not this kind"
        return False


def _load_hf(name_or_path: str, device: str) -> TextSpace:
    """Detect the kind of model from its files and config, then load it through the matching space."""
    if _has_file(name_or_path, "modules.json"):
        return load_sentence_space(name_or_path, device)
    tried = "a sentence-transformers model (no modules.json)"
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=offline())
    except Exception as e:  # noqa: BLE001 - reported to the user below
        raise ValueError(f"unknown text space {name_or_path!r}: expected one of {list_text_spaces()} or a Hugging "
                         f"Face model id/folder; tried {tried} and a transformers config "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if config.model_type in CLIP_TYPES:
        return load_clip_text(name_or_path, device)
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return load_causal_token_mean(name_or_path, device)
    raise ValueError(f"{name_or_path!r} is a {config.model_type!r} model, which vlmviz cannot use as a text space; "
                     f"expected one of {list_text_spaces()}, a sentence-transformers model, a CLIP checkpoint or a "
                     f"causal LM ({len(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)} model types, e.g. llama, qwen2, gpt2)")
