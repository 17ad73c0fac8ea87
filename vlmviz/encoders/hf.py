"""Any Hugging Face vision model by hub id or local folder: CLIP and SigLIP vision towers (also inside full
CLIP / SigLIP checkpoints), DINOv2 and ViT. Tokens are the last hidden state; CLIP, DINOv2 and ViT put a CLS
token first, SigLIP has none.

Normalisation and the resize come from the folder's `preprocessor_config.json`, read as JSON: the
transformers image-processor classes want torchvision, which vlmviz does not install. Without that file the
family's published mean/std and the config's image_size are used. Every encoder then resizes the shorter side
and centre-crops (see base.py), so patch heatmaps line up with the centre square the app draws them over.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch

from ..hub import MODEL_LOAD
from .base import VisionEncoder

CLS_TYPES = {"clip": True, "clip_vision_model": True, "dinov2": True, "vit": True,
             "siglip": False, "siglip_vision_model": False}
FAMILY_NORMALISATION = {  # used only when the checkpoint has no preprocessor_config.json
    "clip": ((0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# weights that do not affect last_hidden_state: a checkpoint may leave them out without harm
_UNUSED_WEIGHTS = re.compile(r"(^|\.)(mask_token|pooler|head)(\.|$)")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


class HFVisionEncoder(VisionEncoder):
    def __init__(self, name_or_path: str):
        super().__init__()
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name_or_path, local_files_only=offline())
        kind = config.model_type
        if kind not in CLS_TYPES:
            raise ValueError(f"{name_or_path!r} is a {kind!r} model; vlmviz reads vision tokens from "
                             f"{', '.join(sorted(CLS_TYPES))} models")
        vision_config = getattr(config, "vision_config", config)
        self.model = self._load(name_or_path, kind)
        self.name = str(name_or_path)
        self.cache_id = f"hf:{name_or_path}@{_version(name_or_path, config)}"
        self.hidden_size = vision_config.hidden_size
        self.image_size = vision_config.image_size
        side = vision_config.image_size // vision_config.patch_size
        self.grid = (side, side)
        self.has_cls = CLS_TYPES[kind]
        self.mean, self.std, self.resize = self._preprocessing(name_or_path, kind, self.image_size)
        self.description = (f"{kind} vision model {name_or_path} loaded with Hugging Face transformers; its license "
                            "and training data are those on its model card (vlmviz cannot check them).")
        self.freeze()

    @staticmethod
    def _load(name_or_path: str, kind: str):
        from transformers import CLIPVisionModel, Dinov2Model, SiglipVisionModel, ViTModel

        cls = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel, "siglip": SiglipVisionModel,
               "siglip_vision_model": SiglipVisionModel, "dinov2": Dinov2Model, "vit": ViTModel}[kind]
        kwargs = {"local_files_only": offline(), "output_loading_info": True}
        if kind == "vit":
            kwargs["add_pooling_layer"] = False
        try:
            with MODEL_LOAD:
                model, info = cls.from_pretrained(name_or_path, **kwargs)
        except RuntimeError as err:  # transformers' "size mismatch" report for weights of another shape
            raise ValueError(f"{name_or_path!r}: its weights do not fit {cls.__name__} "
                             f"({str(err).strip().splitlines()[-1][:200]})") from None
        missing = sorted(k for k in info["missing_keys"] if not _UNUSED_WEIGHTS.search(k))
        if missing:  # transformers would silently leave these random
            raise ValueError(f"{name_or_path!r} has no weights for {len(missing)} tensors of {cls.__name__} "
                             f"(e.g. {missing[:3]}); expected a {kind} vision checkpoint")
        return model

    @staticmethod
    def _preprocessing(name_or_path: str, kind: str, image_size: int):
        """(mean, std, shorter-side resize) from preprocessor_config.json, else the family defaults."""
        from transformers.utils import cached_file

        family = "clip" if kind.startswith("clip") else "siglip" if kind.startswith("siglip") else "imagenet"
        mean, std = FAMILY_NORMALISATION[family]
        try:
            path = cached_file(name_or_path, "preprocessor_config.json", local_files_only=offline(),
                               _raise_exceptions_for_missing_entries=False)
        except OSError:
            path = None
        if path is None:
            return mean, std, image_size
        cfg = json.loads(Path(path).read_text())
        size = cfg.get("size")
        resize = size.get("shortest_edge", image_size) if isinstance(size, dict) else image_size
        if not cfg.get("do_center_crop", False):
            resize = image_size  # the processor resizes straight to the input size: no margin to crop away
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"{name_or_path!r}: expected 3-channel image_mean/image_std, got {mean} / {std}")
        return mean, std, max(int(resize), image_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state  # (B, N, D)


def _version(name_or_path: str, config) -> str:
    """The hub commit, or for a local folder a fingerprint of its weight files (name, size, mtime): feature
    caches must not reuse tokens after the weights in the folder are replaced."""
    folder = Path(name_or_path)
    if folder.is_dir():
        h = hashlib.sha1()
        for f in sorted(folder.iterdir()):
            if f.suffix in (".safetensors", ".bin") and f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return "local-" + h.hexdigest()[:12]
    return getattr(config, "_commit_hash", None) or "unknown"
