"""The built-in Describe captioner (vlmviz.caption.builtin, vlmviz.builtins.build_describe) built with tiny settings
(the tiny random Llama, 16 scenes, 2 steps): the checkpoint loads as a captioner and records its recipe, training
data and held-out figures; progress is reported per stage; a cancelled build saves nothing; a built one is reused."""
import pytest

from vlmviz.builtins import DESCRIBE, build_describe, built_in_note
from vlmviz.caption.builtin import BuildCancelled
from vlmviz.caption.captioner import load_captioner
from vlmviz.checkpoints import read_config

TINY = dict(n_train=16, n_test=4, steps=2)


def test_describe_builtin_builds_loads_and_records_its_figures(tmp_path, tiny_lm_dir):
    seen = []
    path = build_describe(tmp_path, progress=lambda stage, done, total: seen.append((stage, done, total)),
                          lm=str(tiny_lm_dir), **TINY)
    assert path.parent == tmp_path and path.name.startswith("describe-captioner-")
    stages = [s for s, _, _ in seen]
    assert stages.index("training") < stages.index("captioning")
    assert ("training", 2, 2) in seen and ("captioning", 4, 4) in seen

    config = read_config(path)
    assert config["label"] == DESCRIBE and config["domain"] == "scenes" and config["loss"] == "caption"
    recipe = config["recipe"]
    assert recipe["preset"] == "caption-describe" and recipe["family"] == "multidepth"
    assert recipe["encoder"] == "vit-s14@4+12" and recipe["n_train"] == 16 and recipe["steps"] == 2
    assert "16 synthetic one-object scenes" in config["trained_on"]
    assert config["split"]["train_size"] == 16 and config["split"]["test_size"] == 4
    m = config["metrics"]
    for key in ("color", "shape", "size", "position", "all4", "one_object", "prior_all4"):
        assert 0 <= m[key] <= 1, key
    assert m["N_test"] == 4 and m["heldout_loss"] > 0 and len(config["examples"]) == 4
    assert config["stats"]["train_s"] > 0 and config["steps"] == 2

    captioner = load_captioner(path)
    try:
        assert captioner.tokens == "patch" and captioner.projector.family == "multidepth"
        assert captioner.projector.num_output_tokens(257) == 16 + 4  # 16 block-4 tokens, 4 block-12 tokens
        said = captioner.describe(["assets/gallery/astronaut.jpg"], max_new_tokens=4)
        assert len(said) == 1 and isinstance(said[0], str)
    finally:
        captioner.close()

    again = build_describe(tmp_path, progress=lambda *a: pytest.fail("a built one must not be built again"),
                           lm=str(tiny_lm_dir), **TINY)
    assert again == path


def test_describe_builtin_cancelled_saves_nothing(tmp_path, tiny_lm_dir):
    steps = []

    def progress(stage, done, total):
        if stage == "training":
            steps.append(done)

    with pytest.raises(BuildCancelled, match="after 1 of 3 training steps"):
        build_describe(tmp_path, progress=progress, should_stop=lambda: len(steps) >= 1, lm=str(tiny_lm_dir),
                       n_train=16, n_test=4, steps=3)
    assert steps == [1] and not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(BuildCancelled, match="before encoding"):
        build_describe(tmp_path, should_stop=lambda: True, lm=str(tiny_lm_dir), **TINY)


def test_the_describe_note_states_its_held_out_figure(tmp_path, tiny_lm_dir, monkeypatch):
    from vlmviz import builtins

    path = build_describe(tmp_path, lm=str(tiny_lm_dir), **TINY)
    monkeypatch.setattr(builtins, "built_in_checkpoint", lambda label: path)
    note = built_in_note(DESCRIBE)
    assert "16 synthetic one-object scenes" in note and "all right in" in note and "multidepth" in note


def test_the_builtin_is_the_model_caption_eval_scores(tmp_path, tiny_lm_dir, monkeypatch):
    """`caption-eval --preset caption-describe` and the built-in train the same weights (same code, data and seed)."""
    from safetensors.torch import load_file

    from vlmviz import config
    from vlmviz.caption.evaluate import run_caption_eval

    short = config.preset("caption-describe")
    short.train.steps, short.train.warmup_steps = 3, 1
    monkeypatch.setitem(config.PRESETS, "caption-describe", short)
    run_caption_eval(preset="caption-describe", n_train=16, n_test=4, lm=str(tiny_lm_dir), max_new_tokens=3,
                     out_dir=tmp_path / "eval", log=lambda line: None)
    built = build_describe(tmp_path / "built", lm=str(tiny_lm_dir), n_train=16, n_test=4)
    scored = load_file(str(tmp_path / "eval" / "caption-describe-prefix.safetensors"))
    mine = load_file(str(built))
    assert scored.keys() == mine.keys()
    assert all((scored[k] == mine[k]).all() for k in scored)
