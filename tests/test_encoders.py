"""Frozen vision encoders: the bundled real ones and any HF vision model (tiny random configs here)."""
import json
import time

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


def test_a_layer_of_vit_s14_is_its_hidden_state_and_has_its_own_cache_id(cat):
    base, four, last = (load_vision_encoder(n) for n in ("vit-s14", "vit-s14@4", "vit-s14@-1"))
    assert "vit-s14@4" in list_vision_encoders()
    assert four.base is base and four.num_tokens == 257 and four.hidden_size == 384  # weights shared, not reloaded
    assert len({base.cache_id, four.cache_id, last.cache_id}) == 3  # cached features never mix layers
    assert load_vision_encoder("vit-s14@12").cache_id == last.cache_id  # -1 and 12 are the same block
    pixels = base.preprocess([cat])
    with torch.no_grad():
        hidden = base.model(pixel_values=pixels, output_hidden_states=True).hidden_states  # 13: embeddings + 12
    assert torch.equal(four(pixels), hidden[4]) and torch.equal(last(pixels), hidden[12])
    both = load_vision_encoder("vit-s14@4+12")  # two depths side by side (multi-layer connectors)
    assert both.hidden_size == 768 and both.cache_id not in (four.cache_id, last.cache_id)
    assert torch.equal(both(pixels), torch.cat([hidden[4], hidden[12]], dim=-1))
    assert not torch.allclose(four(pixels), base(pixels), atol=1e-2)
    with pytest.raises(ValueError, match=r"12 blocks: layer must be in -13..12 .* got 13"):
        load_vision_encoder("vit-s14@13")
    with pytest.raises(ValueError, match="needs a transformer encoder with hidden states; efficientnet-lite0"):
        load_vision_encoder("efficientnet-lite0@2")


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
def test_frozen_batched_equals_single_and_odd_modes_work(name, cat, tmp_path):
    enc = load_vision_encoder(name)
    assert not any(p.requires_grad for p in enc.parameters())
    rgb = np.asarray(cat)
    sixteen = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    phone = tmp_path / "phone.jpg"  # stored sideways, EXIF orientation 6 says "rotate 90 CW to display"
    exif = cat.getexif()
    exif[0x0112] = 6
    cat.save(phone, exif=exif)
    sideways = np.asarray(Image.open(phone).convert("RGB"))  # the stored pixels; arrays carry no EXIF
    upright = Image.fromarray(np.rot90(sideways, k=-1))  # rotated 90 CW by hand
    images = [cat, cat.convert("L"), cat.convert("RGBA"), cat.convert("P"), sixteen, phone, upright]
    batched = enc.encode(images, batch_size=4)
    single = torch.cat([enc.encode([im]) for im in images])
    assert batched.shape == (7, enc.num_tokens, enc.hidden_size)
    assert torch.allclose(batched, single, atol=1e-4)
    assert torch.isfinite(batched).all()
    assert torch.allclose(batched[5], batched[6], atol=1e-5)  # the EXIF rotation was applied before encoding
    assert not torch.allclose(batched[5], enc.encode([sideways])[0], atol=1e-2)


def test_encode_reports_progress_and_refuses_nothing(cat):
    enc = load_vision_encoder("efficientnet-lite0")
    seen = []
    enc.encode([cat] * 5, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    with pytest.raises(ValueError, match="no images"):
        enc.encode([])


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
    with pytest.raises(ValueError, match="square patch grid of at least 4 x 4"):
        select_tokens(x, True, "cls+maxgrid")  # a 2x2 grid cannot be pooled to 4x4 cells


def test_maxgrid_keeps_where_a_patch_lies():
    """cls+maxgrid: CLS, then the 16x16 patch grid max-pooled to 4x4 cells in reading order; a bright patch at grid
    row 13, column 2 shows up in cell (3, 0) and nowhere else."""
    x = torch.zeros(2, 1 + 256, 3)
    x[:, 0] = 7.0  # CLS
    x[0, 1 + 13 * 16 + 2] = torch.tensor([5.0, 1.0, 2.0])
    view = select_tokens(x, True, "cls+maxgrid")
    assert view.shape == (2, 1, 17 * 3) == (2, 1, token_dim(3, "cls+maxgrid"))
    cells = view[:, 0].reshape(2, 17, 3)
    assert torch.equal(cells[:, 0], x[:, 0])
    hot = cells[0, 1:].abs().sum(-1).nonzero().flatten().tolist()
    assert hot == [3 * 4 + 0] and torch.equal(cells[0, 1 + 12], torch.tensor([5.0, 1.0, 2.0]))
    assert not cells[1, 1:].any()
    as_tokens = select_tokens(x, True, "cls+cells")  # the same 17 vectors as a token set, for attnpool
    assert as_tokens.shape == (2, 17, 3) and token_dim(3, "cls+cells") == 3 and torch.equal(as_tokens, cells)


COMMON = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64)


