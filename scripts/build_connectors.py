"""Build the built-in connectors from the bundled models and report their held-out figures.

    .venv/bin/python scripts/build_connectors.py              # into the vlmviz cache, where the app and tests look
    .venv/bin/python scripts/build_connectors.py --out DIR    # somewhere else (e.g. to ship or inspect them)
    .venv/bin/python scripts/build_connectors.py --describe   # also the Describe captioner (~10 min, 2 cores)

Each checkpoint is written atomically (vlmviz.checkpoints.save_checkpoint) and records what it was made from, its
recipe, its domain and its held-out figures. Building is deterministic: the same models give the same weights. A
built one is reused (its file name hashes the recipe and models), so a second run takes seconds; scripts/setup.sh
runs this. The app builds a missing one on first use too (vlmviz.builtins.built_in_checkpoint).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlmviz.builtins import BUILT_IN, DESCRIBE, build_describe, built_in_checkpoint, built_in_path
from vlmviz.checkpoints import read_config


def report(config: dict) -> list[str]:
    """The figures a person checks after a build: the gallery per photo, or open-set R@1 and per attribute."""
    m = config["metrics"]
    if "all4" in m:  # the Describe captioner: what its greedy captions of held-out scenes get right
        lines = [f"  held-out captions: all four right {m['all4']:.2f} (prior {m['prior_all4']:.2f}); color "
                 f"{m['color']:.2f}  shape {m['shape']:.2f}  size {m['size']:.2f}  position {m['position']:.2f}  "
                 f"({m['N_test']} scenes, held-out loss {m['heldout_loss']:.3f})"]
        return lines + [f"  {e['truth']!r} -> {e['generated']!r}" for e in config.get("examples", [])[:3]]
    if "gallery_top1" in m:
        lines = [f"  gallery: true caption first for {m['gallery_top1']} of {m['gallery_photos']} photos "
                 f"(chance {m['gallery_chance']})"]
        for row in config["gallery"]:
            mark = "ok  " if row["rank"] == 1 else f"#{row['rank']}  "
            lines.append(f"  {mark}{row['photo']:<22} margin {row['margin']:+.3f}  first: {row['first'][:70]}")
        return lines
    attrs = "  ".join(f"{k[4:]} {v:.3f}" for k, v in m.items() if k.startswith("acc_"))
    return [f"  held-out open set: i2t R@1 {m['i2t_R@1']:.3f}  R@5 {m['i2t_R@5']:.3f}  swap {m['swap_acc']:.3f}  "
            f"({m['N_test']} scenes, {m['candidates']} candidate captions)", f"  per attribute: {attrs}"]


def _progress():
    """progress(stage, done, total) printed about every tenth of each stage."""
    shown = {}

    def show(stage, done, total):
        tenth = 10 * done // max(total, 1)
        if shown.get(stage) != tenth:
            shown[stage] = tenth
            print(f"  {stage} {done}/{total}", flush=True)

    return show


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the checkpoints (default: the vlmviz cache)")
    ap.add_argument("--list", help="write the checkpoints' paths to this file, one a line (scripts/setup.sh)")
    ap.add_argument("--describe", action="store_true", help="also build the Describe captioner (preset "
                    "caption-describe: about 10 minutes on an unshared 2-core CPU, 6 of them training through "
                    "SmolLM2-135M)")
    args = ap.parse_args(argv)
    paths = []
    for label in [*BUILT_IN, *([DESCRIBE] if args.describe else [])]:
        t0 = time.perf_counter()
        cached = built_in_path(label, args.out).exists()
        if label == DESCRIBE:
            path = build_describe(args.out, progress=_progress(), log=print)
        else:
            path = built_in_checkpoint(label, args.out)
        config = read_config(path)
        print(f"{label}: {path} ({'cached' if cached else 'built'}, {time.perf_counter() - t0:.0f} s)")
        print("\n".join(report(config)))
        paths.append(str(path))
    if args.list:
        Path(args.list).write_text("".join(f"{p}\n" for p in paths))


if __name__ == "__main__":
    main()
