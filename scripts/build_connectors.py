"""Build the built-in connectors from the bundled models and report their held-out figures.

    .venv/bin/python scripts/build_connectors.py              # into the vlmviz cache, where the app and tests look
    .venv/bin/python scripts/build_connectors.py --out DIR    # somewhere else (e.g. to ship or inspect them)

Each checkpoint is written atomically (vlmviz.checkpoints.save_checkpoint) and records what it was made from, its
recipe, its domain and its held-out figures. Building is deterministic: the same models give the same weights. A
built one is reused (its file name hashes the recipe and models), so a second run takes seconds; scripts/setup.sh
runs this. The app builds a missing one on first use too (vlmviz.builtins.built_in_checkpoint).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlmviz.builtins import BUILT_IN, built_in_checkpoint, built_in_path
from vlmviz.checkpoints import read_config


def report(config: dict) -> list[str]:
    """The figures a person checks after a build: the gallery per photo, or open-set R@1 and per attribute."""
    m = config["metrics"]
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the checkpoints (default: the vlmviz cache)")
    ap.add_argument("--list", help="write the checkpoints' paths to this file, one a line (scripts/setup.sh)")
    args = ap.parse_args(argv)
    paths = []
    for label in BUILT_IN:
        t0 = time.perf_counter()
        cached = built_in_path(label, args.out).exists()
        path = built_in_checkpoint(label, args.out)
        config = read_config(path)
        print(f"{label}: {path} ({'cached' if cached else 'built'}, {time.perf_counter() - t0:.0f} s)")
        print("\n".join(report(config)))
        paths.append(str(path))
    if args.list:
        Path(args.list).write_text("".join(f"{p}\n" for p in paths))


if __name__ == "__main__":
    main()
