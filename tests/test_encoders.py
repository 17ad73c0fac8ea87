"""Frozen vision encoders: the bundled real ones and any HF vision model (tiny random configs here)."""
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from vlmviz.encoders import load_vision_encoder, list_vision_encoders, select_tokens, token_dim


@pytest.fixture(scope="module")
def cat():
    return Image.fromarray(data.chelsea())


def test_bundled_list_has_vit_first():
    assert list_vision_encoders()[0] == "vit-s14" and "efficientnet-lite0" in list_vision_encoders()


def test_vit_s14_tokens_match_the_onnx_graph(cat):
    from vlmviz.encoders.vit_s14 import check_vit_s14_against_onnx

    enc = load_vision_encoder("vit-s14")
    assert (enc.hidden_size, enc.grid, enc.has_cls, enc.num_tokens) == (384, (16, 16), True, 257)
    assert enc.encode([cat]).shape == (1, 257, 384)
    assert check_vit_s14_against_onnx(cat) < 1e-3
    assert "not state" in enc.description  # the UI tells people the training data is unknown


def test_efficientnet_real_weights_classify_real_images(cat):
    enc = load_vision_encoder("efficientnet-lite0")
    assert (enc.hidden_size, enc.grid, enc.has_cls, enc.num_tokens) == (1280, (7, 7), False, 49)
    logits = enc.classify(enc.preprocess([cat, Image.fromarray(data.coffee())]))
    top5 = logits.topk(5).indices.tolist()
    assert set(top5[0]) & {281, 282, 283, 284, 285}  # ImageNet cat classes
    assert set(top5[1]) & {967, 968}  # espresso, cup


@pytest.mark.parametrize("name", ["vit-s14", "efficientnet-lite0"])
def test_frozen_batched_equals_single_and_odd_modes_work(name, cat):
    enc = load_vision_encoder(name)
    assert not any(p.requires_grad for p in enc.parameters())
    rgb = np.asarray(cat)
    images = [cat, cat.convert("L"), cat.convert("RGBA"), cat.convert("P"),
              Image.fromarray((rgb[..., 0].astype(np.uint16) * 257), mode="I;16")]
    batched = enc.encode(images, batch_size=5)
    single = torch.cat([enc.encode([im]) for im in images])
    assert batched.shape == (5, enc.num_tokens, enc.hidden_size)
    assert torch.allclose(batched, single, atol=1e-4)
    assert torch.isfinite(batched).all()


def test_token_selection():
    x = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)  # CLS + 2x2 grid
    assert select_tokens(x, True, "all").shape == (2, 5, 3)
    assert torch.equal(select_tokens(x, True, "patch"), x[:, 1:])
    assert torch.equal(select_tokens(x, True, "cls"), x[:, :1])
    assert torch.equal(select_tokens(x, True, "mean")[:, 0], x[:, 1:].mean(1))
    both = select_tokens(x, True, "cls+mean")
    assert both.shape == (2, 1, 6) and torch.equal(both[:, 0, :3], x[:, 0])
    assert token_dim(384, "cls+mean") == 768 and token_dim(384, "patch") == 384
    with pytest.raises(ValueError, match="needs a CLS token"):
        select_tokens(x, False, "cls")
    with pytest.raises(ValueError, match="one of all, patch"):
        select_tokens(x, True, "pool")


def _tiny(kind, tmp_path):
    import transformers as tf

    common = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64)
    model = {
        "clip": lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**common)),
        "siglip": lambda: tf.SiglipVisionModel(tf.SiglipVisionConfig(**common)),
        "dinov2": lambda: tf.Dinov2Model(tf.Dinov2Config(**common)),
        "vit": lambda: tf.ViTModel(tf.ViTConfig(**common), add_pooling_layer=False),
    }[kind]()
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("kind,has_cls", [("clip", True), ("siglip", False), ("dinov2", True), ("vit", True)])
def test_any_hf_vision_model_from_a_folder(kind, has_cls, tmp_path, cat):
    enc = load_vision_encoder(str(_tiny(kind, tmp_path)))
    assert enc.has_cls is has_cls and enc.grid == (4, 4) and enc.hidden_size == 32
    tokens = enc.encode([cat, cat.convert("L")])
    assert tokens.shape == (2, 16 + has_cls, 32)
    assert not any(p.requires_grad for p in enc.parameters())


def test_unknown_encoder_names_the_bundled_ones(tmp_path):
    with pytest.raises(ValueError, match=r"not one of \['vit-s14', 'efficientnet-lite0'\]"):
        load_vision_encoder(str(tmp_path / "nothing-here"))
