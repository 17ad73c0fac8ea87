"""vlmviz: see, measure and train the connector (modality projector) of vision-language models.

    from vlmviz import Pipeline, build_projector, load_vision_encoder, load_text_space

Names load lazily, so `import vlmviz` stays fast and never imports gradio.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Pipeline": "views.pipeline", "get_pipeline": "views.pipeline",
    "build_projector": "projectors", "list_projectors": "projectors", "Projector": "projectors",
    "load_vision_encoder": "encoders", "list_vision_encoders": "encoders",
    "load_text_space": "text", "list_text_spaces": "text",
    "load_image": "images", "ImageLoadError": "images",
    "train_projector": "train", "TrainResult": "train", "RunResult": "train",
    "save_checkpoint": "checkpoints", "load_checkpoint": "checkpoints",
    "export_llava": "checkpoints", "import_llava_projector": "checkpoints",
    "FeatureCache": "features",
    "Captioner": "caption.captioner", "load_captioner": "caption.captioner", "save_captioner": "caption.captioner",
    "EncoderConfig": "config", "TextConfig": "config", "ProjectorConfig": "config", "TrainConfig": "config",
    "ExperimentConfig": "config", "PRESETS": "config", "preset": "config",
    "load_gallery": "data", "load_dataset": "data", "scene_split": "data",
    "conse_pipeline": "runs.concepts", "top_concepts": "runs.concepts",
    "open_vlm": "vlms",
}
_MODULES = {"metrics": ".eval.metrics", "losses": ".losses"}
__all__ = sorted(_EXPORTS) + sorted(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(_MODULES[name], __name__)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vlmviz' has no attribute {name!r}")
