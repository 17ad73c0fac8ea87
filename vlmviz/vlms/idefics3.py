"""Idefics3 and SmolVLM: a SigLIP-style tower (its last_hidden_state, after post_layernorm) and the connector
pixel_shuffle(scale_factor) -> bias-free Linear: vlmviz's pixel_shuffle, with the linear layer's input columns
permuted at this edge (projectors/pixel_shuffle.py, `idefics3_columns`).

Idefics3 splits a large image into tiles plus a downscaled global view; vlmviz shows one view at the tower's size.
"""
from __future__ import annotations

from ..projectors import build_projector
from ..projectors.pixel_shuffle import idefics3_columns
from .base import HALF_MEAN_STD, load_connector


def open_idefics3(model, config, ctx):
    family = config.model_type
    vc, scale = config.vision_config, config.scale_factor
    tower = model.model.vision_model

    def features(pixels):  # (B, 3, S, S) -> (B, h*w, D_vis); every patch is real (no padding mask)
        return tower(pixel_values=pixels).last_hidden_state

    enc = ctx.tower(tower, features, family=family, hidden_size=vc.hidden_size, image_size=vc.image_size,
                    patch_size=vc.patch_size, has_cls=False, mean_std=HALF_MEAN_STD, what="vision transformer")
    weight = model.model.connector.modality_projection.proj.weight  # (D_txt, s^2 D_vis), Idefics3's column order
    proj = build_projector("pixel_shuffle", vc.hidden_size, weight.shape[0], scale=scale)
    state = {"linear.weight": weight[:, idefics3_columns(vc.hidden_size, scale)]}
    notes = [f"{family} splits large images into tiles plus a global view; vlmviz shows one view at "
             f"{vc.image_size} x {vc.image_size} px"]
    return enc, load_connector(proj, state, family), notes
