"""Build the training-free built-in connectors from the bundled models and report their gallery figures.

    .venv/bin/python scripts/build_connectors.py              # into the vlmviz cache, where the app looks
    .venv/bin/python scripts/build_connectors.py --out DIR    # somewhere else (e.g. to ship or inspect them)

Each checkpoint is written atomically (vlmviz.checkpoints.save_checkpoint) and records what it was made from, its
recipe and its per-photo gallery result. Building is deterministic: the same models give the same file. The app
builds a missing one on first use too (vlmviz.concepts.built_in_checkpoint); this script does it ahead of time.
"""
from __future__ import annotations

import argparse
import time

from vlmviz import concepts
from vlmviz.checkpoints import read_config


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the checkpoints (default: the vlmviz cache)")
    args = ap.parse_args(argv)
    for label in concepts.BUILT_IN:
        t0 = time.perf_counter()
        path = concepts.built_in_checkpoint(label, args.out)
        config = read_config(path)
        metrics = config["metrics"]
        print(f"{label}: {path} ({time.perf_counter() - t0:.0f} s)")
        print(f"  gallery: true caption first for {metrics['gallery_top1']} of {metrics['gallery_photos']} photos "
              f"(chance {metrics['gallery_chance']})")
        for row in config["gallery"]:
            mark = "ok  " if row["rank"] == 1 else f"#{row['rank']}  "
            print(f"  {mark}{row['photo']:<22} margin {row['margin']:+.3f}  first: {row['first'][:70]}")


if __name__ == "__main__":
    main()
