"""Export a vlmviz connector in a real VLM's own format: safetensors keyed as that model's checkpoint keys the
connector, loading strictly into the transformers class (tests/test_vlms.py does so).

  qwen2-vl  qwen2_merger  -> visual.merger.{ln_q, mlp.0, mlp.2}: PatchMerger (layernorm) / Qwen2_5_VLPatchMerger
  internvl  internvl      -> multi_modal_projector.{layer_norm, linear_1, linear_2}: InternVLMultiModalProjector
  idefics3  pixel_shuffle -> connector.modality_projection.proj (columns permuted to Idefics3's order)
  gemma3    gemma3        -> multi_modal_projector.{mm_input_projection_weight, mm_soft_emb_norm}

vlmviz standardises a connector's input per dimension (Projector.input_mean / input_std). A linear first layer
absorbs that; a norm first (Qwen's ln_q, InternVL's layer_norm after the merge, Gemma's RMSNorm) cannot, and
Idefics3's bias-free linear absorbs the scale but not the shift: those are refused unless the statistics are
identity (the norm-first families keep them so when trained; others: TrainConfig(standardize=False)) or, for
Idefics3, the mean is zero.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..checkpoints import CheckpointError, atomic_write
from ..projectors import Projector
from ..projectors.pixel_shuffle import idefics3_columns

STYLES = {"qwen2-vl": "qwen2_merger", "internvl": "internvl", "idefics3": "pixel_shuffle", "gemma3": "gemma3"}


def _identity_stats(projector: Projector, style: str, shift_only: bool = False) -> None:
    shifted = bool(projector.input_mean.abs().max() > 0)
    scaled = bool((projector.input_std - 1).abs().max() > 0)
    if shifted or (scaled and not shift_only):
        what = "mean" if shift_only else "mean and std"
        raise CheckpointError(f"this {projector.family} connector standardises its input ({what} not identity), "
                              f"which the {style} format cannot hold: its first layer is "
                              f"{'a bias-free linear' if shift_only else 'a norm'}; train it with "
                              "TrainConfig(standardize=False) to export it")


def connector_state(projector: Projector, style: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors under the format's own keys, and the config values the target class needs."""
    if style not in STYLES:
        raise ValueError(f"style must be one of llava, hf-llava, {', '.join(STYLES)}; got {style!r}")
    family = STYLES[style]
    if projector.family != family:
        raise CheckpointError(f"the {style} format holds a {family} connector, not {projector.family}")
    p = {k: v.detach().float().cpu().contiguous() for k, v in projector.state_dict().items()}
    if style == "idefics3":
        _identity_stats(projector, style, shift_only=True)
        scale = projector.scale
        # our column c * s^2 + k carries input dim c; dividing by std[c] folds the scale in
        weight = p["linear.weight"] / projector.input_std.repeat_interleave(scale * scale)
        inverse = idefics3_columns(projector.in_dim, scale).argsort()
        return ({"connector.modality_projection.proj.weight": weight[:, inverse].contiguous()},
                {"scale_factor": scale, "vision_hidden_size": projector.in_dim, "text_hidden_size": projector.out_dim})
    _identity_stats(projector, style)
    if style == "qwen2-vl":
        merge = projector.merge
        if projector.options["hidden_dim"] != projector.in_dim * merge * merge:
            raise CheckpointError(f"Qwen's merger keeps its hidden width at merge^2 x D_vis = "
                                  f"{projector.in_dim * merge * merge}; this connector has "
                                  f"{projector.options['hidden_dim']}, so it cannot be exported")
        names = {"ln_q.": "ln_q.", "linear_1.": "mlp.0.", "linear_2.": "mlp.2."}
        state = {f"visual.merger.{names[k.split('.')[0] + '.']}{k.split('.', 1)[1]}": v for k, v in p.items()
                 if not k.startswith("input_")}
        return state, {"norm": projector.options["norm"], "spatial_merge_size": merge,
                       "context_dim": projector.in_dim, "dim": projector.out_dim}
    if style == "internvl":
        state = {f"multi_modal_projector.{k}": v for k, v in p.items() if not k.startswith("input_")}
        return state, {"downsample_ratio": 1 / projector.scale, "vision_hidden_size": projector.in_dim,
                       "text_hidden_size": projector.out_dim, "projector_hidden_act": "gelu"}
    state = {f"multi_modal_projector.{k}": v for k, v in p.items() if not k.startswith("input_")}
    return state, {"pool": projector.pool, "layer_norm_eps": projector.options["eps"],
                   "vision_hidden_size": projector.in_dim, "text_hidden_size": projector.out_dim}


def export_vlm_connector(projector: Projector, path: str | Path, style: str) -> Path:
    state, config = connector_state(projector, style)
    meta = {"format": style, "config": json.dumps(config)}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
