"""Maps at scale (issue 17), measured in one run. Results go in BENCHMARKS.md.

    .venv/bin/python bench/bench_maps.py [--n-real 2000]

umap       UMAP of 10k points warm (numba compiled by first fits of 300 and 5000 points), and of 100k points as map_2d does it
           (fitted on a seeded 20k sample, the rest placed at their nearest fitted neighbours); both on clustered
           576-d vectors (200 centres), the width of SmolLM2's embedding space
redraw     a real map in the app (the Map tab's linked maps, scenes through the built-in scenes connector): first draw
           (encode, project, fit) versus the second draw of the same map; target <= 2 s
metrics    mutual kNN and CKA on 10k and 50k pairs without an N x N matrix
pan        a 50,000-point linked map in headless Chromium (software WebGL): load time, frame gaps while panning, how
           soon a hover after the pan shows a thumbnail (tests/test_maps.py checks that it does, without clocks)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def clustered(n: int, dim: int = 576, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim), dtype=np.float32)
    x = centres[rng.integers(0, 200, n)] + 0.7 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def part_umap() -> None:
    from vlmviz.views.reduce import map_2d, reduce_2d

    t = time.perf_counter()
    reduce_2d(clustered(300, seed=9), "umap")
    reduce_2d(clustered(5000, seed=8), "umap")  # above 4096 points UMAP takes its approximate-kNN path: compile it too
    print(f"UMAP warm-up (import, numba JIT, fits of 300 and 5000 points): {time.perf_counter() - t:.1f} s")
    for n, max_fit in ((10_000, None), (100_000, -1)):
        x = clustered(n, seed=n)
        t = time.perf_counter()
        _, note = map_2d(x, "umap", max_fit=max_fit, cache=False)
        print(f"UMAP n={n:,}: {time.perf_counter() - t:.1f} s ({note})")
    t = time.perf_counter()
    _, note = map_2d(clustered(10_000, seed=1), "pca", cache=False)
    print(f"PCA n=10,000: {time.perf_counter() - t:.2f} s")


def part_redraw(n: int) -> None:
    """What a person sees in the Map tab's linked maps: the app's handler, first and second click."""
    import app
    from vlmviz.builtins import SCENES_LOWRANK

    args = ("scenes-1obj", n, "UMAP", "color", "none", "vit-s14", "smollm2-135m", SCENES_LOWRANK, "all", {})
    for what in ("first draw", "second draw"):
        t = time.perf_counter()
        _, _, note = app.make_linked_map.__wrapped__(*args, progress=lambda *a, **k: None)
        print(f"REDRAW {what} of {n:,} scenes in the app (load the scenes, project through the scenes connector, "
              f"UMAP, metrics, HTML with thumbnails): {time.perf_counter() - t:.2f} s ({note})")


def part_metrics() -> None:
    from vlmviz.eval.metrics import cka, mutual_knn

    for n in (10_000, 50_000):
        a = torch.from_numpy(clustered(n, 384, seed=3))
        b = torch.from_numpy(clustered(n, 576, seed=3))
        t = time.perf_counter()
        m = mutual_knn(a, b, 10)
        mk = time.perf_counter() - t
        t = time.perf_counter()
        c = cka(a, b)
        print(f"METRICS n={n:,}: mutual kNN (k=10) {m:.3f} in {mk:.1f} s, CKA {c:.3f} in "
              f"{time.perf_counter() - t:.2f} s (an N x N float32 matrix would be {n * n * 4 / 2**30:.1f} GiB)")


def part_pan(n: int = 50_000) -> None:
    import tempfile

    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "tests"))
    from test_maps import ARGS, CHROMIUM, _fake_maps, pan_and_hover

    from vlmviz.views.maps import write_html

    maps, samples = _fake_maps(n, seed=2)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        out = write_html(maps[:1], samples, Path(tmp) / "big.html", color="color")
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        t = time.perf_counter()
        frames, answered, hover_s = pan_and_hover(pg, out, clock=time.perf_counter)
        browser.close()
    gaps = np.diff(frames)
    print(f"pan {n} points: load + pan + hover {time.perf_counter() - t:.2f} s, {len(frames)} frames, median frame "
          f"{np.median(gaps):.1f} ms, p95 {np.percentile(gaps, 95):.1f} ms, worst {gaps.max():.1f} ms; hover "
          f"{'answered' if answered else 'NOT answered'} {hover_s:.2f} s after the pan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["umap", "redraw", "metrics"])
    parser.add_argument("--n-real", type=int, default=2000)
    args = parser.parse_args()
    print(f"# {os.cpu_count()} CPUs, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    for part in args.part:
        part_redraw(args.n_real) if part == "redraw" else globals()[f"part_{part}"]()


if __name__ == "__main__":
    main()
