"""The built-in scenes connector, its scenes gallery and the domain note, with the real bundled models.

The built-in is built once (scripts/setup.sh does it ahead of the tests; otherwise the first test here builds it,
about 2 minutes) and cached under $VLMVIZ_CACHE/connectors. Its held-out figure is a measured property of a
seeded build on deterministic models (BENCHMARKS.md, "The built-in scenes connector"), so it is asserted.
"""
import pytest

from vlmviz import builtins
from vlmviz.runs import scene_connector
from vlmviz.checkpoints import read_config
from vlmviz.data import load_gallery
from vlmviz.views.domain import choice_note, domain_note
from vlmviz.views.pipeline import Pipeline, resolve_pipeline
from vlmviz.projectors import build_projector

MEASURED_R1 = 0.980  # the build's held-out open-set R@1 on this recipe (BENCHMARKS.md); 0.988 on 4000 scenes


def test_domain_note_says_what_fits_and_what_does_not():
    scenes = {"domain": "scenes", "metrics": {"i2t_R@1": 0.98, "candidates": 290}}
    assert domain_note(scenes, "photo") == ("this connector was trained on synthetic shapes; "
                                            "on a photo its ranking means little")
    assert "of that kind" in domain_note(scenes, "scene") and "0.98" in domain_note(scenes, "scene")
    assert "only if your image" in domain_note(scenes, "upload")
    assert "means little" in domain_note({"domain": "photos"}, "scene")
    assert "chance" in domain_note(None, "photo") and "chance" in domain_note({}, "scene")
    # a checkpoint trained in the app on scenes records only its dataset; a folder is named, never its path
    assert "synthetic shapes" in domain_note({"split": {"dataset": "scenes-2obj"}}, "photo")
    assert domain_note({"dataset": "/srv/tmp/my_cats"}, "scene").startswith("this connector was trained on 'my_cats'")
    assert "not recorded" in domain_note({"source": "mm_projector.bin"}, "photo")
    with pytest.raises(ValueError, match="image_source must be one of"):
        domain_note(None, "painting")


def test_built_ins_are_listed_photo_first_and_unknown_names_say_the_valid_ones():
    assert list(builtins.BUILT_IN) == [builtins.PHOTO_CONSE, builtins.SCENES_LOWRANK]
    # picking a scene swaps a built-in for the one that fits; the user's own or an untrained choice stays
    assert builtins.fitting_built_in(builtins.PHOTO_CONSE, "scene") == builtins.SCENES_LOWRANK
    assert builtins.fitting_built_in(builtins.SCENES_LOWRANK, "photo") == builtins.PHOTO_CONSE
    assert builtins.fitting_built_in("untrained linear", "scene") == "untrained linear"
    assert builtins.fitting_built_in("my run", "photo") == "my run"
    with pytest.raises(ValueError, match="valid: photo concepts"):
        builtins.built_in_checkpoint("scenes (nope)")


@pytest.fixture(scope="module")
def scenes_pipe():
    # the app's path: a built-in choice brings its own encoder, token view and text space, whatever the top bar says
    return resolve_pipeline(builtins.SCENES_LOWRANK, {}, "efficientnet-lite0", "minilm-l6", "patch")


@pytest.mark.slow
def test_checkpoint_records_recipe_training_data_and_held_out_figures(scenes_pipe):
    config = read_config(builtins.built_in_checkpoint(builtins.SCENES_LOWRANK))
    assert config["domain"] == "scenes" and config["label"] == builtins.SCENES_LOWRANK
    assert config["recipe"] == scene_connector.RECIPE and "synthetic one-object scenes" in config["trained_on"]
    assert config["split"]["dataset"] == "scenes-1obj" and config["split"]["train_size"] == scene_connector.N_TRAIN
    m = config["metrics"]
    assert m["i2t_R@1"] >= MEASURED_R1 - 0.02 and m["N_test"] == 200
    assert min(m[f"acc_{a}"] for a in ("color", "shape", "size", "position")) >= 0.95, m
    assert (scenes_pipe.encoder.name, scenes_pipe.tokens, scenes_pipe.text.name) == (
        "vit-s14@4", "cls+mean+max", "smollm2-135m")


@pytest.mark.slow
def test_scenes_gallery_ranks_the_true_caption_first(scenes_pipe):
    items = scene_connector.scenes_gallery()
    assert len(items) == 6 and len({(i.caption) for i in items}) == 6
    for item in items:
        assert item.path.exists() and len(item.distractors) == 5 and item.caption not in item.distractors
    firsts = sum(scenes_pipe.rank_captions(i.path, [i.caption, *i.distractors])[0]["caption"] == i.caption
                 for i in items)
    assert firsts >= 5, firsts
    for item in items:  # the color-swapped twin, the hardest distractor, comes first: only the color (and its
        true, twin = item.caption.split(), item.distractors[0].split()  # article, 'a' / 'an') differ
        assert len(true) == len(twin) and 1 <= sum(a != b for a, b in zip(true, twin)) <= 2, (true, twin)


@pytest.mark.slow
def test_domain_note_on_real_pipelines(scenes_pipe):
    assert domain_note(scenes_pipe, "photo").endswith("on a photo its ranking means little")
    assert "held-out R@1" in domain_note(scenes_pipe, "scene")
    untrained = Pipeline(None, None, build_projector("linear", 4, 4), label="untrained linear")  # no checkpoint
    assert "chance" in domain_note(untrained, "photo")
    photo = read_config(builtins.built_in_checkpoint(builtins.PHOTO_CONSE))
    assert "gallery photos" in domain_note(photo, "photo") and "means little" in domain_note(photo, "scene")
    # the app's path: its Connector choice and the file data of the image it ranked
    photo_file = {"path": str(load_gallery()[0].path)}
    assert choice_note(builtins.SCENES_LOWRANK, {}, photo_file).endswith("on a photo its ranking means little")
    assert "chance" in choice_note("untrained linear", {}, photo_file)
    assert "of that kind" in choice_note(builtins.SCENES_LOWRANK, {}, scene_connector.scenes_gallery()[0].path)


def test_image_source_is_read_from_the_file_not_its_path(tmp_path):
    import shutil

    from vlmviz.views.domain import image_source

    photo, scene = load_gallery()[0].path, scene_connector.scenes_gallery()[0].path
    assert image_source(str(photo)) == "photo" and image_source(scene) == "scene"
    copy = shutil.copy(scene, tmp_path / "upload.png")  # the app gets a copy in its own temp folder
    assert image_source(copy) == "scene" and image_source({"path": str(copy), "orig_name": "x.png"}) == "scene"
    (tmp_path / "other.png").write_bytes(b"not a gallery image")
    assert image_source(tmp_path / "other.png") == "upload" and image_source(None) == "upload"
