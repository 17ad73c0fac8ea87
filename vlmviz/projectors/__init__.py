"""Connector families, one file each, registered by name. `build_projector(name, in_dim, out_dim, **options)`."""
from . import (attnpool, cabstractor, conse, gemma3, internvl, ldp, linear, lowrank, mistral3, mlp,  # noqa: F401
               moe, multidepth, ovis, pixel_shuffle, qformer, qwen2_merger, resampler, residual, wordslots)
from .base import Projector, build_projector, list_projectors, register

__all__ = ["Projector", "build_projector", "list_projectors", "register"]
