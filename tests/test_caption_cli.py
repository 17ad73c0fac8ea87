"""LLaVA stage 1 from the command line and the caption measurement: train --loss caption, describe, caption-eval.
The tiny random Llama folder (conftest.tiny_lm_dir) runs every path in seconds, in this process through main()
(exit codes included), and once through the real SmolLM2-135M."""
import json
from types import SimpleNamespace

import pandas as pd

from vlmviz.__main__ import main
from vlmviz.caption.model import attribute_hits
from vlmviz.checkpoints import read_config


def run_main(capsys):
    def run(*args, check=True):
        code = main(list(args))
        out = capsys.readouterr()
        if check:
            assert code == 0, out.err[-3000:]
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run

GALLERY = ["assets/gallery/astronaut.jpg", "assets/gallery/brick.jpg"]


def test_train_caption_xattn_then_describe_on_a_tiny_lm(tmp_path, tiny_lm_dir, capsys):
    vlmviz = run_main(capsys)
    ck = tmp_path / "cap.safetensors"
    out = vlmviz("train", "--loss", "caption", "--projector", "resampler", "--option", "num_queries=4",
                 "--option", "num_heads=4", "--tokens", "patch", "--text", str(tiny_lm_dir), "--caption-mode",
                 "xattn", "--steps", "3", "--n-train", "16", "--n-test", "4", "--device", "cpu",
                 "--out", str(ck)).stdout
    assert "caption_loss" in out and "held-out truth" in out and f"checkpoint: {ck}" in out
    config = read_config(ck)
    assert config["loss"] == "caption" and config["pooling"] == "none" and config["steps"] == 3
    assert config["caption"]["mode"] == "xattn" and config["extra"] == ["xattn"]
    assert config["config"]["train"]["batch_size"] == 8  # the caption defaults, not the retrieval ones
    lines = vlmviz("describe", str(ck), *GALLERY, "--max-new-tokens", "5").stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == GALLERY
    sampled = vlmviz("describe", str(ck), GALLERY[0], "--sample", "--temperature", "1.2", "--top-p", "0.95",
                     "--seed", "3", "--max-new-tokens", "5").stdout
    assert sampled.startswith(GALLERY[0] + ":")
    assert "text-only" in vlmviz("describe", "--text-only", str(ck), "--max-new-tokens", "5").stdout


def test_describe_refuses_bad_input_with_exit_code_2(tmp_path, tiny_lm_dir, capsys):
    vlmviz = run_main(capsys)
    ck = tmp_path / "cap.safetensors"
    vlmviz("train", "--loss", "caption", "--projector", "linear", "--tokens", "cls+mean", "--text", str(tiny_lm_dir),
           "--steps", "1", "--n-train", "8", "--n-test", "2", "--out", str(ck))
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    proc = vlmviz("describe", str(ck), str(fake), check=False)
    assert proc.returncode == 2 and "not a readable image" in proc.stderr
    proc = vlmviz("describe", str(ck), check=False)
    assert proc.returncode == 2 and "at least one image" in proc.stderr
    retrieval = tmp_path / "ret.safetensors"
    vlmviz("train", "--projector", "linear", "--tokens", "cls+mean", "--loss", "cosine", "--steps", "1",
           "--n-train", "8", "--n-test", "2", "--batch-size", "4", "--out", str(retrieval))
    proc = vlmviz("describe", str(retrieval), GALLERY[0], check=False)
    assert proc.returncode == 2 and "not 'caption'" in proc.stderr and "--loss caption" in proc.stderr
    proc = vlmviz("train", "--loss", "caption", "--pooling", "mean", "--steps", "1", check=False)
    assert proc.returncode == 2 and "pooling 'none'" in proc.stderr


def test_caption_stage_one_through_the_real_smollm2(tmp_path, capsys):
    """The issue's command on the bundled SmolLM2-135M, two steps; then describe an image and the text-only LM."""
    vlmviz = run_main(capsys)
    ck = tmp_path / "smol.safetensors"
    out = vlmviz("train", "--loss", "caption", "--pooling", "none", "--projector", "resampler", "--option",
                 "num_queries=8", "--tokens", "patch", "--steps", "2", "--n-train", "8", "--n-test", "2",
                 "--out", str(ck))
    assert "training" in out.stderr and "100%" in out.stderr  # the tqdm bar
    assert read_config(ck)["caption"]["lm"] == "smollm2-135m"
    said = vlmviz("describe", str(ck), GALLERY[1], "--max-new-tokens", "8").stdout
    assert said.startswith(GALLERY[1] + ": ") and len(said.split(": ", 1)[1].strip()) > 0


