"""Checkpoints: round trip, dimension checks with clear messages, atomic writes, LLaVA / HF Llava interop."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmviz.checkpoints import (CheckpointError, export_llava, import_llava_projector, load_checkpoint,
                                read_config, save_checkpoint)
from vlmviz.projectors import build_projector


def test_round_trip_keeps_weights_and_config(tmp_path):
    torch.manual_seed(0)
    proj = build_projector("qformer", 32, 48, num_queries=4, hidden_dim=32, num_heads=4)
    path = save_checkpoint(tmp_path / "q.safetensors", proj, encoder="vit-s14", tokens="patch",
                           text="smollm2-135m", pooling="mean")
    again, cfg = load_checkpoint(path, in_dim=32, out_dim=48)
    x = torch.randn(2, 17, 32)
    assert torch.equal(proj.eval()(x), again(x))
    assert cfg["encoder"] == "vit-s14" and cfg["tokens"] == "patch" and cfg["projector"]["family"] == "qformer"
    assert [f for f in os.listdir(tmp_path)] == ["q.safetensors"]  # no temp files left behind


def test_wrong_dims_say_expected_versus_found(tmp_path):
    path = save_checkpoint(tmp_path / "l.safetensors", build_projector("linear", 1024, 576), encoder="clip-l")
    with pytest.raises(CheckpointError, match="expects D_vis=1024 .*gives 384"):
        load_checkpoint(path, in_dim=384, out_dim=576)
    with pytest.raises(CheckpointError, match="outputs D_txt=576.* has 384"):
        load_checkpoint(path, in_dim=1024, out_dim=384)


def test_tampered_tensor_shape_is_reported(tmp_path):
    path = save_checkpoint(tmp_path / "l.safetensors", build_projector("linear", 8, 4))
    header = {"vlmviz": __import__("json").dumps(read_config(path))}
    state = load_file(str(path))
    state["linear.weight"] = torch.zeros(4, 9)
    save_file(state, str(path), metadata=header)
    with pytest.raises(CheckpointError, match=r"linear.weight: expected \(4, 8\), found \(4, 9\)"):
        load_checkpoint(path)


def test_corrupt_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        load_checkpoint(junk)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="no vlmviz config"):
        load_checkpoint(bare)
    text = tmp_path / "notes.bin"
    text.write_text("hello, I am not a projector")
    with pytest.raises(CheckpointError, match="not a readable projector file"):
        import_llava_projector(text)


def test_nan_weights_are_refused(tmp_path):
    proj = build_projector("linear", 4, 4)
    with torch.no_grad():
        proj.linear.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(tmp_path / "n.safetensors", proj)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "keep.safetensors", build_projector("linear", 4, 4))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("vlmviz.checkpoints.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, build_projector("linear", 4, 4))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.safetensors"]


EXPORTABLE = [("linear", "llava"), ("mlp2x_gelu", "llava"), ("mlp3x_gelu", "llava"), ("mlp2x_gelu", "hf")]


@pytest.mark.parametrize("family, style", EXPORTABLE)
def test_llava_export_import_round_trip(tmp_path, family, style):
    torch.manual_seed(0)
    proj = build_projector(family, 16, 12).eval()
    path = export_llava(proj, tmp_path / ("mm_projector.bin" if style == "llava" else "proj.safetensors"), style)
    again = import_llava_projector(path, in_dim=16, out_dim=12)
    assert again.family == family
    x = torch.randn(2, 3, 16)
    assert torch.allclose(proj(x), again(x))


def _llava_sequential(family: str, d_vis: int, d_txt: int) -> torch.nn.Module:
    """LLaVA's own builder (llava/model/multimodal_projector/builder.py): Linear for 'linear', else Linear(D_vis,
    D_txt) then (GELU, Linear(D_txt, D_txt)) per extra layer."""
    if family == "linear":
        return torch.nn.Linear(d_vis, d_txt)
    depth = int(family[3])
    modules = [torch.nn.Linear(d_vis, d_txt)]
    for _ in range(1, depth):
        modules += [torch.nn.GELU(), torch.nn.Linear(d_txt, d_txt)]
    return torch.nn.Sequential(*modules)


@pytest.mark.parametrize("family, style", EXPORTABLE)
def test_every_export_loads_strictly_into_llava_and_transformers(tmp_path, family, style):
    """What LLaVA's load of mm_projector.bin and transformers' LlavaMultiModalProjector accept, key for key and
    shape for shape (strict=True), computing what the vlmviz connector computes, standardisation folded in."""
    torch.manual_seed(0)
    proj = build_projector(family, 16, 12).eval()
    proj.set_input_stats(2.0 + 3.0 * torch.randn(40, 3, 16))
    x = torch.randn(2, 3, 16) * 3 + 2
    if style == "llava":
        state = torch.load(export_llava(proj, tmp_path / "mm_projector.bin"), weights_only=True)
        # LLaVA keeps what follows 'mm_projector.' (llava_arch.py get_w) and loads it into the builder's module
        ref = _llava_sequential(family, 16, 12)
        ref.load_state_dict({k.split("mm_projector.")[1]: v for k, v in state.items()}, strict=True)
    else:
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=16, num_attention_heads=2),
                          text_config=LlamaConfig(hidden_size=12, num_attention_heads=2, num_key_value_heads=2))
        ref = LlavaMultiModalProjector(cfg)
        state = load_file(str(export_llava(proj, tmp_path / "p.safetensors", "hf")))
        ref.load_state_dict({k.replace("multi_modal_projector.", ""): v for k, v in state.items()}, strict=True)
    assert torch.allclose(ref.eval()(x), proj(x), atol=1e-4)


@pytest.mark.parametrize("family, options, style, message", [
    ("linear", {}, "hf", "exactly linear_1 -> GELU -> linear_2.*style 'llava'"),
    ("mlp3x_gelu", {}, "hf", "exactly linear_1 -> GELU -> linear_2"),
    ("mlp2x_gelu", {"hidden_dim": 32}, "llava", "LLaVA's mlpNx_gelu keeps every hidden layer at the LM width"),
    ("mlp2x_gelu", {"hidden_dim": 32}, "hf", "Llava projector keeps every hidden layer at the LM width"),
])
def test_exports_the_format_cannot_hold_are_refused(tmp_path, family, options, style, message):
    with pytest.raises(CheckpointError, match=message):
        export_llava(build_projector(family, 16, 12, **options), tmp_path / "x.bin", style)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_safetensors_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors file starts with its header's length; when that length's low byte is 0x80 the first byte is
    a pickle's. The format is read from the structure, so it still imports."""
    state = {"multi_modal_projector.linear_1.weight": torch.randn(12, 16),
             "multi_modal_projector.linear_1.bias": torch.randn(12),
             "multi_modal_projector.linear_2.weight": torch.randn(12, 12),
             "multi_modal_projector.linear_2.bias": torch.randn(12)}
    path = tmp_path / "p.safetensors"
    for pad in range(400):
        save_file(state, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert import_llava_projector(path, in_dim=16, out_dim=12).family == "mlp2x_gelu"


class _Hostile:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_pickled_code_is_refused_with_a_message(tmp_path, capsys):
    import pickle

    for name, write in (("legacy.bin", lambda p: p.write_bytes(pickle.dumps({"w": _Hostile()}, protocol=2))),
                        ("zip.bin", lambda p: torch.save({"w": _Hostile()}, p))):
        path = tmp_path / name
        write(path)
        with pytest.raises(CheckpointError, match="holds pickled code .* will not be loaded") as err:
            import_llava_projector(path)
        assert "weights_only" not in str(err.value)
    assert "this ran" not in capsys.readouterr().out


def test_llava_keys_match_llava_and_transformers(tmp_path):
    proj = build_projector("mlp2x_gelu", 16, 12)
    state = torch.load(export_llava(proj, tmp_path / "mm_projector.bin"), weights_only=True)
    assert sorted(state) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                             "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    hf = load_file(str(export_llava(proj, tmp_path / "p.safetensors", "hf")))
    assert sorted(hf) == ["multi_modal_projector.linear_1.bias", "multi_modal_projector.linear_1.weight",
                          "multi_modal_projector.linear_2.bias", "multi_modal_projector.linear_2.weight"]


def test_transformers_llava_projector_loads(tmp_path):
    """The state dict of transformers' own LlavaMultiModalProjector imports and computes the same function."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=16, num_attention_heads=2),
                      text_config=LlamaConfig(hidden_size=12, num_attention_heads=2, num_key_value_heads=2))
    ref = LlavaMultiModalProjector(cfg).eval()
    state = {f"model.multi_modal_projector.{k}": v for k, v in ref.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    ours = import_llava_projector(tmp_path / "model.safetensors", in_dim=16, out_dim=12)
    x = torch.randn(1, 5, 16)
    assert torch.allclose(ref(x), ours(x), atol=1e-6)
    with pytest.raises(CheckpointError, match="expects D_vis=16"):
        import_llava_projector(tmp_path / "model.safetensors", in_dim=384, out_dim=12)


def test_other_families_refuse_llava_export(tmp_path):
    with pytest.raises(CheckpointError, match="linear and mlpNx_gelu"):
        export_llava(build_projector("lowrank", 8, 8), tmp_path / "x.bin")


def test_llava_export_folds_input_standardisation(tmp_path):
    torch.manual_seed(0)
    proj = build_projector("mlp2x_gelu", 16, 12).eval()
    proj.set_input_stats(5.0 + 3.0 * torch.randn(40, 3, 16))
    again = import_llava_projector(export_llava(proj, tmp_path / "mm_projector.bin"), in_dim=16, out_dim=12)
    x = torch.randn(2, 3, 16) * 3 + 5
    assert torch.allclose(proj(x), again(x), atol=1e-4)
    assert torch.equal(again.input_mean, torch.zeros(16))  # the standardisation now lives in linear_1
