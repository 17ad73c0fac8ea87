"""App speed and memory, measured in one run: time from `python app.py` to serving, a warm Inspect of one image
with 10 captions (server side, the same function the Rank button calls), and RSS with all bundled models loaded.

    .venv/bin/python bench/bench_app.py
"""
from __future__ import annotations

import os
import statistics
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


def main():
    ready = time_to_ready()
    sys.path.insert(0, str(ROOT))
    import psutil

    import app
    from vlmviz.encoders import list_vision_encoders, load_vision_encoder
    from vlmviz.text import list_text_spaces, load_text_space

    item = app.GALLERY[3]
    captions = "\n".join([item.caption, *item.distractors, "a red car", "a bowl of soup", "a city at night",
                          "a dog on a beach"][:10])
    args = (str(item.path), captions, "vit-s14", "smollm2-135m", "untrained linear", "all", 0.07, {})
    app.inspect(*args)  # cold: loads models, encodes the image
    warm = []
    for _ in range(20):
        t0 = time.perf_counter()
        app.inspect(*args)
        warm.append(time.perf_counter() - t0)
    for name in list_vision_encoders():
        load_vision_encoder(name)
    for name in list_text_spaces():
        load_text_space(name)
    rss = psutil.Process().memory_info().rss / 1024**3
    print(f"machine: CPU x{os.cpu_count()}; python {sys.version.split()[0]}")
    print(f"app ready after `python app.py`: {ready:.1f} s  (target <= 20 s)")
    print(f"warm Inspect, 1 image x 10 captions: median {statistics.median(warm) * 1e3:.0f} ms, "
          f"p90 {sorted(warm)[17] * 1e3:.0f} ms  (target <= 150 ms)")
    print(f"RSS with all bundled encoders and text spaces loaded: {rss:.2f} GiB  (target < 3 GiB)")


if __name__ == "__main__":
    main()
