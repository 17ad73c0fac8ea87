"""Open a real VLM (local folder or Hugging Face id) as encoder + connector + text space, as the model composes them.

    from vlmviz.vlms import open_vlm
    vlm = open_vlm("path/to/llava-1.5-7b-hf")      # or a hub id already in the Hugging Face cache
    tokens = vlm.projector(vlm.encoder.encode([image]))   # (1, M, D_txt): the model's own image features

Each family's adapter reads the config, keeps the vision tower (read at vision_feature_layer with
vision_feature_select_strategy), loads the connector weights strictly into the matching vlmviz family and takes the
LM's input-embedding table as the text space (text="embed"; the rest of the LM is dropped) or the mean of the LM's
last hidden states over a caption (text="context": order-aware; the LM's decoder and head are kept).
tests/test_vlms.py checks, for every family, that the result equals the model's get_image_features within 1e-5, and
that the contextual space equals the whole VLM run on each caption.
"""
from __future__ import annotations

import functools
from pathlib import Path

from .base import TEXT_KINDS, Context, OpenedVLM, VLMError

# model_type -> (transformers class, adapter module, adapter function)
SUPPORTED = {
    "llava": ("LlavaForConditionalGeneration", "llava", "open_llava"),
    "llava_next": ("LlavaNextForConditionalGeneration", "llava", "open_llava"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "qwen2_vl", "open_qwen2_vl"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "qwen2_vl", "open_qwen2_vl"),
    "internvl": ("InternVLForConditionalGeneration", "internvl", "open_internvl"),
    "idefics3": ("Idefics3ForConditionalGeneration", "idefics3", "open_idefics3"),
    "smolvlm": ("SmolVLMForConditionalGeneration", "idefics3", "open_idefics3"),
    "paligemma": ("PaliGemmaForConditionalGeneration", "gemma", "open_paligemma"),
    "gemma3": ("Gemma3ForConditionalGeneration", "gemma", "open_gemma3"),
    "mistral3": ("Mistral3ForConditionalGeneration", "mistral3", "open_mistral3"),
}
# families people ask about that vlmviz cannot show as one encoder -> connector -> LM-input path, and why
REFUSED = {
    "mllama": "Llama 3.2 Vision feeds the LM through cross-attention layers, not connector tokens in its input",
    "idefics2": "Idefics2's connector is a perceiver resampler with the LM's own RMSNorm, not yet a vlmviz family",
    "llava_onevision": "LLaVA-OneVision's anyres-max tiling and bilinear pooling are not implemented",
    "qwen3_vl": "Qwen3-VL adds DeepStack features from several tower layers into LM layers, beyond one connector",
    "qwen3_vl_moe": "Qwen3-VL adds DeepStack features from several tower layers into LM layers, beyond one connector",
    "blip-2": "BLIP-2's Q-Former has no vlmviz adapter yet (vlmviz's qformer family is not weight-compatible)",
    "instructblip": "InstructBLIP's Q-Former reads the prompt too, so its visual tokens depend on the text",
}


def list_vlm_families() -> list[str]:
    return list(SUPPORTED)


def open_vlm(name_or_path: str, device: str = "cpu", image_size: int | None = None,
             text: str = "embed") -> OpenedVLM:
    """A real VLM from a local folder or a Hugging Face id, loaded once per (source, device, image_size, text).
    image_size: the square side to show dynamic-resolution families (Qwen2-VL, Mistral 3) at.
    text: "embed", the LM's input-embedding table (token mean, a bag of words: the space the connector writes
    into), or "context" (alias "ctx"), the mean of the LM's last hidden states over a caption (order-aware)."""
    if text not in TEXT_KINDS:
        raise ValueError(f"text must be one of {', '.join(TEXT_KINDS)}; got {text!r}")
    return _open(str(name_or_path), str(device), image_size, TEXT_KINDS[text])


@functools.cache
def _open(source: str, device: str, image_size: int | None, text_kind: str = "embed") -> OpenedVLM:
    import importlib

    import transformers
    from transformers import AutoConfig

    from ..hub import MODEL_LOAD, cached, hub_reachable, offline
    from ..text.hf_causal import source_id

    if not Path(source).exists() and not cached(source) and (offline() or not hub_reachable()):
        why = "HF_HUB_OFFLINE is set" if offline() else "huggingface.co cannot be reached"
        raise VLMError(f"VLM {source!r} is neither a local folder nor in the Hugging Face cache ({why}); pass the "
                       "folder of a saved model")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline())
    except (OSError, ValueError) as err:
        raise VLMError(f"{source!r}: no readable VLM config ({str(err).strip().splitlines()[0][:200]})") from None
    kind = config.model_type
    if kind in REFUSED:
        raise VLMError(f"{source!r} is a {kind} model, which vlmviz cannot open: {REFUSED[kind]}")
    if kind not in SUPPORTED:
        raise VLMError(f"{source!r} is a {kind!r} model; vlmviz opens {', '.join(SUPPORTED)}")
    class_name, module, function = SUPPORTED[kind]
    cls = getattr(transformers, class_name)
    try:
        with MODEL_LOAD:
            model, info = cls.from_pretrained(source, local_files_only=offline(), output_loading_info=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise VLMError(f"{source!r}: its weights do not load into {class_name} "
                       f"({str(err).strip().splitlines()[-1][:200]})") from None
    missing = [k for k in info.get("missing_keys", []) if "language_model" not in k and "lm_head" not in k
               and "text_model" not in k]
    if missing:  # transformers would leave them random
        raise VLMError(f"{source!r}: no weights for {len(missing)} vision / connector tensors of {class_name} "
                       f"(e.g. {sorted(missing)[:3]})")
    model.eval().requires_grad_(False)
    label = Path(source).name if Path(source).is_dir() else source
    ctx = Context(source, label, source_id(source, config), image_size)
    adapter = getattr(importlib.import_module(f".{module}", __name__), function)
    encoder, projector, notes = adapter(model, config, ctx)
    from .base import text_space

    text = text_space(source, model, label, kind, text_kind, device)
    del model  # the tower lives on in the encoder; the LM's table (embed) or decoder and head (context) in the text
    return OpenedVLM(kind, source, encoder.to(device), projector.to(device), text, notes)


__all__ = ["OpenedVLM", "VLMError", "SUPPORTED", "REFUSED", "TEXT_KINDS", "list_vlm_families", "open_vlm"]
