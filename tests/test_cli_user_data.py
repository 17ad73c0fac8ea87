"""The command line on a user's own folders, as a new user meets it (issue 13): separate train and test folders of
class-style captions that repeat, scored against their distinct captions; eval reusing the checkpoint's split;
every ordinary mistake one line on stderr and exit 2, never a traceback, and refused before any encoding."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlmviz.__main__ import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_folder import make_shape_folder  # noqa: E402
from test_cli import vlmviz  # noqa: E402

TRAIN = ["--encoder", "vit-s14", "--tokens", "cls+mean", "--text", "minilm-l6", "--projector", "linear",
         "--steps", "120", "--batch-size", "32", "--eval-every", "60", "--device", "cpu", "--threads", "2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shape_folder(root / "train", 100, seed=0, size=64), make_shape_folder(root / "test", 40, seed=1,
                                                                                      size=64)


@pytest.fixture(scope="module")
def trained(folders, tmp_path_factory):
    """Trained with a non-default seed and test size, so an eval that ignored them would score training images."""
    ck = tmp_path_factory.mktemp("ck") / "shapes.safetensors"
    proc = vlmviz("train", "--dataset", str(folders[0]), "--n-test", "20", "--seed", "1", *TRAIN, "--out", str(ck))
    return ck, proc


def test_train_reports_recall_against_distinct_captions(trained):
    ck, proc = trained
    # 8 colour x shape captions over 100 images: a connector that names each image right scores 1, not 0
    assert "ranked against" in proc.stdout and "distinct captions" in proc.stdout
    after = float(proc.stdout.split("i2t_R@1:")[1].split("->")[1].split()[0])
    assert after >= 0.9, proc.stdout
    assert "Loading weights" not in proc.stderr  # third-party bars stay out of ours


def test_eval_reuses_the_checkpoints_split_and_warns_when_asked_for_another(trained, folders):
    from vlmviz.checkpoints import read_config
    from vlmviz.data.splits import load_split, split_digest

    ck, _ = trained
    recorded = read_config(ck)["split"]
    assert (recorded["seed"], recorded["n_test"], recorded["test_size"]) == (1, 20, 20)
    proc = vlmviz("eval", str(ck))
    report = json.loads(proc.stdout)
    assert report["split"] == {"mode": "test", "dataset": str(folders[0]), "seed": 1, "n_train": 600, "n_test": 20,
                               "N": 20, "same_as_training": True}
    train, test = load_split(str(folders[0]), 600, 20, 1)
    assert split_digest(test) == recorded["test_digest"] and not {s.id for s in train} & {s.id for s in test}
    closed = report["closed_set"]
    assert closed["N"] == 20 and closed["candidates"] == len({s.caption for s in test})
    assert closed["i2t_R@1"] >= 0.9 and closed["t2i_R@1"] >= 0.9
    assert "warning" not in proc.stderr
    proc = vlmviz("eval", str(ck), "--seed", "0")
    assert "warning: the checkpoint trained on the split seed=1" in proc.stderr


def test_eval_scores_every_row_of_another_folder_with_its_attributes(trained, folders, tmp_path):
    ck, _ = trained
    extra = tmp_path / "candidates.txt"
    extra.write_text("a purple triangle\na photo of a dog\n")
    report = json.loads(vlmviz("eval", str(ck), "--dataset", str(folders[1]), "--candidates", str(extra)).stdout)
    assert report["split"] == {"mode": "all", "dataset": str(folders[1]), "N": 40}
    distinct = len({json.loads(r)["text"] for r in (folders[1] / "metadata.jsonl").read_text().splitlines()})
    assert report["closed_set"]["N"] == 40 and report["closed_set"]["candidates"] == distinct
    opened = report["open_set"]
    assert opened["N_test"] == 40 and opened["candidates"] == distinct + 2
    assert opened["acc_color"] >= 0.9 and opened["acc_shape"] >= 0.9  # read from the metadata columns
    assert opened["i2t_R@1"] >= 0.9


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "inf"], "lr must be a number in (0, 1]"),
    (["train", "--lr", "1e12"], "lr must be a number in (0, 1]"),
    (["train", "--n-train", "0"], "n_train must be a positive number of image-caption pairs, got 0"),
    (["train", "--projector", "linear", "--option", "frobnicate=3"], "linear has no option 'frobnicate'"),
    (["train", "--projector", "mlp2x_gelu", "--option", "hidden_dim=abc"],
     "mlp2x_gelu option hidden_dim must be a positive integer, got 'abc'"),
    (["train", "--option", "hidden_dim=64"], "--option sets an option of the connector named by --projector"),
    (["train", "--out", "/etc/hostname/ck.safetensors"], "cannot write the checkpoint /etc/hostname/ck.safetensors"),
    (["train", "--encoder", "nobody/no-such-encoder", "--n-train", "4", "--n-test", "2"],
     "unknown vision encoder 'nobody/no-such-encoder'"),
    (["eval", "missing.safetensors"], "missing.safetensors: not a readable safetensors checkpoint"),
    (["embed", "--threads", "0"], "--threads must be >= 1"),
])
def test_mistakes_exit_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "training" not in err  # no bar before the error


def test_folder_mistakes_are_refused_before_encoding(folders, tmp_path, capsys):
    assert main(["train", "--dataset", str(folders[0]), "--hard-negatives", "--loss", "infonce"]) == 2
    assert "has none: drop --hard-negatives" in capsys.readouterr().err
    coco = tmp_path / "bad.json"
    coco.write_text(json.dumps({"images": 5, "annotations": []}))
    assert main(["train", "--dataset", str(coco)]) == 2
    assert "expected COCO captions JSON with 'images' and 'annotations' lists" in capsys.readouterr().err
    hostile = tmp_path / "mm_projector.bin"
    torch.save({"w": _Hostile()}, hostile)
    assert main(["import", str(hostile)]) == 2
    assert "holds pickled code" in capsys.readouterr().err
    first_0x80 = tmp_path / "hf.safetensors"  # vlmviz's own export --style hf can start with 0x80
    state = {"multi_modal_projector.linear_1.weight": torch.randn(8, 4),
             "multi_modal_projector.linear_2.weight": torch.randn(8, 8)}
    for pad in range(400):
        save_file(state, str(first_0x80), metadata={"pad": "x" * pad})
        if first_0x80.read_bytes()[:1] == b"\x80":
            break
    assert main(["import", str(first_0x80), "--out", str(tmp_path / "back.safetensors")]) == 0
    assert "mlp2x_gelu 4 -> 8" in capsys.readouterr().out


class _Hostile:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_ablate_takes_a_folder(folders, tmp_path):
    proc = vlmviz("ablate", "--help")
    assert "imagefolder path" in proc.stdout
    from vlmviz.runs.ablate import run_ablation

    table = run_ablation("vit-s14", "minilm-l6", ["linear"], steps=3, batch_size=16, n_train=60, n_test=20,
                         dataset=str(folders[0]), log=lambda *_: None)
    row = table.set_index("connector").loc["least squares"]
    assert row["N_test"] == 20 and {"acc_color", "acc_shape"} <= set(table.columns)
    assert row["i2t_R@1"] >= 0.9  # a standardised least-squares map names these colours and shapes
