"""The companion notebooks run: each one is executed top to bottom in fast mode (VLMVIZ_FAST=1) with nbclient, and
its last cell's `SUMMARY {json}` line is checked against what the notebook claims to show. Committed notebooks
carry no outputs, so the repository holds only what people wrote, never what a machine printed."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300


def test_seven_notebooks_exist():
    assert [n[:2] for n in NAMES] == ["01", "02", "03", "04", "05", "06", "07"], NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_no_outputs(name):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{name}: code cells {dirty} carry outputs; clear them before committing"
    assert "VLMVIZ_FAST" in code[0].source, f"{name}: the first code cell must read VLMVIZ_FAST"


def _kernel_name() -> str:
    """The venv's own python3 kernel; installed into sys.prefix when a fresh environment lacks the spec."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix)
    return "python3"


def _execute(name: str):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {"VLMVIZ_FAST": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYTHONWARNINGS": "ignore"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=_kernel_name(),
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def _summary(nb) -> dict:
    lines = [line for line in _text(nb).splitlines() if line.startswith("SUMMARY ")]
    assert lines, "the notebook printed no SUMMARY line"
    return json.loads(lines[-1][len("SUMMARY "):])


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def check_01_anatomy(s, nb):
    assert s["classic_params"] == 1_312_256  # 768*1024 + 1024 + 1024*512 + 512
    assert s["llava_params"] == 20_979_712 and s["llava_tokens"] == 576
    assert s["resampler_tokens"] == 32
    assert s["encoder_tokens"] == [1, 257, 384] and s["patch_projected"] == [1, 256, 576]
    assert s["families"] >= 10


def check_02_alignment_training(s, nb):
    syn, real = s["lesson_synthetic"], s["lesson_real"]
    assert syn["last"] < syn["first"] and real["last"] < real["first"]  # the lesson's loss falls
    assert 0.8 < syn["first"] < 1.3  # cosine loss of an untrained head on random targets starts near 1
    assert set(s["losses"]) == {"cosine", "infonce", "sigmoid"}
    assert all(0.0 <= v <= 1.0 for v in s["losses"].values())
    assert s["temperature_moved"]  # the learned temperature is not stuck at its initial 0.07


def check_03_geometry(s, nb):
    before, after = s["before"], s["after"]
    assert after["alignment"] < before["alignment"]  # training pulls matched pairs together
    assert after["i2t_R@5"] >= before["i2t_R@5"]
    assert 0.0 <= after["modality_gap"] <= 2.0 and after["k"] >= 1
    assert s["map_points"] == 2 * s["N"]
    untrained, trained = s["linked_maps"]  # the linked maps' recall, on the same held-out scenes
    assert trained > untrained


def check_04_which_connector(s, nb):
    assert s["rows"] >= 5 and "least squares" in s["connectors"]
    best, chance = s["best_i2t_R@1"], s["untrained_i2t_R@1"]
    assert best > chance  # something trained beats the untrained projector on held-out combinations
    assert _images(nb) >= 1


def check_05_llava_projector(s, nb):
    assert s["roundtrip_max_abs_diff"] < 1e-4  # export -> import gives the same function
    assert "D_vis" in s["wrong_shape_error"] and "768" in s["wrong_shape_error"]
    assert s["grid"] == [16, 16] and all(s["nearest_words"])
    assert s["vlm_max_abs_diff"] < 1e-5 and s["vlm_tokens"] == [16, 48] and s["vlm_grid"] == [4, 4]  # tiny Qwen2-VL
    lenses = s["lenses"]  # three lenses scored on held-out scenes, each rate beside its shuffled-label control
    assert set(lenses) == {"embedding", "logit", "contextual"} and s["lens_tokens"] > 0 and s["lens_scenes"] >= 8
    assert all(set(v) == {"color", "shape", "size", "position"} for v in lenses.values())
    assert all(0.0 <= r <= 1.0 for v in lenses.values() for pair in v.values() for r in pair)
    assert lenses["embedding"]["color"][0] > lenses["embedding"]["color"][1]  # a trained connector's tokens name colour
    assert s["lens_corpus"][0] >= 300 and s["lens_corpus"][1] > s["lens_corpus"][0]
    assert _images(nb) >= 2  # the heatmaps and the lens bars


def check_06_captioning(s, nb):
    assert s["steps"] >= 2 and s["last_loss"] < s["first_loss"]
    assert len(s["greedy"]) == len(s["sampled"]) >= 1 and all(isinstance(t, str) for t in s["greedy"])
    assert isinstance(s["text_only"], str)


def check_07_search_your_photos(s, nb):
    assert s["indexed"] == 14 and s["bad"] == ["notes.jpg"]
    assert s["top"] == {"a cat": "chelsea.jpg", "a cup of coffee": "coffee.jpg", "a rocket launch": "rocket.jpg",
                        '"a horse" - "grass"': "horse.jpg"}
    assert s["similar_first"] == "chelsea.jpg"
    assert s["travel"] == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "horse.jpg", "retina.jpg"]
    assert s["update"] == {"embedded": 1, "renamed_or_copied": 2, "removed": 1, "files": 15, "vectors": 14}
    trained, floor = s["quality"]["scenes connector (trained)"], s["quality"]["untrained, same shape"]
    assert trained["mAP"] > floor["mAP"] + 0.3 and trained["R@1"] >= 0.8
    assert _images(nb) >= 5


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name):
    nb = _execute(name)
    check = globals()[f"check_{Path(name).stem}"]
    check(_summary(nb), nb)
