"""Qwen2-VL and Qwen2.5-VL: the vision transformer (`model.visual` up to its blocks) and its PatchMerger, vlmviz's
qwen2_merger (LayerNorm in Qwen2-VL, RMSNorm in Qwen2.5-VL).

Patch order. Qwen2-VL's image processor flattens patches so that each 4 consecutive ones form a 2 x 2 block
(grid_h/2, grid_w/2, 2, 2), and its merger is a plain view(-1, 4 * D). vlmviz keeps raster order (row by row)
everywhere: this adapter patchifies as the processor does (`patchify`), runs the tower, then reorders its tokens
block -> raster (`blocks_to_raster`); qwen2_merger regroups raster tokens into the same blocks with the same
channel layout, so Qwen's own merger weights load unchanged. Qwen2.5-VL's tower also permutes merge units into
attention windows and leaves its last hidden state in window order; it is put back with the window index first.

Resolution. Qwen picks a resolution per image (smart_resize between min_pixels and max_pixels); vlmviz shows one
fixed square (default 448 px: 32 x 32 patches -> 256 tokens, `image_size` to change it).
"""
from __future__ import annotations

import torch

from ..projectors import build_projector
from .base import CLIP_MEAN_STD, load_connector


def patchify(pixels: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """(B, C, H, W) -> Qwen's flat patches (B * gh * gw, C * T * P * P), block-ordered, each frame repeated over the
    temporal patch (an image is a one-frame video), as Qwen2VLImageProcessor.patchify does."""
    B, C, H, W = pixels.shape
    gh, gw = H // patch, W // patch
    x = pixels.reshape(B, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, m, m, C, P, P)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)  # (B, gh/m, gw/m, m, m, C, T, P, P)
    return x.reshape(B * gh * gw, C * temporal * patch * patch)


def blocks_to_raster(tokens: torch.Tensor, B: int, gh: int, gw: int, merge: int) -> torch.Tensor:
    """Qwen's block order (B * gh * gw, D) -> raster order (B, gh * gw, D)."""
    D = tokens.shape[-1]
    x = tokens.reshape(B, gh // merge, gw // merge, merge, merge, D)  # (B, gh/m, gw/m, m, m, D)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, gh/m, m, gw/m, m, D)
    return x.reshape(B, gh * gw, D)


def open_qwen2_vl(model, config, ctx):
    family = config.model_type
    vc = config.vision_config
    visual = model.model.visual
    patch, merge, temporal = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
    side = ctx.dynamic_side(patch, merge)
    g = side // patch
    window = family == "qwen2_5_vl"

    def features(pixels):  # (B, 3, S, S) -> (B, gh * gw, D_vis) raster
        B = pixels.shape[0]
        grid_thw = torch.tensor([[1, g, g]] * B)
        hidden = visual(patchify(pixels, patch, merge, temporal), grid_thw=grid_thw).last_hidden_state  # (L, D)
        if window:  # Qwen2.5-VL: window order -> block order, a merge unit (m * m tokens) at a time
            from transformers.vision_utils import get_vision_window_index

            index, _ = get_vision_window_index(grid_thw, spatial_merge_size=merge, window_size=vc.window_size,
                                               patch_size=patch)
            D = hidden.shape[-1]
            hidden = hidden.reshape(-1, merge * merge, D)[torch.argsort(index)].reshape(-1, D)
        return blocks_to_raster(hidden, B, g, g, merge)

    d_vis = vc.hidden_size if window else vc.embed_dim
    enc = ctx.tower(visual, features, family=family, hidden_size=d_vis, image_size=side, patch_size=patch,
                    has_cls=False, mean_std=CLIP_MEAN_STD, what="vision transformer (before its patch merger)")
    merger = visual.merger.state_dict()
    state = {k.replace("mlp.0.", "linear_1.").replace("mlp.2.", "linear_2."): v for k, v in merger.items()}
    proj = build_projector("qwen2_merger", d_vis, state["linear_2.weight"].shape[0],
                           norm="rmsnorm" if window else "layernorm", merge=merge,
                           hidden_dim=state["linear_1.weight"].shape[0])
    notes = [f"{family} picks a resolution per image; vlmviz shows it at {side} x {side} px ({g} x {g} patches -> "
             f"{(g // merge) ** 2} tokens); video frames are not shown"]
    return enc, load_connector(proj, state, family), notes
