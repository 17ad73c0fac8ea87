"""InternVL (transformers' port, `InternVLForConditionalGeneration`): InternViT read at vision_feature_layer (-1 is
its last_hidden_state, after the tower's final norm; other indices its hidden_states), the CLS token dropped for
strategy "default", then pixel_shuffle(downsample_ratio) and the projector: vlmviz's internvl family.

InternVL tiles a large image into 448 px crops plus a thumbnail (crop_to_patches); vlmviz shows one view, the
whole image at the tower's input size (the thumbnail InternVL adds).
"""
from __future__ import annotations

from ..projectors import build_projector
from .base import IMAGENET_MEAN_STD, VLMError, check_gelu, load_connector


def open_internvl(model, config, ctx):
    family = config.model_type
    vc, layer, strategy = config.vision_config, config.vision_feature_layer, config.vision_feature_select_strategy
    check_gelu(config.projector_hidden_act, family)
    if not isinstance(layer, int):
        raise VLMError(f"{family}: vision_feature_layer {layer} is a list; InternVL reads one layer "
                       "(transformers' InternVLModel indexes hidden_states with it), so vlmviz refuses the list")
    scale = round(1 / config.downsample_ratio)
    if abs(1 / scale - config.downsample_ratio) > 1e-9:
        raise VLMError(f"{family}: downsample_ratio {config.downsample_ratio} is not 1 / an integer")
    tower = model.model.vision_tower

    def features(pixels):  # (B, 3, S, S) -> (B, N, D_vis)
        out = tower(pixel_values=pixels, output_hidden_states=layer != -1)
        x = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return x[:, 1:] if strategy == "default" else x

    size = vc.image_size if isinstance(vc.image_size, int) else vc.image_size[0]
    patch = vc.patch_size if isinstance(vc.patch_size, int) else vc.patch_size[0]
    if strategy != "default":
        raise VLMError(f"{family}: strategy {strategy!r} keeps the CLS token, and InternVL's pixel_shuffle then "
                       "needs a square number of tokens it cannot have; vlmviz refuses it")
    enc = ctx.tower(tower, features, family=family, hidden_size=vc.hidden_size, image_size=size, patch_size=patch,
                    has_cls=False, mean_std=IMAGENET_MEAN_STD, what=f"InternViT at layer {layer}")
    state = model.model.multi_modal_projector.state_dict()
    proj = build_projector("internvl", vc.hidden_size, state["linear_2.weight"].shape[0], scale=scale)
    notes = ["InternVL tiles large images into crops plus a thumbnail; vlmviz shows one view at "
             f"{size} x {size} px (the thumbnail)"]
    return enc, load_connector(proj, dict(state), family), notes
