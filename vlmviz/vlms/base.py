"""What every VLM adapter returns, and the pieces they share: a frozen vision tower read the way the model reads it,
a strict connector loader, the LM's input-embedding table as the text space.

Shape legend: B images, N tower tokens in raster order (CLS first when kept), D_vis tower width (times the number
of feature layers when several are concatenated), M connector tokens, D_txt LM width, V vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..encoders.base import VisionEncoder
from ..hub import offline
from ..projectors import Projector
from ..text.hf_causal import ContextualLMSpace, TokenMeanSpace, source_id

CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # SigLIP (PaliGemma, Gemma 3, Idefics3)
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # InternViT


class VLMError(ValueError):
    """A VLM that vlmviz cannot open as the model composes it; the message names the family and why."""


class VLMTower(VisionEncoder):
    """A VLM's own vision tower as an encoder: `features` maps normalized pixels (B, 3, S, S) to exactly the tokens
    the model hands its connector, (B, N, D_vis) in raster order, after vision_feature_layer and
    vision_feature_select_strategy."""

    def __init__(self, tower: torch.nn.Module, features: Callable[[torch.Tensor], torch.Tensor], *, name: str,
                 cache_id: str, hidden_size: int, image_size: int, patch_size: int, has_cls: bool, mean_std,
                 description: str):
        super().__init__()
        self.tower = tower  # registered, so .to(device) moves it
        self._features = features
        self.name, self.cache_id, self.description = name, cache_id, description
        self.hidden_size, self.image_size, self.resize = hidden_size, image_size, image_size
        side = image_size // patch_size
        self.grid, self.has_cls, self.patch_size = (side, side), has_cls, patch_size
        self.mean, self.std = (tuple(float(v) for v in mean_std[0]), tuple(float(v) for v in mean_std[1]))
        self.freeze()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.tower.parameters()).dtype
        return self._features(pixel_values.to(dtype)).float()  # (B, N, D_vis)


@dataclass
class OpenedVLM:
    """A real VLM as vlmviz sees it: encoder + connector + text space, composed as the model composes them."""

    family: str  # the transformers model_type
    source: str
    encoder: VLMTower
    projector: Projector
    text: TokenMeanSpace | ContextualLMSpace  # the LM's input table ("embed") or its last hidden states ("context")
    notes: list[str] = field(default_factory=list)  # what vlmviz shows differently from the full model

    def summary(self) -> dict:
        n = self.encoder.num_tokens
        return {"family": self.family, "source": self.source, "connector": self.projector.family,
                "connector_params": self.projector.num_params, "image_size": self.encoder.image_size,
                "grid": list(self.encoder.grid), "has_cls": self.encoder.has_cls, "tower_tokens": n,
                "tokens_per_image": self.projector.num_output_tokens(n), "d_vis": self.encoder.hidden_size,
                "d_txt": self.projector.out_dim, "text_space": self.text.name, "text_kind": self.text.kind,
                "notes": self.notes}


def preprocessor(source: str, default_mean_std) -> tuple[tuple, tuple]:
    """(mean, std) from the folder's preprocessor_config.json (read as JSON: no torchvision), else the family's."""
    from transformers.utils import cached_file

    try:
        path = cached_file(source, "preprocessor_config.json", local_files_only=offline(),
                           _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    if path is None:
        return default_mean_std
    cfg = json.loads(Path(path).read_text())
    mean, std = cfg.get("image_mean", default_mean_std[0]), cfg.get("image_std", default_mean_std[1])
    if len(mean) != 3 or len(std) != 3:
        raise VLMError(f"{source}: expected 3-channel image_mean/image_std in preprocessor_config.json, got "
                       f"{mean} / {std}")
    return tuple(mean), tuple(std)


def select_layers(hidden_states, layer, strategy: str | None) -> torch.Tensor:
    """LLaVA's vision_feature_layer / vision_feature_select_strategy (transformers' LlavaModel.get_image_features):
    an int picks one hidden state, a list concatenates them along the width; "default" drops the CLS token of
    each, "full" keeps it. hidden_states[0] is the embeddings, [-1] the last block."""
    layers = [layer] if isinstance(layer, int) else list(layer)
    picked = [hidden_states[i] for i in layers]  # each (B, 1 + h*w, D)
    if strategy == "default":
        picked = [h[:, 1:] for h in picked]  # (B, h*w, D)
    return torch.cat(picked, dim=-1)  # (B, N, D * len(layers))


def load_connector(projector: Projector, state: dict[str, torch.Tensor], family: str) -> Projector:
    """Fill `projector` from the model's connector weights (already in vlmviz names), strictly: every vlmviz
    parameter must come from the model and every model tensor must be used, shapes equal. Input standardisation
    stays at identity, so the projector computes the model's own function."""
    ours = {k: v for k, v in projector.state_dict().items() if k not in ("input_mean", "input_std")}
    missing, unused = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    wrong = [f"{k}: vlmviz {tuple(ours[k].shape)}, model {tuple(state[k].shape)}"
             for k in ours if k in state and ours[k].shape != state[k].shape]
    if missing or unused or wrong:
        parts = [f"missing {missing}" if missing else "", f"unused {unused}" if unused else "", "; ".join(wrong)]
        raise VLMError(f"{family}: its connector does not fit vlmviz's {projector.family} "
                       f"({'; '.join(p for p in parts if p)})")
    full = {**projector.state_dict(), **{k: v.detach().float() for k, v in state.items()}}
    projector.load_state_dict(full, strict=True)
    return projector.float().eval().requires_grad_(False)


