"""Data: the captioned gallery, synthetic scenes with held-out combinations, digits, user folders with bad rows."""
import json

import numpy as np
import pytest
from PIL import Image

from vlmviz.data import (list_datasets, load_coco_captions, load_dataset, load_digits_dataset, load_gallery,
                         load_imagefolder, make_scenes, scene_split)
from vlmviz.data.scenes import COLORS, SHAPES, held_out_combos
from vlmviz.paths import ASSETS


def test_gallery_has_real_captioned_licensed_images():
    items = load_gallery()
    assert len(items) >= 12
    licenses = (ASSETS / "LICENSES.md").read_text()
    for item in items:
        assert item.path.is_file() and Image.open(item.path).size[0] > 100
        assert len(item.distractors) >= 3 and item.caption not in item.distractors
        assert item.license and item.path.name in licenses


def test_scenes_are_deterministic_and_captions_match_meta():
    a, b = make_scenes(6, seed=3), make_scenes(6, seed=3)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    assert [s.caption for s in make_scenes(6, seed=4)] != [s.caption for s in a]
    for s in make_scenes(20, seed=1) + make_scenes(20, seed=1, objects=2):
        assert s.meta["color"] in s.caption and s.meta["shape"] in s.caption
        assert s.meta["swapped"] != s.meta["canonical"]
        assert s.image.size == (224, 224)


@pytest.mark.parametrize("objects", [1, 2])
def test_split_holds_out_whole_combinations(objects):
    train, test = scene_split(300, 60, seed=0, objects=objects)
    held = held_out_combos(0)
    keys = ("color", "shape"), ("color2", "shape2")

    def combos(s):
        return {(s.meta[c], s.meta[h]) for c, h in keys if c in s.meta}

    seen = set().union(*(combos(s) for s in train))
    assert not seen & held  # no held-out pairing is ever seen in training
    assert all(combos(s) <= held for s in test)  # test uses only held-out pairings
    assert {c for c, _ in seen} == set(COLORS) and {s for _, s in seen} == set(SHAPES)  # every value is seen
    if objects == 2:
        assert all(s.meta["swapped_role"] != s.meta["canonical"] for s in test)


def test_swappable_training_scenes_never_give_the_binding_away():
    held = held_out_combos(0)

    def swap_is_seen(s):
        m = s.meta
        return (m["color"], m["shape2"]) not in held and (m["color2"], m["shape"]) not in held

    plain, plain_test = scene_split(300, 40, seed=0, objects=2)
    train, test = scene_split(300, 40, seed=0, objects=2, swappable=True)
    assert 0.3 < sum(map(swap_is_seen, plain)) / len(plain) < 0.7  # by default the pairs often tell the binding
    assert all(map(swap_is_seen, train))  # here never: the exchanged pairing is always a seen one too
    assert [s.caption for s in test] == [s.caption for s in plain_test]  # the test scenes are the same
    with pytest.raises(ValueError, match="objects=2"):
        scene_split(10, 5, objects=1, swappable=True)


def test_digits_captions_match_labels():
    names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    for s in load_digits_dataset(30):
        assert names[s.meta["label"]] in s.caption and s.image.size == (224, 224)


def _folder(tmp_path):
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "blue.png")
    (tmp_path / "fake.jpg").write_text("not an image")
    return tmp_path


def test_imagefolder_jsonl_reports_bad_rows_by_line(tmp_path):
    folder = _folder(tmp_path)
    lines = ['{"file_name": "red.png", "text": "a red square"}', '{"file_name": "missing.png", "text": "x"}',
             '{"file_name": "fake.jpg", "text": "a fake"}', '{"file_name": "blue.png", "text": "  "}',
             "{broken json", '{"file_name": "blue.png", "caption": "a blue square"}']
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    result = load_imagefolder(folder)
    assert [s.caption for s in result.samples] == ["a red square", "a blue square"]
    assert {p.line: p.message for p in result.problems}.keys() == {2, 3, 4, 5}
    assert "not found" in str(result.problems[0]) and "line 2 (missing.png)" in str(result.problems[0])
    assert "empty caption" in str(result.problems[2]) and "not valid JSON" in str(result.problems[3])


def test_rows_of_the_wrong_type_are_reported_and_the_rest_load(tmp_path):
    folder = _folder(tmp_path)
    lines = ['{"file_name": 9, "text": "a number"}', '{"file_name": "red.png", "text": ["a", "list"]}',
             '{"file_name": "blue.png", "text": "a blue square", "color": "blue"}']
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    result = load_imagefolder(folder)
    assert [(s.caption, s.meta) for s in result.samples] == [("a blue square", {"color": "blue"})]
    assert [(p.line, p.message) for p in result.problems] == [(1, "file_name must be a string, got 9"),
                                                               (2, "caption must be a string, got list")]
    coco = {"images": [{"id": 1, "file_name": "red.png"}],
            "annotations": [{"image_id": 1, "caption": ["a", "list"]}, {"image_id": 1, "caption": "a red square"}]}
    (folder / "c.json").write_text(json.dumps(coco))
    result = load_coco_captions(folder / "c.json")
    assert [s.caption for s in result.samples] == ["a red square"]
    assert str(result.problems[0]) == "line 0 (red.png): caption must be a string, got list"
    (folder / "bad.json").write_text(json.dumps({"images": 5, "annotations": []}))
    with pytest.raises(ValueError, match="expected COCO captions JSON with 'images' and 'annotations' lists"):
        load_coco_captions(folder / "bad.json")


