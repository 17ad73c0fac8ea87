"""PaliGemma and Gemma 3: a SigLIP tower (last_hidden_state, no CLS token) and the connector, a biased Linear in
PaliGemma (vlmviz's linear) and AvgPool -> Gemma RMSNorm -> matmul in Gemma 3 (vlmviz's gemma3, pool kernel =
patches per side / tokens per side).

Gemma 3's pan-and-scan crops are not shown; both models see the image at the tower's one input size, as here.
"""
from __future__ import annotations

from ..projectors import build_projector
from .base import HALF_MEAN_STD, VLMError, load_connector


def _siglip(model, config, ctx, family):
    vc = config.vision_config
    tower = model.model.vision_tower

    def features(pixels):  # (B, 3, S, S) -> (B, h*w, D_vis)
        return tower(pixel_values=pixels).last_hidden_state

    return vc, ctx.tower(tower, features, family=family, hidden_size=vc.hidden_size, image_size=vc.image_size,
                         patch_size=vc.patch_size, has_cls=False, mean_std=HALF_MEAN_STD, what="SigLIP tower")


def open_paligemma(model, config, ctx):
    vc, enc = _siglip(model, config, ctx, "paligemma")
    state = dict(model.model.multi_modal_projector.state_dict())  # linear.weight, linear.bias
    proj = build_projector("linear", vc.hidden_size, state["linear.weight"].shape[0])
    return enc, load_connector(proj, state, "paligemma"), []


def open_gemma3(model, config, ctx):
    vc, enc = _siglip(model, config, ctx, "gemma3")
    per_side = vc.image_size // vc.patch_size
    tokens_side = round(config.mm_tokens_per_image ** 0.5)
    if tokens_side ** 2 != config.mm_tokens_per_image or per_side % tokens_side:
        raise VLMError(f"gemma3: mm_tokens_per_image {config.mm_tokens_per_image} does not pool a {per_side} x "
                       f"{per_side} grid evenly")
    state = dict(model.model.multi_modal_projector.state_dict())
    proj = build_projector("gemma3", vc.hidden_size, state["mm_input_projection_weight"].shape[1],
                           pool=per_side // tokens_side, eps=vc.layer_norm_eps)
    notes = ["Gemma 3's pan-and-scan crops are not shown: one view at the tower's input size"]
    return enc, load_connector(proj, state, "gemma3"), notes
