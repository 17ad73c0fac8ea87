"""App speed and memory, measured in one run: time from `python app.py` to serving, a warm Inspect of one image
with 10 captions (server side, the same function the Rank button calls), RSS with all bundled models loaded, and
first-vs-second Train and Map of the same scenes (the Train tab's job and the Map tab's function, on an empty
feature cache): the second run must cost the training or drawing alone.

    .venv/bin/python bench/bench_app.py [--pairs 300] [--skip-startup]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def time_to_ready(port: int = 7891) -> float:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < 120:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                return time.perf_counter() - t0
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("app did not start within 120 s")
    finally:
        proc.terminate()
        proc.wait()


def train_twice(pairs: int, steps: int = 300) -> list[tuple[float, float]]:
    """(wall, training) seconds of two identical Train-tab runs on scenes, through session.TrainJob."""
    from vlmviz.views import session

    out = []
    for _ in range(2):
        cfg = session.train_config("linear", "infonce", "mean", "cls+mean", steps, 1e-2, 256, 0.5, "prefix",
                                   "vit-s14", "smollm2-135m")
        job = session.TrainJob(cfg, "scenes-1obj", pairs, session.held_out_size(pairs), owner="bench")
        t0 = time.perf_counter()
        session.start_job(job)
        for _event in job.events():
            pass
        if job.error:
            raise RuntimeError(job.error)
        out.append((time.perf_counter() - t0, job.result.result.seconds))
    return out


def map_twice(app, pairs: int) -> list[float]:
    """Seconds of two identical PCA maps of scene pairs: the Map tab's function (encode, project, reduce, draw)."""
    out = []
    for _ in range(2):
        t0 = time.perf_counter()
        fig, rows, note = app.make_map("scenes-1obj", pairs, "PCA", False, "vit-s14", "smollm2-135m",
                                       "untrained linear", "all", {}, progress=lambda *a, **k: None)
        if fig is None:
            raise RuntimeError(note)
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300, help="scene pairs for the Train and Map runs")
    parser.add_argument("--skip-startup", action="store_true", help="only the first-vs-second runs")
    args = parser.parse_args(argv)
    os.environ["VLMVIZ_FEATURES"] = tempfile.mkdtemp(prefix="vlmviz-bench-features-")  # first runs encode
    ready = None if args.skip_startup else time_to_ready()
    sys.path.insert(0, str(ROOT))
    import psutil

    import app
    from vlmviz.encoders import list_vision_encoders, load_vision_encoder
    from vlmviz.text import list_text_spaces, load_text_space

    print(f"machine: CPU x{os.cpu_count()}; python {sys.version.split()[0]}")
    if ready is not None:
        print(f"app ready after `python app.py`: {ready:.1f} s  (target <= 20 s)")
    item = app.GALLERY[3]
    captions = "\n".join([item.caption, *item.distractors, "a red car", "a bowl of soup", "a city at night",
                          "a dog on a beach"][:10])
    args_ = (str(item.path), captions, "vit-s14", "smollm2-135m", "untrained linear", "all", 0.07, {})
    app.inspect(*args_)  # cold: loads models, encodes the image
    warm = []
    for _ in range(20):
        t0 = time.perf_counter()
        app.inspect(*args_)
        warm.append(time.perf_counter() - t0)
    print(f"warm Inspect, 1 image x 10 captions: median {statistics.median(warm) * 1e3:.0f} ms, "
          f"p90 {sorted(warm)[17] * 1e3:.0f} ms  (target <= 150 ms)")
    (w1, t1), (w2, t2) = train_twice(args.pairs)
    print(f"Train, {args.pairs} scenes + {app.session.held_out_size(args.pairs)} held out, 300 steps: first "
          f"{w1:.1f} s (training {t1:.1f} s), second {w2:.1f} s (training {t2:.1f} s): first/second "
          f"{w1 / w2:.1f}x; second run spends {w2 - t2:.1f} s outside training")
    m1, m2 = map_twice(app, args.pairs)
    print(f"Map, PCA of {args.pairs} scene pairs: first {m1:.1f} s, second {m2:.2f} s: first/second "
          f"{m1 / m2:.0f}x  (target: second < 2 s)")
    for name in list_vision_encoders():
        load_vision_encoder(name)
    for name in list_text_spaces():
        load_text_space(name)
    rss = psutil.Process().memory_info().rss / 1024**3
    print(f"RSS with all bundled encoders and text spaces loaded: {rss:.2f} GiB  (target < 3 GiB)")


if __name__ == "__main__":
    main()
