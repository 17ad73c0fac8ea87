"""Connector families, one file each, registered by name. `build_projector(name, in_dim, out_dim, **options)`."""
from . import (attnpool, cabstractor, conse, linear, lowrank, mlp, moe, pixel_shuffle, qformer,  # noqa: F401
               resampler, residual)
from .base import Projector, build_projector, list_projectors, register

__all__ = ["Projector", "build_projector", "list_projectors", "register"]