def test_imagefolder_csv_and_missing_metadata(tmp_path):
    folder = _folder(tmp_path)
    (folder / "metadata.csv").write_text("file_name,text\nred.png,a red square\nfake.jpg,a fake\n")
    result = load_imagefolder(folder)
    assert len(result.samples) == 1 and result.problems[0].line == 3
    with pytest.raises(ValueError, match="metadata.jsonl or metadata.csv"):
        load_imagefolder(_empty(tmp_path))


def _empty(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path


def test_coco_captions(tmp_path):
    folder = _folder(tmp_path)
    coco = {"images": [{"id": 1, "file_name": "red.png"}, {"id": 2, "file_name": "fake.jpg"}],
            "annotations": [{"image_id": 1, "caption": "a red square"}, {"image_id": 1, "caption": "red"},
                            {"image_id": 2, "caption": "fake"}, {"image_id": 9, "caption": "ghost"},
                            {"image_id": 1, "caption": ""}]}
    (folder / "captions.json").write_text(json.dumps(coco))
    result = load_coco_captions(folder / "captions.json")
    assert [s.caption for s in result.samples] == ["a red square", "red"]
    assert [p.line for p in result.problems] == [2, 3, 4]
    assert load_dataset(str(folder / "captions.json")).samples[0].caption == "a red square"


def test_named_datasets_load():
    assert list_datasets() == ["gallery", "scenes-1obj", "scenes-2obj", "scenes-3obj", "scenes-count",
                               "scenes-2obj-rel", "scenes-3obj-rel", "digits"]
    for name in list_datasets():
        assert len(load_dataset(name, n=5).samples) == 5
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


def test_relation_holdout_keeps_every_shape_and_relation_in_training():
    from vlmviz.data.scenes import INVERSE, RELATIONS, SHAPES, held_out_relations

    train, test = scene_split(300, 60, seed=0, objects=2, holdout="relation")
    held = held_out_relations(0)

    def facts(s):  # "a circle left of a square" is also "a square right of a circle"
        m = s.meta
        return {(m["shape"], m["relation"]), (m["shape2"], INVERSE[m["relation"]])}

    seen = set().union(*map(facts, train))
    assert seen.isdisjoint(held)  # no held-out (shape, relation) pairing is trained on, in either phrasing
    assert all(facts(s) & held for s in test)
    assert {sh for sh, _ in seen} == set(SHAPES) and {r for _, r in seen} == set(RELATIONS)


def test_relation_facts_are_stated_canonically():
    """A converse phrasing is the same fact: its meta and canonical caption match; the role twin reverses the
    arrangement, which is a different fact."""
    from vlmviz.data.scenes import INVERSE, canonical_order

    assert canonical_order([("blue", "square"), ("red", "circle")], "right of") == (
        [("red", "circle"), ("blue", "square")], "left of")
    converse = 0
    for s in make_scenes(40, seed=5, objects=2):
        m = s.meta
        assert m["relation"] in ("left of", "above")
        first, second = f"{m['color']} {m['shape']}", f"{m['color2']} {m['shape2']}"
        if INVERSE[m["relation"]] in s.caption:  # drawn as "B right of A": A is named last
            converse += 1
            assert s.caption.index(second) < s.caption.index(first)
        else:
            assert s.caption.index(first) < s.caption.index(second)
        assert m["canonical"].endswith(f"{first} {m['relation']} a {second}".replace("a o", "an o"))
        assert m["swapped_role"].endswith(f"{second} {m['relation']} a {first}".replace("a o", "an o"))
    assert 5 < converse < 35  # both phrasings occur


def test_three_object_and_counted_scenes_state_what_they_draw():
    import numpy as np

    from vlmviz.data.scenes import INVERSE

    for s in make_scenes(12, seed=2, objects=3):
        m = s.meta
        assert len({m["color"], m["color2"], m["color3"]}) >= 2 and m["relation"] in ("left of", "above")
        assert m["relation"] in s.caption or INVERSE[m["relation"]] in s.caption
        assert m["canonical"].count(m["relation"]) == 2  # a row or a column read first to last
        assert m["swapped"] != m["canonical"] and m["swapped_role"] != m["canonical"]
    counted = make_scenes(30, seed=1, counts=True)
    assert {s.meta["count"] for s in counted} == {1, 2, 3}
    for s in counted:
        word = {1: "one", 2: "two", 3: "three"}[s.meta["count"]]
        assert s.meta["canonical"].startswith(word) and not s.meta["swapped_count"].startswith(word)
        # the drawing has as many blobs of the stated color as the caption says: count colored pixels' columns/rows
        pixels = np.asarray(s.load()).astype(int)
        colored = (pixels.max(-1) - pixels.min(-1)) > 60  # saturated pixels: the shapes, not the gray background
        profile = colored.any(0) if s.meta["position"] in ("top", "bottom", "center") else colored.any(1)
        runs = int(np.sum(np.diff(profile.astype(int)) == 1) + profile[0])
        assert runs == s.meta["count"], (s.caption, runs)
    with pytest.raises(ValueError, match="holdout"):
        scene_split(10, 5, objects=1, holdout="relation")


def test_connectors_train_on_canonical_statements_only_where_a_relation_is_stated():
    from vlmviz.eval.openset import training_caption

    one = make_scenes(10, seed=2)
    assert [training_caption(s) for s in one] == [s.caption for s in one]  # templates kept: "a photo of ..."
    two = make_scenes(30, seed=2, objects=2)
    assert [training_caption(s) for s in two] == [s.meta["canonical"] for s in two]
    assert any(s.caption.replace("a photo of ", "") != s.meta["canonical"] for s in two)  # converse phrasings
