"""Mistral 3 (Mistral-Small-3.1, and Pixtral-style towers): Pixtral read at vision_feature_layer, then RMSNorm ->
patch merger -> linear_1 -> GELU -> linear_2: vlmviz's mistral3.

Pixtral takes each image at its own size (multiples of the patch size, up to image_size); vlmviz shows one fixed
square (default 448 px, 16 merged tokens per side).
"""
from __future__ import annotations

from ..projectors import build_projector
from .base import CLIP_MEAN_STD, VLMError, check_gelu, load_connector


def open_mistral3(model, config, ctx):
    family = config.model_type
    vc, layer = config.vision_config, config.vision_feature_layer
    check_gelu(config.projector_hidden_act, family)
    if not isinstance(layer, int):
        raise VLMError(f"{family}: vision_feature_layer {layer} is a list, but Mistral 3's connector norms and merges "
                       f"{vc.hidden_size}-wide tokens; vlmviz refuses the list")
    merge = config.spatial_merge_size
    side = ctx.dynamic_side(vc.patch_size, merge, cap=vc.image_size)
    tower = model.model.vision_tower

    def features(pixels):  # (B, 3, S, S) -> (B, h*w, D_vis): Pixtral packs images into one sequence
        B = pixels.shape[0]
        out = tower(pixels, image_sizes=[(side, side)] * B, output_hidden_states=True)
        return out.hidden_states[layer].reshape(B, -1, vc.hidden_size)

    enc = ctx.tower(tower, features, family=family, hidden_size=vc.hidden_size, image_size=side,
                    patch_size=vc.patch_size, has_cls=False, mean_std=CLIP_MEAN_STD, what=f"Pixtral at layer {layer}")
    state = dict(model.model.multi_modal_projector.state_dict())
    proj = build_projector("mistral3", vc.hidden_size, state["linear_2.weight"].shape[0], merge=merge,
                           bias="linear_1.bias" in state, eps=config.text_config.rms_norm_eps)
    notes = [f"{family} takes each image at its own size; vlmviz shows it at {side} x {side} px"]
    return enc, load_connector(proj, state, family), notes
