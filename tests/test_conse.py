"""Photo concepts (ConSE on EfficientNet-Lite0's real ImageNet head, MiniLM class names), with the bundled models.

The gallery figure is a measured property of deterministic pretrained models (BENCHMARKS.md, "Photo concepts"), so
it is asserted here: a change that loses it is a regression, not noise.
"""
import numpy as np
import pytest
import torch

from vlmviz.runs import concepts
from vlmviz.checkpoints import load_checkpoint, read_config
from vlmviz.data import load_gallery
from vlmviz.encoders import load_vision_encoder
from vlmviz.views.pipeline import resolve_pipeline
from vlmviz.projectors import build_projector

pytestmark = pytest.mark.slow
GALLERY = {item.name: item for item in load_gallery()}


@pytest.fixture(scope="module")
def pipe():
    # the app's own path: a built-in choice, whatever encoder and text space the top bar shows
    return resolve_pipeline(concepts.PHOTO_CONSE, {}, "vit-s14", "smollm2-135m", "patch")


def test_shape_contract_with_the_real_head_and_class_table():
    proj = concepts.build_conse()
    assert (proj.in_dim, proj.out_dim, proj.num_output_tokens(49)) == (1280, 384, 50)
    assert proj.head.weight.shape == (1000, 1280) and proj.class_embeddings.shape == (1000, 384)
    enc = load_vision_encoder("efficientnet-lite0")
    tokens = enc.encode([GALLERY["coffee"].path, GALLERY["chelsea"].path])  # (2, 49, 1280)
    with torch.no_grad():
        out = proj(tokens)
    assert out.shape == (2, 50, 384) and torch.isfinite(out).all()  # image-level token first, then 49 per-token
    # the head is linear, so the mean of the per-token logits is the network's own prediction on the pooled features
    proj.image_pool = "head"
    with torch.no_grad():
        image_probs = proj.concept_probs(tokens)[:, 0]  # (2, 1000)
        own = enc.classify(enc.preprocess([GALLERY["coffee"].path, GALLERY["chelsea"].path])).softmax(-1)
    assert torch.allclose(image_probs, own, atol=1e-5)
    assert concepts.class_names()[int(own[0].argmax())] == "espresso"


def test_gallery_true_caption_first_for_at_least_11_of_14(pipe):
    rows = concepts.gallery_ranks(pipe)
    assert len(rows) == 14
    firsts = [r["photo"] for r in rows if r["rank"] == 1]
    assert len(firsts) >= 11, rows
    assert read_config(concepts.built_in_checkpoint())["metrics"]["gallery_top1"] == len(firsts)


def test_per_token_outputs_make_the_heatmap_and_words_meaningful(pipe):
    assert pipe.encoder.name == "efficientnet-lite0" and pipe.text.name == "minilm-l6"
    assert pipe.output_grid(49) == (7, 7, 1)  # the image-level token sits where a CLS token would
    heat, note = pipe.patch_similarity(GALLERY["camera"].path, "a tripod")
    assert heat.shape == (7, 7) and "7x7" in note
    # the tripod stands in the lower middle of the photo; the sky above the man is not a tripod
    assert heat[4:, 2:6].mean() > heat[:2].mean() + 0.2
    grid = concepts.token_concepts(pipe, GALLERY["chelsea"].path)
    names = [n for row in grid for n in row]
    assert len(grid) == 7 and all(len(row) == 7 for row in grid)
    assert sum("cat" in n or n == "Egyptian Mau" for n in names) >= 40  # nearly every patch of the face is cat
    assert concepts.top_concepts(pipe, GALLERY["coffee"].path, k=1)[0][0] == "espresso"
    rows, note = pipe.nearest_words(GALLERY["chelsea"].path, k=2)
    assert len(rows) == 7 and all(len(r) == 7 for r in rows)
    assert sum("cat" in cell for row in rows for cell in row) >= 25, rows


def test_checkpoint_says_what_it_is_and_rebuilds_exactly(tmp_path):
    path = concepts.built_in_checkpoint()
    config = read_config(path)
    assert (config["encoder"], config["tokens"], config["text"], config["pooling"]) == \
        ("efficientnet-lite0", "all", "minilm-l6", "cls")
    assert "ImageNet" in config["trained_on"] and config["recipe"]["top_k"] == 10
    assert [r["photo"] for r in config["gallery"]] == list(GALLERY)
    proj, _ = load_checkpoint(path, 1280, 384)
    fresh = concepts.build_conse(**{k: v for k, v in config["recipe"].items()})
    for key, value in fresh.state_dict().items():
        assert torch.equal(proj.state_dict()[key], value), key


def test_options_are_checked_and_training_keeps_raw_features():
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        build_projector("conse", 8, 4, temperature=0)
    with pytest.raises(ValueError, match="image_pool must be one of max, head"):
        build_projector("conse", 8, 4, image_pool="mean")
    with pytest.raises(ValueError, match="top_k=20 exceeds num_classes=10"):
        build_projector("conse", 8, 4, num_classes=10, top_k=20)
    with pytest.raises(ValueError, match="unknown built-in connector"):
        concepts.built_in_checkpoint("photo concepts (nope)")
    proj = build_projector("conse", 8, 4, num_classes=10, top_k=3)
    proj.set_input_stats(torch.randn(5, 3, 8) * 7 + 2)  # the trainer does this; the head must still see raw features
    assert torch.equal(proj.input_mean, torch.zeros(8)) and torch.equal(proj.input_std, torch.ones(8))
    probs = proj.concept_probs(torch.randn(2, 4, 8))
    assert probs.shape == (2, 5, 10) and np.allclose(probs.sum(-1).detach().numpy(), 1.0, atol=1e-5)