class _NoTokenizer:
    """Shared by both text spaces of a VLM: a folder without a tokenizer (a tiny test model) still gives its table
    or head, whose nearest-token readouts then name ids (<17>); encoding captions says what is missing."""

    def _encode_batch(self, captions):
        if self.tokenizer is None:
            raise VLMError(f"{self.name} has no tokenizer files, so captions cannot be encoded; its embedding table "
                           "still reads projected tokens (nearest token ids)")
        return super()._encode_batch(captions)

    def _vocab(self):
        if self.tokenizer is not None:
            return super()._vocab()
        table = self._table()  # (V, D)
        if self._words is None:
            self._words = [f"<{i}>" for i in range(len(table))]
        return self._words, table.detach().float().cpu()


class VLMTextSpace(_NoTokenizer, TokenMeanSpace):
    """The LM's input-embedding table as the text space: the space the VLM's connector writes into."""

    def __init__(self, name, table, tokenizer, description, cache_id):
        super().__init__(name, table, tokenizer, description, cache_id)
        self.has_vocab = True

    def _table(self):
        return self.table


class DecoderLM:
    """A VLM's language model seen as a causal LM: its decoder (embeddings, layers, final norm) as `base_model` and
    its output head, the parts ContextualLMSpace and the logit and contextual lenses (vlmviz.lenses) read; the tower
    and connector are not in it."""

    def __init__(self, decoder: torch.nn.Module, head: torch.nn.Module):
        self.base_model, self.head, self.config = decoder, head, decoder.config

    def get_input_embeddings(self):
        return self.base_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.head

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base_model.parameters()).dtype

    def parameters(self):
        yield from self.base_model.parameters()
        yield from self.head.parameters()

    def to(self, device):
        self.base_model.to(device)
        self.head.to(device)
        return self


class VLMContextSpace(_NoTokenizer, ContextualLMSpace):
    """Mean over a caption of the VLM's own LM last hidden states (after its final norm): order-aware, as
    smollm2-135m-ctx is for SmolLM2. The LM runs as in a text-only turn: caption tokens alone, causal attention,
    its own embedding scale (Gemma) and positions (Qwen2-VL's M-RoPE reduces to plain positions for text)."""

    def _table(self):
        return self.model.get_output_embeddings().weight

    def _lm_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """PaliGemma's LM is built bidirectional (its prefix-LM reads image and prompt both ways) and is made causal
        only by the mask the full model passes; alone, given no padding, sdpa would let a caption's first token see
        its last. So it gets an explicit causal mask, (T, 1, L, L) additive: a caption read as PaliGemma reads the
        text it writes (the suffix), the same whatever the padding. Full attention covers Gemma 2's sliding window
        for captions shorter than the window (4096 tokens)."""
        if not getattr(self.model.config, "use_bidirectional_attention", False):
            return mask
        length = mask.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()  # (L, L)
        allowed = causal[None] & mask.bool()[:, None, :]  # (T, L, L): earlier real tokens and itself
        dtype = self.model.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]  # (T, 1, L, L)


