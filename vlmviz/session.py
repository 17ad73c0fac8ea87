"""Per-user state and long-running jobs for the web app, with no UI imports.

Each browser session gets its own folder of checkpoints (so two users never see each other's) and at most one
training job, which runs in a thread and reports through a queue; cancelling sets an event the trainer polls
between steps, and the job still saves what it has.
"""
from __future__ import annotations

import queue
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import CheckpointError, import_llava_projector, read_config, save_checkpoint
from .config import ExperimentConfig
from .encoders import load_vision_encoder, token_dim
from .text import load_text_space

SESSIONS_ROOT = Path(tempfile.gettempdir()) / "vlmviz-sessions"


def session_dir(session_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", session_id or "anonymous")[:64]
    path = SESSIONS_ROOT / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


def unique_path(folder: Path, stem: str, suffix: str = ".safetensors") -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")[:60] or "projector"
    path, i = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, i = folder / f"{stem}-{i}{suffix}", i + 1
    return path


def add_uploaded_checkpoint(upload: str | Path, session_id: str, encoder: str, text: str,
                            tokens: str = "patch") -> tuple[Path, str]:
    """Validate an uploaded vlmviz checkpoint, LLaVA mm_projector.bin or HF Llava projector against the chosen
    encoder and text space; store it in the session. Returns (path, message); raises CheckpointError saying
    exactly what does not fit."""
    upload = Path(upload)
    if upload.stat().st_size > 2 * 1024**3:
        raise CheckpointError(f"{upload.name} is {upload.stat().st_size / 1024**3:.1f} GiB; a projector file is "
                              "at most a few hundred MB")
    enc, txt = load_vision_encoder(encoder), load_text_space(text)
    folder = session_dir(session_id)
    try:
        config = read_config(upload)
    except CheckpointError:
        config = None
    if config is not None:  # a vlmviz checkpoint: its own token selection decides the width it expects
        from .checkpoints import load_checkpoint

        ck_tokens = config.get("tokens") or tokens
        projector, _ = load_checkpoint(upload, token_dim(enc.hidden_size, ck_tokens), txt.dim, encoder, text)
        dest = unique_path(folder, upload.stem)
        shutil.copyfile(upload, dest)
        return dest, (f"vlmviz checkpoint: {projector.family} {projector.in_dim} -> {projector.out_dim} "
                      f"({projector.num_params:,} parameters) fits {encoder} ({ck_tokens} tokens) and {text}")
    projector = import_llava_projector(upload, token_dim(enc.hidden_size, tokens), txt.dim)
    dest = save_checkpoint(unique_path(folder, f"llava-{upload.stem}"), projector, encoder=encoder, tokens=tokens,
                           text=text, pooling="mean", source=upload.name)
    return dest, (f"LLaVA projector: {projector.family} {projector.in_dim} -> {projector.out_dim} "
                  f"({projector.num_params:,} parameters) fits {encoder} ({tokens} tokens) and {text}")


@dataclass
class TrainJob:
    """One training run in a background thread; events arrive on `updates`, `cancel()` stops between steps."""

    cfg: ExperimentConfig
    dataset: str
    n_train: int
    n_test: int
    out: Path
    updates: "queue.Queue[dict]" = field(default_factory=queue.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    history: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    result: object = None
    error: str | None = None
    started: float = field(default_factory=time.time)

    def start(self) -> "TrainJob":
        threading.Thread(target=self._run, name="vlmviz-train", daemon=True).start()
        return self

    def cancel(self) -> None:
        self.stop.set()

    def _run(self):
        from .experiment import run

        def on_step(event):
            self.updates.put({"type": "step", **event})

        def on_encode(done, total):
            self.updates.put({"type": "encode", "done": done, "total": total})

        try:
            self.result = run(self.cfg, self.dataset, self.n_train, self.n_test, out=self.out, callback=on_step,
                              should_stop=self.stop.is_set, progress=on_encode)
        except Exception as err:  # noqa: BLE001 - reported in the UI; the app keeps serving
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.updates.put({"type": "done"})

    def events(self, poll: float = 0.25):
        """Yield progress events until the job ends (for a Gradio generator)."""
        while True:
            try:
                event = self.updates.get(timeout=poll)
            except queue.Empty:
                yield {"type": "tick"}
                continue
            if event["type"] == "step":
                self.history.append({k: event[k] for k in ("step", "loss", "lr")})
                if event.get("metrics"):
                    self.evals.append(event["metrics"])
            yield event
            if event["type"] == "done":
                return


_JOBS: dict[str, TrainJob] = {}
_JOBS_LOCK = threading.Lock()


def start_job(session_id: str, job: TrainJob) -> TrainJob:
    with _JOBS_LOCK:
        running = _JOBS.get(session_id)
        if running is not None and running.result is None and running.error is None:
            raise ValueError("a training run is already going in this session; cancel it or wait for it to finish")
        _JOBS[session_id] = job
    return job.start()


def cancel_job(session_id: str) -> bool:
    with _JOBS_LOCK:
        job = _JOBS.get(session_id)
    if job is None:
        return False
    job.cancel()
    return True
