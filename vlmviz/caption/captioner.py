"""A small VLM you can save and load: frozen vision encoder -> trained connector -> frozen causal LM that writes.

A captioning checkpoint is an ordinary projector checkpoint (checkpoints.py) whose config says loss 'caption' and
carries a "caption" section: mode (prefix | xattn), the LM's name, the prompt, and for xattn the block spacing,
count and heads; the gated cross-attention blocks are saved beside the projector as the extra group 'xattn'.
Loading rebuilds the VisualLM around the named LM and checks every width and tensor shape against it.

Shape legend: B images, N encoder tokens, M visual tokens, D LM width.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .model import VisualLM
from ..checkpoints import CheckpointError, load_checkpoint, load_module_state, read_config, read_extra, save_checkpoint
from ..config import CaptionConfig
from ..encoders import load_vision_encoder, select_tokens, token_dim
from ..images import load_image
from ..projectors import Projector

BUNDLED_LM = "smollm2-135m"
NOT_A_CAPTIONER = ("{name} was trained with loss {loss!r}, not 'caption': describing images needs a connector "
                   "trained through the frozen LM, e.g. python -m vlmviz train --loss caption --pooling none "
                   "--projector resampler --option num_queries=8 --tokens patch --out captioner.safetensors")


def lm_name(text: str) -> str:
    """The causal LM behind a text-space name: the SmolLM2 spaces share one LM; a folder is kept absolute."""
    if text.startswith(BUNDLED_LM):
        return BUNDLED_LM
    path = Path(text).expanduser()
    return str(path.resolve()) if path.is_dir() else text


def load_caption_lm(name: str = BUNDLED_LM):
    """(frozen causal LM, tokenizer): the bundled SmolLM2-135M-Instruct, or a Hugging Face causal LM by local
    folder or cached id; loaded once per process."""
    return _load_lm(lm_name(name))


@functools.cache
def _load_lm(name: str):
    if name == BUNDLED_LM:
        from ..text import load_smollm2_lm

        return load_smollm2_lm()
    if name in ("minilm-l6",):
        raise ValueError(f"{name} is a sentence encoder; the caption loss needs a causal LM ({BUNDLED_LM} or a "
                         "Hugging Face causal LM folder)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..hub import MODEL_LOAD
    from ..text.hf_causal import freeze, offline

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline())
        with MODEL_LOAD:
            model = AutoModelForCausalLM.from_pretrained(name, local_files_only=offline())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load {name!r} as a causal LM: expected {BUNDLED_LM} or a Hugging Face causal LM "
                         f"folder / cached id ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    return freeze(model.eval()), tokenizer


def build_vlm(lm: str = BUNDLED_LM, caption: CaptionConfig | None = None) -> VisualLM:
    """A VisualLM around the (shared, frozen) LM; xattn blocks are fresh, their gates at zero."""
    caption = caption or CaptionConfig()
    model, tokenizer = load_caption_lm(lm)
    return VisualLM(model, tokenizer, caption.mode, caption.every, caption.prompt)


def save_captioner(path: str | Path, projector: Projector, vlm: VisualLM, lm: str, **meta) -> Path:
    """A checkpoint of a caption-trained connector (+ its cross-attention blocks in xattn mode)."""
    if projector.out_dim != vlm.dim:
        raise CheckpointError(f"projector outputs D={projector.out_dim} but the LM is {vlm.dim}-d")
    caption = {"mode": vlm.mode, "lm": lm_name(lm), "prompt": vlm.prompt, "every": vlm.every,
               "blocks": len(vlm.xattn), "heads": vlm.heads, "lm_dim": vlm.dim}
    extra = {"xattn": vlm.xattn.state_dict()} if vlm.mode == "xattn" else None
    return save_checkpoint(path, projector, extra=extra, **{**meta, "loss": "caption", "pooling": "none",
                                                            "caption": caption})


def caption_config(path: str | Path) -> dict:
    """The checkpoint's config, after checking it was trained with the caption loss."""
    config = read_config(path)
    if config.get("loss") != "caption" or "caption" not in config:
        raise CheckpointError(NOT_A_CAPTIONER.format(name=Path(path).name, loss=config.get("loss") or "none"))
    return config


@dataclass
class Captioner:
    encoder: object  # VisionEncoder
    tokens: str  # token selection the connector reads
    projector: Projector
    vlm: VisualLM
    config: dict = field(default_factory=dict)

    def visual(self, images: Sequence) -> torch.Tensor:
        """Images -> visual tokens (B, M, D) for the LM."""
        pictures = [load_image(im) for im in images]  # each bad file raises ImageLoadError naming it
        vis = select_tokens(self.encoder.encode(pictures), self.encoder.has_cls, self.tokens)  # (B, N', D_vis)
        with torch.no_grad():
            return self.projector(vis.float())  # (B, M, D)

    def describe(self, images: Sequence, **generation) -> list[str]:
        """One caption per image; `generation`: max_new_tokens, sample, temperature, top_p, seed."""
        return self.vlm.generate(self.visual(images), **generation)

    def text_only(self, **generation) -> str:
        return self.vlm.generate(None, **generation)[0]

    def close(self) -> None:
        self.vlm.close()


def load_captioner(path: str | Path) -> Captioner:
    """Rebuild encoder -> connector -> LM from a caption checkpoint; widths and block shapes are checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (expected a .safetensors file trained with --loss "
                                "caption)")
    config = caption_config(path)
    spec = config["caption"]
    caption = CaptionConfig(spec.get("mode", "prefix"), spec.get("every", 4), spec.get("prompt", CaptionConfig.prompt))
    vlm = build_vlm(spec.get("lm", BUNDLED_LM), caption)
    try:
        encoder = load_vision_encoder(config.get("encoder") or "vit-s14")
        tokens = config.get("tokens") or "patch"
        projector, _ = load_checkpoint(path, token_dim(encoder.hidden_size, tokens), vlm.dim,
                                       config.get("encoder"), f"the LM {spec.get('lm')}")
        if caption.mode == "xattn":
            if spec.get("blocks") not in (None, len(vlm.xattn)):
                raise CheckpointError(f"{path.name}: expected {spec['blocks']} cross-attention blocks, the LM gives "
                                      f"{len(vlm.xattn)} (one before every {caption.every}-th layer)")
            load_module_state(vlm.xattn, read_extra(path, "xattn"), f"{path.name} cross-attention blocks")
    except BaseException:
        vlm.close()  # leave the shared LM as it was
        raise
    return Captioner(encoder, tokens, projector.eval(), vlm.eval(), config)