TEXT_KINDS = {"embed": "embed", "context": "context", "ctx": "context"}  # ctx: as in smollm2-135m-ctx


def text_space(source: str, model, label: str, family: str, kind: str = "embed", device: str = "cpu"):
    """The LM side of an opened VLM as a text space: kind "embed" (its input-embedding table, token mean: the
    space its connector writes into, a bag of words) or "context" (mean of its last hidden states, order-aware)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline())
    except Exception:  # noqa: BLE001 - no tokenizer files: the table alone is still the text space
        tokenizer = None
    if tokenizer is not None and not set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens):
        tokenizer = None  # transformers 5 builds one of special tokens only for a folder without files (Gemma 3: 5)
    version = source_id(source, model.config)
    if TEXT_KINDS[kind] == "context":
        lm = DecoderLM(model.get_decoder(), model.get_output_embeddings()).to(device)
        width = lm.config.hidden_size
        description = (f"Mean over the caption of {label}'s language-model last hidden states (after its final "
                       f"norm, {width}-d): word order and which attribute goes with which object change the vector. "
                       "Its connector writes into the LM's input-embedding space, not this one: this is a target "
                       "for training a connector on its tower, or for comparing captions. Nearest words are read "
                       "through the LM head (logit-lens style).")
        return VLMContextSpace(f"{label} (LM contextual)", lm, tokenizer, description,
                               f"vlm-ctx:{source}@{version}", device)
    table = model.get_input_embeddings().weight.detach().float().clone()  # (V, D_txt)
    scaled = " (Gemma multiplies these rows by sqrt(D) before the LM; cosine readouts do not change)" \
        if "gemma" in family else ""
    description = (f"Input-embedding table of {label}'s language model ({table.shape[0]} x {table.shape[1]}): the "
                   f"space its connector writes into{scaled}; a caption is the mean of its tokens' rows.")
    return VLMTextSpace(f"{label} (LM input embeddings)", table, tokenizer, description, f"vlm-text:{source}@{version}")


@dataclass
class Context:
    """What an adapter needs besides the model: where it came from and what the caller asked for."""

    source: str
    label: str
    version: str
    image_size: int | None = None  # the square side to show dynamic-resolution models at (Qwen2-VL, Mistral 3)

    def tower(self, module, features, *, family: str, hidden_size: int, image_size: int, patch_size: int,
              has_cls: bool, mean_std, what: str) -> VLMTower:
        return VLMTower(module, features, name=f"{self.label} vision tower", hidden_size=hidden_size,
                        cache_id=f"vlm:{family}:{self.source}@{self.version}:{image_size}", image_size=image_size,
                        patch_size=patch_size, has_cls=has_cls, mean_std=preprocessor(self.source, mean_std),
                        description=f"{what} of {self.label} ({family}), read as the model reads it; its license "
                                    "and training data are those on its model card (vlmviz cannot check them).")

    def dynamic_side(self, patch: int, merge: int, cap: int | None = None) -> int:
        """A fixed square side for a model that picks its resolution per image: the caller's, else 16 merged
        tokens per side (448 px at Qwen2-VL's and Mistral 3's 14 px patches x 2 merge), a multiple of patch*merge."""
        unit = patch * merge
        side = self.image_size or 16 * unit
        if cap:
            side = min(side, cap)
        if side % unit:
            raise VLMError(f"image_size {side} is not a multiple of patch {patch} x merge {merge} = {unit}")
        return side


def check_gelu(act: str, family: str) -> None:
    if act not in ("gelu", "gelu_pytorch_tanh_exact"):
        raise VLMError(f"{family}: its connector uses activation {act!r}; vlmviz's connector families use exact "
                       "GELU (projector_hidden_act 'gelu'), so it cannot be loaded exactly")
