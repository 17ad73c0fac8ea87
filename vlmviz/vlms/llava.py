"""LLaVA-1.5 (`LlavaForConditionalGeneration`) and LLaVA-NeXT (`LlavaNextForConditionalGeneration`): a CLIP (or
SigLIP) tower read at vision_feature_layer (an int, or a list whose hidden states are concatenated), the CLS token
dropped ("default") or kept ("full"), then multi_modal_projector linear_1 -> GELU -> linear_2: vlmviz's mlp2x_gelu.

LLaVA-NeXT: shown is the base view only, the whole image resized to the tower's input size, which is the first
block of tokens LLaVA-NeXT gives its LM; its anyres high-resolution tiles, their unpadding and the image_newline
tokens are not shown.
"""
from __future__ import annotations

import torch

from ..projectors import build_projector
from .base import CLIP_MEAN_STD, HALF_MEAN_STD, VLMError, check_gelu, load_connector, select_layers

ANYRES_NOTE = ("LLaVA-NeXT: shown is the base view (the whole image at the tower's input size), the first block of "
               "tokens the LM gets; the anyres high-resolution tiles, their unpadding and image_newline tokens are not")


def open_llava(model, config, ctx):
    family = config.model_type
    vc, tc = config.vision_config, config.text_config
    layer, strategy = config.vision_feature_layer, config.vision_feature_select_strategy
    check_gelu(config.projector_hidden_act, family)
    if "siglip" in vc.model_type and strategy == "default":
        raise VLMError(f"{family} with a SigLIP tower and strategy 'default' drops a real patch (SigLIP has no CLS "
                       "token), leaving no square grid to show; vlmviz refuses it")
    tower = model.model.vision_tower

    def features(pixels):  # (B, 3, S, S) -> (B, N, D_vis * layers)
        return select_layers(tower(pixels, output_hidden_states=True).hidden_states, layer, strategy)

    layers = 1 if isinstance(layer, int) else len(layer)
    d_vis, d_txt = vc.hidden_size * layers, tc.hidden_size
    mean_std = HALF_MEAN_STD if "siglip" in vc.model_type else CLIP_MEAN_STD
    enc = ctx.tower(tower, features, family=family, hidden_size=d_vis, image_size=vc.image_size,
                    patch_size=vc.patch_size, has_cls=strategy == "full" and "siglip" not in vc.model_type,
                    mean_std=mean_std, what=f"{vc.model_type} tower at layer {layer}, strategy {strategy!r}")
    state = dict(model.model.multi_modal_projector.state_dict())
    for name in ("linear_1", "linear_2"):  # multimodal_projector_bias=False: a zero bias is the same function
        width = state[f"{name}.weight"].shape[0]
        state.setdefault(f"{name}.bias", torch.zeros(width))
    proj = build_projector("mlp2x_gelu", d_vis, d_txt, hidden_dim=state["linear_1.weight"].shape[0])
    notes = [ANYRES_NOTE] if family == "llava_next" else []
    return enc, load_connector(proj, state, family), notes