def _tiny(kind, folder):
    import transformers as tf

    torch.manual_seed(0)
    model = {
        "clip": lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**COMMON)),
        "siglip": lambda: tf.SiglipVisionModel(tf.SiglipVisionConfig(**COMMON)),
        "dinov2": lambda: tf.Dinov2Model(tf.Dinov2Config(**COMMON)),
        "vit": lambda: tf.ViTModel(tf.ViTConfig(**COMMON), add_pooling_layer=False),
    }[kind]()
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind,has_cls", [("clip", True), ("siglip", False), ("dinov2", True), ("vit", True)])
def test_any_hf_vision_model_from_a_folder(kind, has_cls, tmp_path, cat):
    enc = load_vision_encoder(str(_tiny(kind, tmp_path)))
    assert enc.has_cls is has_cls and enc.grid == (4, 4) and enc.hidden_size == 32
    assert enc.num_tokens == 16 + has_cls and enc.cache_id.startswith(f"hf:{tmp_path}@local-")
    tokens = enc.encode([cat, cat.convert("L")])
    assert tokens.shape == (2, 16 + has_cls, 32)
    assert not any(p.requires_grad for p in enc.parameters())
    assert enc.select(tokens, "mean").shape == (2, 1, 32)


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2", "vit"])
def test_any_hf_vision_model_at_a_layer(kind, tmp_path):
    folder = _tiny(kind, tmp_path)
    whole = load_vision_encoder(str(folder))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = whole.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    for layer in (0, 1, -1):
        enc = load_vision_encoder(f"{folder}@{layer}")
        assert enc.name == f"{folder}@{layer}" and enc.grid == whole.grid and enc.has_cls is whole.has_cls
        assert torch.allclose(enc(pixels), hidden[layer], atol=1e-6)
    for spec, layers in (("1+-1", (1, 2)), ("0+2", (0, 2))):
        enc = load_vision_encoder(f"{folder}@{spec}")
        assert enc.hidden_size == 32 * len(layers)
        assert torch.allclose(enc(pixels), torch.cat([hidden[k] for k in layers], dim=-1), atol=1e-6)


