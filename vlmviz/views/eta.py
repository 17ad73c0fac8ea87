"""Time estimates for long work, said before it starts and while it runs (issue 14, item 7), with no UI imports.

`Progress` is the stage, count and clock of one piece of work; its `line()` is the one status line the app shows
in a place of its own (never over a plot): "encoding images · 120 of 300 · about 40 s left · 12 s so far".
Before a stage has counted anything, a prior estimate stands in: caption training uses the step time measured on
this machine last time (`recall`), else the figure BENCHMARKS.md measured; UMAP's first fit in a process pays
numba's compilation (DESIGN.md: about 27 s import and 14 s first fit here).

    p = Progress("fitting UMAP", estimate=umap_estimate(600))
    p.line()  # 'fitting UMAP · about 41 s (the first UMAP in this server compiles numba) · 0 s so far'
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import cache_dir

UMAP_COLD_S = 41.0  # first `import umap` (numba JIT) + first fit on an idle 2-core CPU (DESIGN.md)
UMAP_WARM_S_PER_600 = 0.5  # later fits of 600 points (DESIGN.md)
CAPTION_STEP_S = 3.8  # one caption step through SmolLM2 at batch 8, 49 prefix tokens, idle CPU (DESIGN.md)


def say(seconds: float) -> str:
    """'about 40 s', 'about 3 min', 'about 1 h 10 min'."""
    s = max(1, round(seconds))
    if s < 90:
        return f"about {s} s"
    if s < 5400:
        return f"about {round(s / 60)} min"
    return f"about {s // 3600} h {round(s % 3600 / 60)} min"


@dataclass
class Estimate:
    seconds: float
    why: str = ""  # what the figure rests on, said beside it


@dataclass
class Progress:
    what: str
    done: int = 0
    total: int = 0
    unit: str = ""
    estimate: Estimate | None = None
    started: float = field(default_factory=time.monotonic)
    stage_started: float = field(default_factory=time.monotonic)

    def stage(self, what: str, estimate: Estimate | None = None, unit: str = "") -> None:
        self.what, self.estimate, self.unit, self.done, self.total = what, estimate, unit, 0, 0
        self.stage_started = time.monotonic()

    def update(self, done: int, total: int) -> None:
        self.done, self.total = int(done), int(total)

    def left(self) -> float | None:
        """Seconds left in this stage: from the rate so far once something is counted, else the prior estimate."""
        spent = time.monotonic() - self.stage_started
        if self.done > 0 and self.total > self.done:
            return spent / self.done * (self.total - self.done)
        if self.estimate is not None and not self.done:
            return max(0.0, self.estimate.seconds - spent)
        return None

    def line(self) -> str:
        parts = [self.what]
        if self.total:
            parts.append(f"{self.done:,} of {self.total:,}{' ' + self.unit if self.unit else ''}")
        left = self.left()
        if left is not None and self.done:
            parts.append(f"{say(left)} left")
        elif self.estimate is not None:
            spent = time.monotonic() - self.stage_started
            over = spent > self.estimate.seconds * 1.2
            why = f" ({self.estimate.why})" if self.estimate.why else ""
            parts.append(f"estimated {say(self.estimate.seconds)}{why}" + ("; taking longer here" if over else ""))
        parts.append(f"{time.monotonic() - self.started:.0f} s so far")
        return " · ".join(parts)


# ---- step times measured here, remembered between runs -------------------------------------------------------
_LOCK = threading.Lock()


def _rates_path():
    return cache_dir("app") / "step-times.json"


def recall(key: str) -> float | None:
    """Seconds per step measured for `key` by an earlier run on this machine, if any."""
    try:
        return float(json.loads(_rates_path().read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(key: str, seconds_per_step: float) -> None:
    from ..checkpoints import atomic_write

    with _LOCK:
        try:
            rates = json.loads(_rates_path().read_text())
        except (OSError, ValueError):
            rates = {}
        rates[key] = round(float(seconds_per_step), 4)
        atomic_write(_rates_path(), lambda tmp: Path(tmp).write_text(json.dumps(rates, indent=1)))


def caption_steps_estimate(key: str, steps: int, batch: int) -> Estimate:
    """Caption training: steps x the step time measured here last time, else BENCHMARKS' idle-CPU figure."""
    measured = recall(key)
    if measured is not None:
        return Estimate(steps * measured, f"{steps} steps x {measured:.1f} s per step, measured here last time")
    per = CAPTION_STEP_S * max(1, batch) / 8
    return Estimate(steps * per, f"{steps} steps x about {per:.1f} s per step through SmolLM2 on an idle 2-core CPU; "
                    "slower when the machine is shared")


def umap_estimate(n_points: int) -> Estimate:
    """UMAP of n points: the first fit in a process also compiles numba."""
    from .reduce import umap_ready

    fit = UMAP_WARM_S_PER_600 * max(1.0, n_points / 600)
    if umap_ready():
        return Estimate(fit, "")
    return Estimate(UMAP_COLD_S + fit, "the first UMAP in this server compiles numba once")
