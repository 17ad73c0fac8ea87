"""The facade the app and notebooks share, on the real bundled models."""
import numpy as np
import pytest

from vlmviz.data import load_gallery
from vlmviz.views.pipeline import Pipeline, build_map, get_pipeline


@pytest.fixture(scope="module")
def cat():
    return load_gallery()[3]  # chelsea


def test_patch_heatmap_and_nearest_words_follow_the_token_grid(cat):
    pipe = get_pipeline("vit-s14", "smollm2-135m", "linear", "all")
    grid, note = pipe.patch_similarity(cat.path, cat.caption)
    assert grid.shape == (16, 16) and np.isfinite(grid).all() and "16x16" in note
    rows, note = pipe.nearest_words(cat.path, k=2)
    assert len(rows) == 16 and all(len(r) == 16 for r in rows) and "CLS" in note
    shuffled = Pipeline.build("vit-s14", "smollm2-135m", "pixel_shuffle", "patch")
    grid, _ = shuffled.patch_similarity(cat.path, cat.caption)
    assert grid.shape == (8, 8)
    pooled = Pipeline.build("vit-s14", "smollm2-135m", "linear", "cls+mean")
    grid, note = pooled.patch_similarity(cat.path, cat.caption)
    assert grid is None and "no patch map to draw" in note and "'cls+mean'" in note


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_map_and_metrics_state_n_and_k(method):
    pipe = get_pipeline("vit-s14", "minilm-l6", "linear", "all")
    samples = [g.sample() for g in load_gallery()]
    result = build_map(pipe, samples, method)
    assert len(result.frame) == 2 * len(samples)
    assert set(result.frame.kind) == {"image", "caption"}
    assert result.metrics["N"] == len(samples) and result.metrics["k"] == 10
    assert method.upper() in result.note


def test_python_api_mistakes_say_what_was_expected(cat):
    """The API a notebook user calls: each mistake is a ValueError naming what was expected."""
    from vlmviz.images import load_image

    pipe = Pipeline.build("vit-s14", "minilm-l6", "linear", "cls+mean")
    for captions in (None, [1, 2], 5):
        with pytest.raises(ValueError, match="captions must be text .* or a list of strings"):
            pipe.rank_captions(cat.path, captions)
    with pytest.raises(ValueError, match="got NoneType; expected an image: a file path, PIL image"):
        pipe.rank_captions(None, ["a cat"])
    with pytest.raises(ValueError, match="got NoneType; expected an image"):
        load_image(None)
    assert [r["caption"] for r in pipe.rank_captions(cat.path, ["a cat", "a dog"])] != []


def test_a_map_sample_goes_to_inspect_with_its_caption_first_and_hard_captions_next():
    from PIL import Image

    from vlmviz.data import load_dataset, load_gallery
    from vlmviz.views.pipeline import sample_for_inspect

    scenes = load_dataset("scenes-1obj", n=12, seed=0).samples
    path, captions = sample_for_inspect(scenes, 3)
    assert Image.open(path).size == scenes[3].load().size  # a generated scene, saved where the app may serve it
    assert captions[:2] == [scenes[3].caption, scenes[3].meta["swapped"]] and len(set(captions)) == len(captions) == 6
    photos = load_dataset("gallery").samples
    path, captions = sample_for_inspect(photos, 3)
    cat = load_gallery()[3]
    assert path == str(cat.path) and captions == [cat.caption, *cat.distractors][:6]  # its written distractors
    with pytest.raises(ValueError, match="sample #12 is not on this map; it has #0 to #11"):
        sample_for_inspect(scenes, 12)