def test_attribute_hits_know_sizes():
    meta = {"color": "red", "shape": "star", "size": "large", "position": "top"}
    hits = attribute_hits("a large red star at the top", meta)
    assert hits == {"color": True, "shape": True, "size": True, "position": True}
    assert attribute_hits("a small red star", meta)["size"] is False


def test_caption_eval_on_a_tiny_lm(tmp_path, tiny_lm_dir):
    from vlmviz.caption.evaluate import best_constant, run_caption_eval, score
    from vlmviz.data import scene_split

    logs = []
    kw = dict(connectors=["resampler", "linear-pooled"], steps=3, n_train=16, n_test=6, lm=str(tiny_lm_dir),
              max_new_tokens=5, out_dir=tmp_path, log=logs.append)
    table = run_caption_eval(**kw)
    assert list(table.connector) == ["best constant caption (prior)", "text-only LM", "untrained resampler",
                                     "resampler", "resampler", "untrained linear-pooled", "linear-pooled",
                                     "linear-pooled"]
    assert list(table["mode"]) == ["-", "-", "prefix", "prefix", "xattn", "prefix", "prefix", "xattn"]
    for col in ("color", "shape", "size", "position", "all4", "one_object", "distinct"):
        assert table[col].between(0, 1).all(), col
    trained = table[table.steps == 3]
    assert (trained.steps_per_s > 0).all() and (trained.trainable > 0).all()
    assert list(trained.tokens) == [8, 8, 1, 1]
    _, test = scene_split(16, 6, seed=0)
    assert table.iloc[0][["color", "shape", "all4"]].tolist() == [best_constant(test)[k] for k in
                                                                  ("color", "shape", "all4")]
    assert (tmp_path / "caption_eval.md").exists() and len((tmp_path / "examples.jsonl").read_text().splitlines()) == 7
    again = run_caption_eval(**kw)  # same recipe: checkpoints are loaded, not retrained, and give the same table
    assert sum("loaded" in line for line in logs) == 4
    assert again[["color", "shape", "heldout_loss"]].equals(table[["color", "shape", "heldout_loss"]])
    # the scoring itself, on captions written by hand
    said = [test[0].meta["canonical"], "two red circles", test[0].meta["canonical"]]
    s = score(said, [test[0], test[0], test[1]])
    assert s["one_object"] == 2 / 3 and s["distinct"] == 2 / 3
    assert json.loads((tmp_path / "examples.jsonl").read_text().splitlines()[0])["row"] == "text-only LM / -"


def test_relation_hits_read_either_phrasing_against_the_canonical_fact():
    from vlmviz.caption.model import relation_hits

    meta = {"color": "red", "shape": "circle", "relation": "left of", "color2": "blue", "shape2": "square"}
    right = {"color": True, "shape": True, "relation": True, "all": True, "two_objects": True}
    assert relation_hits("a red circle left of a blue square", meta) == right
    assert relation_hits("a photo of a blue square right of a red circle", meta) == right  # the converse phrasing
    roles = relation_hits("a blue circle left of a red square", meta)  # colors bound to the wrong shapes
    assert roles["shape"] and roles["relation"] and not roles["color"] and not roles["all"]
    assert relation_hits("a red circle above a blue square", meta)["relation"] is False
    # the right word with the objects swapped: the square named on the left
    assert relation_hits("a blue square left of a red circle", meta)["relation"] is False
    assert relation_hits("a red circle left of a square", meta)["two_objects"] is False  # one color only


