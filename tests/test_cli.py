"""The command line end to end on real bundled models, and data-parallel training through torchrun (gloo, CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "scenes-1obj", "--n-train", "32", "--n-test", "8", "--encoder", "vit-s14",
         "--tokens", "cls+mean", "--text", "smollm2-135m", "--projector", "linear", "--loss", "cosine",
         "--steps", "6", "--batch-size", "8", "--lr", "1e-3", "--eval-every", "3", "--device", "cpu"]


def vlmviz(*args, launcher=(), check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*launcher, *(["-m", "vlmviz"] if launcher else [sys.executable, "-m", "vlmviz"]),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_bad_arguments_give_a_clear_message():
    proc = vlmviz("train", "--projector", "transformer9000", "--steps", "1", check=False)
    assert proc.returncode != 0 and "unknown projector 'transformer9000'" in proc.stderr
    proc = vlmviz("train", "--loss", "hinge", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_embed_train_eval_export_import(tmp_path):
    out = vlmviz("embed", "--dataset", "scenes-1obj", "--n-train", "32", "--n-test", "8").stdout
    assert "40 images" in out
    ck = tmp_path / "p.safetensors"
    out = vlmviz("train", *SMALL, "--out", str(ck)).stdout
    assert "checkpoint:" in out and ck.exists() and "i2t_R@1" in out
    report = json.loads(vlmviz("eval", str(ck), "--n-train", "32", "--n-test", "8").stdout)
    assert report["closed_set"]["N"] == 8
    opened = report["open_set"]  # every seen and held-out caption plus each test caption's swapped twin competes
    assert opened["N_test"] == 8 and opened["candidates"] > 8 and 0.0 <= opened["swap_acc"] <= 1.0
    assert {"acc_color", "acc_shape", "acc_position", "colliding_captions"} <= opened.keys()
    bin_path = tmp_path / "mm_projector.bin"
    vlmviz("export", str(ck), "--out", str(bin_path))
    assert "model.mm_projector.weight" in torch.load(bin_path, weights_only=True)
    out = vlmviz("import", str(bin_path), "--encoder", "vit-s14", "--tokens", "cls+mean", "--text",
                 "smollm2-135m", "--out", str(tmp_path / "back.safetensors")).stdout
    assert "linear 768 -> 576" in out
    proc = vlmviz("import", str(bin_path), "--encoder", "vit-s14", "--tokens", "patch", "--text", "smollm2-135m",
                  check=False)
    assert proc.returncode == 2 and "expects D_vis=768" in proc.stderr


def test_train_at_a_layer_with_hard_negatives_and_eval_the_checkpoint(tmp_path):
    """The frontier recipe from the command line: ViT-S/14 read after block 4, the 4 x 4 max grid, hard negatives,
    weight decay; the checkpoint records all of it and eval reads the encoder at the recorded layer."""
    from vlmviz.checkpoints import load_checkpoint

    ck = tmp_path / "two.safetensors"
    args = ["--dataset", "scenes-2obj", "--n-train", "40", "--n-test", "8", "--encoder", "vit-s14@4", "--tokens",
            "cls+maxgrid", "--text", "minilm-l6", "--projector", "lowrank", "--option", "rank=8", "--steps", "4",
            "--batch-size", "16", "--eval-every", "0", "--weight-decay", "0.5"]
    vlmviz("train", *args, "--hard-negatives", "--out", str(ck))
    _, config = load_checkpoint(ck)
    assert config["encoder"] == "vit-s14@4" and config["config"]["train"]["hard_negatives"] is True
    assert config["config"]["train"]["weight_decay"] == 0.5
    report = json.loads(vlmviz("eval", str(ck), "--n-train", "40", "--n-test", "8").stdout)
    assert report["open_set"]["N_test"] == 8 and "role_swap_acc" in report["open_set"]
    proc = vlmviz("train", *args, "--loss", "cosine", "--hard-negatives", check=False)
    assert proc.returncode == 2 and "hard negatives need loss infonce or sigmoid" in proc.stderr


def test_two_gloo_processes_match_one_process(tmp_path):
    """Same global batch: 2 processes x 4 images (gradients averaged by DDP) equal 1 process x 8 images."""
    vlmviz("embed", "--dataset", "scenes-1obj", "--n-train", "32", "--n-test", "8")  # both ranks hit the cache
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    vlmviz("train", *SMALL, "--out", str(one))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + os.getpid() % 1000)]
    vlmviz("train", *SMALL, "--out", str(two), launcher=torchrun)
    a, b = load_file(str(one)), load_file(str(two))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert not torch.equal(a["linear.weight"], torch.zeros_like(a["linear.weight"]))
