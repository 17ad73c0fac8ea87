"""One long build in a background thread that a page can watch and cancel: the UI-agnostic side of the app's
"building the Describe captioner" line.

    job = BackgroundBuild("the Describe captioner", lambda progress, should_stop: build(progress, should_stop))
    job.start(); job.status()["message"]; job.cancel()

`build(progress, should_stop)` reports progress(stage, done, total) and polls should_stop(); it returns the built
file's path. The stage, count and clock are an eta.Progress, the app's one progress model: the time left is
estimated from the current stage's own rate (steps per second so far), the way a person would guess it, and is only
shown once a stage has a few items behind it.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from .eta import Progress, say
from .session import scrub

STATES = ("idle", "running", "done", "cancelled", "failed")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class BackgroundBuild:
    def __init__(self, what: str, build: Callable[[Callable, Callable], Path], estimate: str = ""):
        self.what, self._build, self.estimate = what, build, estimate
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.state, self.progress = "idle", None
        self.path: Path | None = None
        self.error = ""

    def start(self) -> bool:
        """Start the build unless one is running or has finished; True when this call started it."""
        with self._lock:
            if self.state in ("running", "done"):
                return False
            self._stop.clear()
            self.state, self.progress, self.error = "running", Progress("starting"), ""
            self._thread = threading.Thread(target=self._run, name=f"build {self.what}", daemon=True)
            self._thread.start()
            return True

    def cancel(self) -> bool:
        """Ask a running build to stop at its next check (between encoder batches or training steps)."""
        if self.state != "running":
            return False
        self._stop.set()
        return True

    def wait(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _progress(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            if stage != self.progress.what:
                self.progress.stage(stage)
            self.progress.update(done, total)

    def _run(self) -> None:
        try:
            path = self._build(self._progress, self._stop.is_set)
            with self._lock:
                self.state, self.path = "done", Path(path)
        except Exception as err:  # noqa: BLE001 - a background build reports, it never takes the server down
            with self._lock:
                cancelled = self._stop.is_set()
                self.state = "cancelled" if cancelled else "failed"
                self.error = scrub(err)

    def status(self) -> dict:
        with self._lock:
            p = self.progress
            if p is None:
                return {"state": self.state, "stage": "", "done": 0, "total": 0, "seconds": 0.0, "left_s": None,
                        "path": self.path, "error": self.error}
            left = p.left() if self.state == "running" and p.total and p.done >= 3 else None
            return {"state": self.state, "stage": p.what, "done": p.done, "total": p.total,
                    "seconds": time.monotonic() - p.started, "left_s": left, "path": self.path, "error": self.error}

    def message(self) -> str:
        """One line for a person: what is happening, how far, about how long is left."""
        st = self.status()
        what = self.what[0].upper() + self.what[1:]
        if st["state"] == "idle":
            return f"{what} is not built yet{f' ({self.estimate})' if self.estimate else ''}."
        if st["state"] == "done":
            return f"{what} is ready ({_duration(st['seconds'])} to build)."
        if st["state"] == "cancelled":
            return f"Building {self.what} was {st['error'] or 'cancelled'}."
        if st["state"] == "failed":
            return f"Building {self.what} failed: {st['error']}"
        where = f"{st['stage']} {st['done']}/{st['total']}" if st["total"] else st["stage"]
        left = f", {say(st['left_s'])} left in this stage" if st["left_s"] is not None else ""
        return f"Building {self.what} in the background: {where}{left} ({_duration(st['seconds'])} so far)."


def describe_settings(env: str | None = None) -> dict:
    """VLMVIZ_DESCRIBE_SETTINGS="steps=4,n_train=16,n_test=4" builds a small Describe captioner (tests, a quick
    look); unset, the recipe's own. The settings are hashed into its file name: a small one never stands in."""
    import os

    text = os.environ.get("VLMVIZ_DESCRIBE_SETTINGS", "") if env is None else env
    settings = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in ("steps", "n_train", "n_test", "lm") or not value:
            raise ValueError(f"VLMVIZ_DESCRIBE_SETTINGS: expected steps=N, n_train=N, n_test=N or lm=NAME, "
                             f"got {part!r}")
        settings[key] = value if key == "lm" else int(value)
    return settings


class DescribeBuild(BackgroundBuild):
    """The built-in Describe captioner (vlmviz.builtins.DESCRIBE), built in the background on the app's first start
    and cached; Describe falls back to it when the chosen connector was not trained to caption."""

    def __init__(self, settings: dict | None = None):
        from .. import builtins

        self.settings = describe_settings() if settings is None else settings
        super().__init__("the Describe captioner", lambda progress, should_stop: builtins.build_describe(
            progress=progress, should_stop=should_stop, **self.settings),
            estimate="about 15 minutes of training on a 2-core CPU, once")
        self._path: Path | None = None

    def ready(self) -> Path | None:
        """Its checkpoint when built (by this process or an earlier one), else None."""
        if self._path is None:
            from .. import builtins

            self._path = builtins.describe_path(**self.settings)
        return self._path if self._path.exists() else None

    def start(self) -> bool:
        if self.ready():
            return False
        if self.state == "done":  # built, then its file went (removed by hand): build it again
            self.state = "idle"
        return super().start()

    def message(self) -> str:
        path = self.ready()
        if path is not None and self.state in ("idle", "done"):
            from ..checkpoints import read_config
            from .domain import held_out_figure

            config = read_config(path)
            return (f"The built-in Describe captioner is ready{held_out_figure(config)}; it writes when the top "
                    "bar's connector was not trained to caption. Trained on synthetic scenes: on a photo it still "
                    "describes colored shapes.")
        return super().message()
