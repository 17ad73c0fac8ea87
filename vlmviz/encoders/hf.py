"""Any Hugging Face vision model by hub id or local folder: CLIP and SigLIP vision towers (also inside full
CLIP / SigLIP checkpoints), DINOv2 and ViT. Tokens are the last hidden state; CLIP, DINOv2 and ViT put a CLS
token first, SigLIP has none."""
from __future__ import annotations

import os

import torch

from .base import VisionEncoder

CLS_TYPES = {"clip": True, "clip_vision_model": True, "dinov2": True, "vit": True,
             "siglip": False, "siglip_vision_model": False}


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
        self.cache_id = f"hf:{name_or_path}@{getattr(config, '_commit_hash', None) or 'local'}"
        self.hidden_size = vision_config.hidden_size
        self.image_size = vision_config.image_size
        side = vision_config.image_size // vision_config.patch_size
        self.grid = (side, side)
        self.has_cls = CLS_TYPES[kind]
        self.resize = self.image_size
        self.mean, self.std = self._normalisation(name_or_path, kind)
        self.description = f"{kind} vision model {name_or_path} from Hugging Face transformers"
        self.freeze()

    @staticmethod
    def _load(name_or_path: str, kind: str):
        from transformers import (AutoModel, CLIPVisionModel, Dinov2Model, SiglipVisionModel, ViTModel)

        cls = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel, "siglip": SiglipVisionModel,
               "siglip_vision_model": SiglipVisionModel, "dinov2": Dinov2Model, "vit": ViTModel}.get(kind, AutoModel)
        kwargs = {"local_files_only": offline()}
        if kind == "vit":
            kwargs["add_pooling_layer"] = False
        return cls.from_pretrained(name_or_path, **kwargs)

    @staticmethod
    def _normalisation(name_or_path: str, kind: str):
        try:
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(name_or_path, local_files_only=offline())
            return tuple(proc.image_mean), tuple(proc.image_std)
        except Exception:  # noqa: BLE001 - no saved processor: the family's published defaults
            if kind.startswith("clip"):
                return (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
            if kind.startswith("siglip"):
                return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state  # (B, N, D)
