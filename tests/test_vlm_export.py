"""Export into real VLM formats: each file loads strictly into that family's transformers connector class, which
then computes what the vlmviz connector computes (with the patch order and column order each format needs)."""
import json

import pytest
import torch
import transformers as T
from safetensors import safe_open
from safetensors.torch import load_file

from vlmviz.checkpoints import CheckpointError, export_connector
from vlmviz.projectors import build_projector

D, OUT, SIDE = 16, 24, 8  # vision width, text width, 8 x 8 token grid


def raster_to_qwen_blocks(x, merge=2):
    """vlmviz's raster order (B, h*w, D) -> Qwen's processor order: each 4 consecutive tokens a 2 x 2 block."""
    B, N, C = x.shape
    g = SIDE // merge
    return x.reshape(B, g, merge, g, merge, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, C)


def target(style, config):
    """The transformers class the format belongs to, built from the exported config values."""
    if style == "qwen2-vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLPatchMerger
        from transformers.models.qwen2_vl.modeling_qwen2_vl import PatchMerger

        cls = PatchMerger if config["norm"] == "layernorm" else Qwen2_5_VLPatchMerger
        return cls(config["dim"], config["context_dim"], config["spatial_merge_size"]), "visual.merger."
    if style == "internvl":
        cfg = T.InternVLConfig(vision_config=T.InternVLVisionConfig(hidden_size=config["vision_hidden_size"]),
                               text_config=T.Qwen2Config(hidden_size=config["text_hidden_size"]),
                               downsample_ratio=config["downsample_ratio"])
        return T.models.internvl.modeling_internvl.InternVLMultiModalProjector(cfg), "multi_modal_projector."
    if style == "idefics3":
        cfg = T.Idefics3Config(vision_config=T.Idefics3VisionConfig(hidden_size=config["vision_hidden_size"]),
                               text_config=T.LlamaConfig(hidden_size=config["text_hidden_size"], num_attention_heads=4),
                               scale_factor=config["scale_factor"])
        return T.models.idefics3.modeling_idefics3.Idefics3Connector(cfg), "connector."
    tokens_side = SIDE // config["pool"]
    vision = T.SiglipVisionConfig(hidden_size=config["vision_hidden_size"], image_size=SIDE * 4, patch_size=4,
                                  layer_norm_eps=config["layer_norm_eps"])
    cfg = T.Gemma3Config(vision_config=vision,
                         text_config=T.Gemma3TextConfig(hidden_size=config["text_hidden_size"]),
                         mm_tokens_per_image=tokens_side ** 2)
    return T.models.gemma3.modeling_gemma3.Gemma3MultiModalProjector(cfg), "multi_modal_projector."


def theirs(style, module, x):
    B = x.shape[0]
    if style == "qwen2-vl":
        return module(raster_to_qwen_blocks(x)).reshape(B, -1, OUT)
    if style == "internvl":
        shuffled = T.InternVLModel.pixel_shuffle(None, x.reshape(B, SIDE, SIDE, D), 0.5).reshape(B, -1, 4 * D)
        return module(shuffled)
    return module(x)


CASES = [("qwen2-vl", "qwen2_merger", {"norm": "layernorm"}), ("qwen2-vl", "qwen2_merger", {"norm": "rmsnorm"}),
         ("internvl", "internvl", {}), ("idefics3", "pixel_shuffle", {"scale": 2}), ("gemma3", "gemma3", {"pool": 4})]


@pytest.mark.parametrize("style, family, options", CASES)
def test_export_reloads_strictly_into_the_transformers_class(tmp_path, style, family, options):
    torch.manual_seed(0)
    proj = build_projector(family, D, OUT, **options).eval()
    with torch.no_grad():
        for p in proj.parameters():
            p.normal_(0, 0.3)
        if style == "idefics3":  # a bias-free linear absorbs an input scale
            proj.input_std.uniform_(0.5, 2.0)
    path = export_connector(proj, tmp_path / "connector.safetensors", style)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == style
    module, prefix = target(style, json.loads(meta["config"]))
    state = load_file(str(path))
    assert all(k.startswith(prefix) for k in state)
    module.load_state_dict({k[len(prefix):]: v for k, v in state.items()}, strict=True)
    x = torch.randn(2, SIDE * SIDE, D)
    with torch.no_grad():
        torch.testing.assert_close(theirs(style, module.eval(), x), proj(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style, family, options, message", [
    ("qwen2-vl", "mlp2x_gelu", {}, "qwen2-vl format holds a qwen2_merger connector, not mlp2x_gelu"),
    ("qwen2-vl", "qwen2_merger", {"hidden_dim": 20}, "hidden width at merge\\^2 x D_vis = 64; this connector has 20"),
    ("gemma3", "gemma3", {"stats": True}, "standardises its input .* a norm; train it with"),
    ("idefics3", "pixel_shuffle", {"stats": True}, "mean not identity.*bias-free linear"),
    ("llava", "internvl", {}, "LLaVA export supports the linear and mlpNx_gelu families, not internvl"),
    ("mistral3", "mistral3", {}, "style must be one of llava, hf-llava, hf, qwen2-vl"),
])
def test_what_a_format_cannot_hold_is_refused(tmp_path, style, family, options, message):
    stats = options.pop("stats", False)
    proj = build_projector(family, D, OUT, **options)
    if stats:  # norm-first families never set these themselves; a hand-edited checkpoint could carry them
        with torch.no_grad():
            proj.input_mean.fill_(1.0)
    with pytest.raises((CheckpointError, ValueError), match=message):
        export_connector(proj, tmp_path / "x.safetensors", style)


@pytest.mark.parametrize("family", ["qwen2_merger", "internvl", "gemma3", "mistral3"])
def test_norm_first_connectors_train_without_standardisation_so_they_export(family):
    proj = build_projector(family, D, OUT)
    proj.set_input_stats(torch.randn(10, 4, D) * 5 + 3)  # what the trainer does
    assert torch.equal(proj.input_mean, torch.zeros(D)) and torch.equal(proj.input_std, torch.ones(D))