def test_caption_eval_relations_and_presets_on_a_tiny_lm(tmp_path, tiny_lm_dir, capsys, monkeypatch):
    from vlmviz import config
    from vlmviz.caption.evaluate import run_caption_eval

    kw = dict(steps=2, n_train=16, n_test=4, lm=str(tiny_lm_dir), max_new_tokens=5, log=lambda line: None)
    table = run_caption_eval(connectors=["pixel_shuffle-2depth-8"], modes=["prefix"], encoder="vit-s14@4+12",
                             objects=2, warmup=1, out_dir=tmp_path / "rel", **kw)
    trained = table[table.connector == "pixel_shuffle-2depth-8"].iloc[0]
    assert trained.tokens == 16 + 4 and trained.train_cpu_s > 0
    for col in ("color", "shape", "relation", "all5", "two_objects"):
        assert table[col].between(0, 1).all(), col
    assert read_config(tmp_path / "rel" / "pixel_shuffle-2depth-8-prefix.safetensors")["recipe"]["objects"] == 2
    # echo: the connector first trained alone to make its first tokens the statement's words, then with the LM
    table = run_caption_eval(connectors=["resampler"], modes=["prefix"], encoder="vit-s14@4+12", objects=2, warmup=1,
                             echo_steps=3, echo_weight=1.0, out_dir=tmp_path / "echo", **kw)
    assert 0 <= table.iloc[-1].echo_read <= 1 and table.iloc[-1].tokens == 8
    recipe = read_config(tmp_path / "echo" / "resampler-prefix.safetensors")["recipe"]
    assert (recipe["echo_steps"], recipe["echo_weight"]) == (3, 1.0)
    # a preset is the one connector, with its encoder and training settings (here the real one, made 3 steps long)
    real = config.PRESETS["caption-describe"]
    assert real.encoder.name == "vit-s14@4+12" and real.projector.family == "multidepth"
    short = config.preset("caption-describe")
    short.train.steps, short.train.warmup_steps = 3, 1
    monkeypatch.setitem(config.PRESETS, "caption-describe", short)
    table = run_caption_eval(preset="caption-describe", out_dir=tmp_path / "preset", **kw)
    assert list(table.connector)[-1] == "caption-describe" and table.iloc[-1].steps == 3
    recipe = read_config(tmp_path / "preset" / "caption-describe-prefix.safetensors")["recipe"]
    assert recipe["encoder"] == "vit-s14@4+12" and recipe["warmup"] == 1 and recipe["mode"] == "prefix"
    vlmviz = run_main(capsys)
    # caption-relations trains on two-object relation scenes unless --objects says otherwise (made 2 steps long)
    rel = config.preset("caption-relations")
    assert (rel.train.lr, rel.train.steps, rel.projector.options) == (2e-3, 400, short.projector.options)
    rel.train.steps, rel.train.warmup_steps = 2, 1
    monkeypatch.setitem(config.PRESETS, "caption-relations", rel)
    vlmviz("caption-eval", "--preset", "caption-relations", "--n-train", "16", "--n-test", "4", "--lm",
           str(tiny_lm_dir), "--max-new-tokens", "4", "--contrast", "1", "--out-dir", str(tmp_path / "relations"))
    recipe = read_config(tmp_path / "relations" / "caption-relations-prefix.safetensors")["recipe"]
    assert recipe["objects"] == 2 and recipe["lr"] == 2e-3 and recipe["steps"] == 2
    assert "contrast" not in recipe  # decoding only: the checkpoint is the one trained without it
    assert "all5" in (tmp_path / "relations" / "caption_eval.md").read_text()
    modes = list(pd.read_csv(tmp_path / "relations" / "caption_eval.csv").tail(2)["mode"])
    assert modes == ["prefix", "prefix, VCD alpha 1"]  # the same checkpoint decoded both ways, side by side
    proc = vlmviz("caption-eval", "--preset", "caption-relations", "--contrast", "-1", check=False)
    assert proc.returncode == 2 and "contrast (VCD alpha) must be >= 0, got -1.0" in proc.stderr
    proc = vlmviz("caption-eval", "--preset", "caption-relations", "--ground-words", "nan", check=False)
    assert proc.returncode == 2 and "word_weight (--ground-words) must be >= 0, got nan" in proc.stderr
    proc = vlmviz("caption-eval", "--preset", "caption-relations", "--echo-steps", "-3", check=False)
    assert proc.returncode == 2 and "echo weight and steps must be >= 0" in proc.stderr
    proc = vlmviz("caption-eval", "--connector", "pixel_shuffle-2depth", "--encoder", "vit-s14@4", "--lm",
                  str(tiny_lm_dir), check=False)
    assert proc.returncode == 2 and "vit-s14@4+12" in proc.stderr
    proc = vlmviz("caption-eval", "--preset", "caption-describe", "--connector", "resampler", check=False)
    assert proc.returncode == 2 and "drop --connector" in proc.stderr