def test_a_layer_reader_leaves_other_threads_forwards_alone(tmp_path):
    """`NAME@K` stops the shared model after block K with a hook; a whole-model forward that another thread runs
    meanwhile (the app's concurrent requests: Describe on vit-s14 while a map encodes vit-s14@4) must run to the
    end, not be stopped by that hook."""
    import threading

    folder = _tiny("dinov2", tmp_path)
    whole, first = load_vision_encoder(str(folder)), load_vision_encoder(f"{folder}@1")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = whole.model(pixel_values=pixels).last_hidden_state
    seen = {}

    def other_thread():
        try:
            with torch.no_grad():
                seen["out"] = whole.model(pixel_values=pixels).last_hidden_state
        except Exception as err:  # noqa: BLE001
            seen["err"] = err

    def meanwhile(module, args):  # inside the layer reader's forward, its hooks registered: another thread runs
        if threading.current_thread() is threading.main_thread() and "out" not in seen and "err" not in seen:
            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()

    pre = first._blocks()[0].register_forward_pre_hook(meanwhile)
    try:
        with torch.no_grad():
            first(pixels)
    finally:
        pre.remove()
    assert "err" not in seen and torch.allclose(seen["out"], expected, atol=1e-6)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_full_clip_and_siglip_checkpoints_give_their_vision_tower(family, tmp_path):
    import transformers as tf

    Full, Cfg, Text, Vision = {
        "clip": (tf.CLIPModel, tf.CLIPConfig, tf.CLIPTextConfig, tf.CLIPVisionConfig),
        "siglip": (tf.SiglipModel, tf.SiglipConfig, tf.SiglipTextConfig, tf.SiglipVisionConfig),
    }[family]
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(1)
    full = Full(Cfg(text_config=Text(**text).to_dict(), vision_config=Vision(**COMMON).to_dict())).eval()
    full.save_pretrained(tmp_path)
    enc = load_vision_encoder(str(tmp_path))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = full.vision_model(pixel_values=pixels).last_hidden_state  # (2, N, 32)
    assert torch.allclose(enc(pixels), expected, atol=1e-6)  # the trained tower, not a fresh random one
    assert enc.has_cls is (family == "clip")


def test_saved_preprocessor_config_sets_normalisation_and_resize(tmp_path, cat):
    folder = _tiny("dinov2", tmp_path)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
        "size": {"shortest_edge": 40}, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.3, 0.3, 0.3]}))
    enc = load_vision_encoder(str(folder))
    assert (enc.mean, enc.std, enc.resize, enc.image_size) == ((0.1, 0.2, 0.3), (0.3, 0.3, 0.3), 40, 32)
    assert enc.view(cat).size == (32, 32)
    pixels = enc.preprocess([Image.new("RGB", (50, 50), (255, 0, 0))])  # (1, 3, 32, 32)
    assert torch.allclose(pixels[0, :, 0, 0], torch.tensor([0.9 / 0.3, -0.2 / 0.3, -0.3 / 0.3]), atol=1e-5)


def test_hf_checkpoints_that_do_not_fit_are_refused(tmp_path):
    import transformers as tf

    bert = tmp_path / "bert"
    tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               vocab_size=50)).save_pretrained(bert)
    with pytest.raises(ValueError, match="'bert' model; vlmviz reads vision tokens from clip"):
        load_vision_encoder(str(bert))
    for saved, claimed, message in [("vit", "dinov2", "has no weights for .* expected a dinov2 vision checkpoint"),
                                    ("dinov2", "vit", "weights do not fit ViTModel")]:
        folder = _tiny(saved, tmp_path / f"{saved}-as-{claimed}")
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": claimed}))
        with pytest.raises(ValueError, match=message):
            load_vision_encoder(str(folder))


def test_local_cache_id_follows_the_weights(tmp_path):
    from transformers import AutoConfig

    from vlmviz.encoders.hf import _version

    folder = _tiny("vit", tmp_path)
    before = _version(str(folder), AutoConfig.from_pretrained(folder))
    assert before == _version(str(folder), AutoConfig.from_pretrained(folder))
    time.sleep(0.01)
    _tiny("vit", folder)  # same architecture, weights written again
    assert _version(str(folder), AutoConfig.from_pretrained(folder)) != before


def test_unknown_encoder_names_the_bundled_ones(tmp_path):
    """A name that is no folder and not in the Hugging Face cache is refused at once (offline), naming the bundled
    encoders; a folder that holds no model says what loading it found."""
    with pytest.raises(ValueError, match=r"unknown vision encoder .*nothing-here': not one of vit-s14, "
                                         r"efficientnet-lite0, vit-s14@4, vit-s14@4\+12, not a local folder, "
                                         r"and not in the Hugging "
                                         r"Face cache \(HF_HUB_OFFLINE is set\)"):
        load_vision_encoder(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="unknown vision encoder 'vit-s15': not one of vit-s14"):
        load_vision_encoder("vit-s15")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a bundled encoder .* nor a loadable Hugging Face local folder"):
        load_vision_encoder(str(tmp_path / "empty"))
