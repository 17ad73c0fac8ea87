"""Screenshots of every tab of the web app, as a person sees them, at two window sizes.

    .venv/bin/python scripts/screenshots.py [--out artifacts/screenshots] [--sizes 1440x1000 1024x768] [--train]

Serves the app on a free loopback port, drives Debian's Chromium through Playwright (the browser tests' setup),
clicks what a newcomer clicks first on each tab (Rank captions, Draw map and send one of its samples to Inspect,
Compare), and writes one full-page PNG per tab and size. --train also runs a short training on 40 scenes so the Train tab shows a curve (a minute or two).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
LONG = 300_000  # ms: first model loads on a shared 2-core CPU


def serve() -> tuple[object, str]:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.demo.queue(default_concurrency_limit=2).launch(server_name="127.0.0.1", server_port=port, quiet=True,
                                                       prevent_thread_lock=True, css=app.CSS, theme=app.THEME)
    return app.demo, f"http://127.0.0.1:{port}/"


def wait_text(pg, selector: str, text: str) -> None:
    pg.wait_for_function(f"(document.querySelector({selector!r})||{{innerText:''}}).innerText.includes({text!r})",
                         timeout=LONG)


def shoot(pg, out: Path, name: str) -> None:
    pg.wait_for_timeout(600)  # let plots finish their transition
    pg.screenshot(path=str(out / f"{name}.png"), full_page=True)
    print(f"  {out / f'{name}.png'}")


def tour(pg, url: str, out: Path, train: bool) -> None:
    pg.goto(url)
    pg.wait_for_selector("#rank", timeout=LONG)
    pg.click("#rank")
    wait_text(pg, "#ranking", "astronaut")
    pg.wait_for_selector("#heatmap img", timeout=LONG)
    pg.wait_for_function("document.body.innerText.includes('grid of projected tokens')", timeout=LONG)
    shoot(pg, out, "inspect")
    pg.get_by_role("tab", name="Map").click()
    pg.click("#draw-map")
    wait_text(pg, "#map-metrics", "modality_gap")
    shoot(pg, out, "map")
    pick = pg.locator("#map-pick input")  # one sample of the map, sent to Inspect
    pick.click()
    pg.locator("ul[role=listbox] li", has_text="#3 ").first.click()
    pg.click("#map-send")
    wait_text(pg, "#ranking", "tabby")
    pg.wait_for_function("document.body.innerText.includes('grid of projected tokens')", timeout=LONG)
    shoot(pg, out, "map-sample-in-inspect")
    pg.get_by_role("tab", name="Map").click()
    pg.get_by_role("tab", name="Train").click()
    wait_text(pg, "#recipe-note", "Expected")
    if train:
        pg.locator("#n-train input[type=number]").fill("40")
        pg.locator("#n-train input[type=number]").press("Enter")
        pg.locator("#steps input[type=number]").fill("200")
        pg.locator("#steps input[type=number]").press("Enter")
        pg.click("#start-train")
        wait_text(pg, "#train-status", "Finished")
    shoot(pg, out, "train")
    pg.get_by_role("tab", name="Compare").click()
    pg.click("#compare")
    pg.wait_for_function("document.body.innerText.includes('modality_gap')", timeout=LONG)
    shoot(pg, out, "compare")
    pg.get_by_role("tab", name="Checkpoints").click()
    shoot(pg, out, "checkpoints")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "screenshots")
    parser.add_argument("--sizes", nargs="+", default=["1440x1000", "1024x768"])
    parser.add_argument("--train", action="store_true", help="run a short training so the Train tab has a curve")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    demo, url = serve()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
            for i, size in enumerate(args.sizes):
                width, height = map(int, size.lower().split("x"))
                out = args.out / size
                out.mkdir(parents=True, exist_ok=True)
                print(f"{size}:")
                page = browser.new_page(viewport={"width": width, "height": height})
                tour(page, url, out, train=args.train and i == 0)
                page.close()
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    main()
