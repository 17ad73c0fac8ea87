"""Per-user state and long-running jobs for the web app, with no UI imports.

Each browser gets an owner id (kept in the browser, so a reload finds it again) and its own folder of checkpoints
on disk with an index of their labels; two browsers never see each other's. Each owner runs at most one training
job, in a thread that reports through a queue. Cancel sets an event that the encoder loop (through the feature
cache's progress callback) and the trainer (between steps) both poll, so it lands within seconds at any stage; the
job then keeps what it has, labelled as cancelled.

User errors (a bad image, a wrong checkpoint, an empty caption list) become one readable line for the page and one
line in the server log; only unexpected errors log a traceback. Messages never show server paths.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints import CheckpointError, atomic_write, import_llava_projector, read_config, save_checkpoint
from ..config import ExperimentConfig
from ..encoders import load_vision_encoder, token_dim
from ..features import EncodingCancelled
from ..images import load_image
from ..paths import cache_dir
from ..text import load_text_space

SESSIONS_ROOT = Path(tempfile.gettempdir()) / "vlmviz-sessions"
LOG = logging.getLogger("vlmviz.app")
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)  # ImageLoadError and CheckpointError are ValueErrors


# ---- messages --------------------------------------------------------------------------------------------------
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"():,]+){2,}[\\/]([^\\/\s'\"():,]+)")


def scrub(text: str) -> str:
    """Server paths (Gradio's upload folders, the session folders) shown as their file name only."""
    return _PATH.sub(lambda m: m.group(1), str(text))


def report(err: BaseException, action: str) -> str:
    """The page's one-line message for a failed action; logs one line for user errors, a traceback otherwise."""
    if isinstance(err, USER_ERRORS):
        message = scrub(err.args[0] if isinstance(err, KeyError) and err.args else err)
        LOG.warning("%s: %s", action, message)
        return f"⚠️ {message}"
    LOG.error("%s failed:\n%s", action, "".join(traceback.format_exception(err)))
    return f"⚠️ {action} failed unexpectedly ({type(err).__name__}: {scrub(err)}); the app keeps serving"


def open_upload(image, what: str = "image"):
    """The RGB image behind an upload (Gradio's file dict with preprocessing off, a path, or a PIL image), or an
    ImageLoadError naming the user's own file name, never the server's temp path."""
    if image is None:
        raise ValueError(f"no {what}: upload one or pick one from the gallery")
    if isinstance(image, dict):
        path, name = image.get("path"), image.get("orig_name") or os.path.basename(str(image.get("path")))
    elif isinstance(image, (str, Path)):
        path, name = image, os.path.basename(str(image))
    else:
        return load_image(image)
    return load_image(path, name=name)


# ---- owners and their checkpoints -------------------------------------------------------------------------------
def new_owner() -> str:
    return uuid.uuid4().hex


def browser_secret() -> str:
    """The key that encrypts the owner id in the browser's storage: kept on disk, so a restarted server still
    reads what it wrote (a fresh random key per start would forget every browser)."""
    path = cache_dir("app") / "browser-secret"
    if not path.exists():
        atomic_write(path, lambda tmp: Path(tmp).write_text(secrets.token_hex(16)))
    return path.read_text().strip()


def session_dir(owner: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", owner or "anonymous")[:64]
    path = SESSIONS_ROOT / safe
    path.mkdir(parents=True, exist_ok=True)
    os.utime(path)  # last seen now: clean_old_sessions keeps the folders of browsers still in use
    return path


SESSION_DAYS = 14.0  # a browser's folder is removed at start-up when it has not been used this long


def clean_old_sessions(days: float | None = None, root: Path | None = None) -> list[str]:
    """Remove the per-browser folders (their checkpoints) not used for `days` (default: $VLMVIZ_SESSION_DAYS, else
    SESSION_DAYS = 14); the app calls it at start-up. Returns the names of the folders removed."""
    if days is None:
        days = float(os.environ.get("VLMVIZ_SESSION_DAYS", SESSION_DAYS))
    root = Path(root or SESSIONS_ROOT)
    cutoff, removed = time.time() - days * 86400, []
    for folder in root.iterdir() if root.is_dir() else ():
        try:
            if folder.is_dir() and not folder.is_symlink() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder)
                removed.append(folder.name)
        except OSError as err:  # another process removing it, or not ours to remove: leave it
            LOG.warning("could not clean session folder %s: %s", folder.name, err)
    if removed:
        LOG.info("removed %d browser session folders unused for %g days", len(removed), days)
    return removed


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")[:80] or "projector"


def unique_path(folder: Path, stem: str, suffix: str = ".safetensors") -> Path:
    stem = slug(stem)
    path, i = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, i = folder / f"{stem}-{i}{suffix}", i + 1
    return path


_INDEX_LOCK = threading.Lock()


def _index(folder: Path) -> dict[str, str]:
    try:
        return json.loads((folder / "index.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def list_checkpoints(owner: str) -> dict[str, str]:
    """label -> checkpoint path of this owner's checkpoints that are still on disk, oldest first."""
    folder = session_dir(owner)
    with _INDEX_LOCK:
        return {label: str(folder / name) for label, name in _index(folder).items() if (folder / name).is_file()}


def add_checkpoint(owner: str, source: str | Path, label: str, move: bool = False) -> tuple[str, Path]:
    """File `source` under a label no other checkpoint of this owner has ('... (2)' when taken); the file is named
    after the label, so what a person downloads is called what they picked."""
    folder = session_dir(owner)
    with _INDEX_LOCK:
        index = _index(folder)
        unique, i = label, 2
        while unique in index or (folder / f"{slug(unique)}.safetensors").exists():
            unique, i = f"{label} ({i})", i + 1
        dest = folder / f"{slug(unique)}.safetensors"
        (shutil.move if move else shutil.copyfile)(str(source), str(dest))
        index[unique] = dest.name
        atomic_write(folder / "index.json", lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
    return unique, dest


def checkpoint_summary(path: str | Path) -> dict:
    """What the top bar should show for a checkpoint: the encoder, text space and tokens it was trained on."""
    config = read_config(path)
    return {k: config.get(k) for k in ("encoder", "text", "tokens", "pooling", "loss", "dataset", "steps",
                                       "cancelled")}


def add_uploaded_checkpoint(upload, owner: str, encoder: str, text: str, tokens: str = "patch") -> tuple[str, str]:
    """Validate an uploaded vlmviz checkpoint, LLaVA mm_projector.bin or HF Llava projector against the chosen
    encoder and text space and file it for this owner. Returns (label, message); raises CheckpointError saying
    exactly what does not fit (naming the user's file, not the server's copy)."""
    if upload is None:
        raise ValueError("no file: choose a vlmviz .safetensors checkpoint, a LLaVA mm_projector.bin or a Hugging "
                         "Face Llava projector .safetensors")
    upload = Path(upload.get("path") if isinstance(upload, dict) else getattr(upload, "name", upload))
    if upload.stat().st_size > 2 * 1024**3:
        raise CheckpointError(f"{upload.name} is {upload.stat().st_size / 1024**3:.1f} GiB; a projector file is "
                              "at most a few hundred MB")
    enc, txt = load_vision_encoder(encoder), load_text_space(text)
    try:
        config = read_config(upload)
    except CheckpointError:
        config = None
    if config is not None:  # a vlmviz checkpoint: its own encoder, text space and tokens decide what it expects
        from ..checkpoints import load_checkpoint

        ck_encoder, ck_text = config.get("encoder") or encoder, config.get("text") or text
        ck_tokens = config.get("tokens") or tokens
        ck_enc = load_vision_encoder(ck_encoder) if ck_encoder != encoder else enc
        ck_txt = load_text_space(ck_text) if ck_text != text else txt
        try:
            projector, _ = load_checkpoint(upload, token_dim(ck_enc.hidden_size, ck_tokens), ck_txt.dim,
                                           ck_encoder, ck_text)
        except CheckpointError as err:  # say whose encoder it was checked against: not the top bar's, its own
            shape = "D_vis" in str(err) or "D_txt" in str(err)
            own = (f"; checked against the encoder and text space the checkpoint names ({ck_encoder}, {ck_tokens} "
                   f"tokens; {ck_text}), not the top bar's {encoder}") if shape and ck_encoder != encoder else ""
            raise CheckpointError(f"{err}{own}") from None
        label, _ = add_checkpoint(owner, upload, f"uploaded {upload.stem}")
        return label, (f"vlmviz checkpoint: {projector.family} {projector.in_dim} -> {projector.out_dim} "
                       f"({projector.num_params:,} parameters) for {ck_encoder} ({ck_tokens} tokens) and {ck_text}")
    projector = import_llava_projector(upload)
    # a bare projector names no encoder: it must fit what the top bar shows, and the message says so
    want_in, want_out, problems = token_dim(enc.hidden_size, tokens), txt.dim, []
    if projector.in_dim != want_in:
        problems.append(f"it reads D_vis={projector.in_dim}, the top bar's encoder {encoder} gives {want_in} with "
                        f"'{tokens}' tokens")
    if projector.out_dim != want_out:
        problems.append(f"it writes D_txt={projector.out_dim}, the top bar's text space {text} has {want_out}")
    if problems:
        raise CheckpointError(f"{upload.name} does not fit: {'; '.join(problems)} (a built-in or trained connector "
                              "fixes the top bar: pick an untrained one to choose another encoder or text space)")
    tmp = save_checkpoint(Path(tempfile.mkdtemp()) / "import.safetensors", projector, encoder=encoder,
                          tokens=tokens, text=text, pooling="mean", source=upload.name)
    label, _ = add_checkpoint(owner, tmp, f"uploaded {upload.stem}", move=True)
    return label, (f"LLaVA projector: {projector.family} {projector.in_dim} -> {projector.out_dim} "
                   f"({projector.num_params:,} parameters) fits {encoder} ({tokens} tokens) and {text}")


# ---- training jobs ------------------------------------------------------------------------------------------------
WATCH_POINTS = 150  # held-out pairs drawn moving during training (the Train tab's map)


class Cancelled(EncodingCancelled):
    """The person pressed Cancel while images were being encoded."""


@dataclass
class TrainJob:
    """One training run in a background thread; events arrive on `updates`, `cancel()` stops it at any stage."""

    cfg: ExperimentConfig
    dataset: str
    n_train: int
    n_test: int
    owner: str = "anonymous"
    label: str = ""
    updates: "queue.Queue[dict]" = field(default_factory=queue.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    history: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    result: object = None  # train.RunResult
    error: str | None = None
    cancelled: bool = False
    stage: str = "starting"
    encoded: tuple[int, int] = (0, 0)
    open_set: dict | None = None
    checkpoint: tuple[str, str] | None = None  # (label, path) once filed
    frames: list = field(default_factory=list)  # (step, (W, D_txt) unit held-out image vectors): train and watch
    watch_text: object = None  # (W, D_txt) unit caption vectors of those held-out pairs
    finished: bool = False
    started: float = field(default_factory=time.time)

    def start(self) -> "TrainJob":
        threading.Thread(target=self._run, name="vlmviz-train", daemon=True).start()
        return self

    def cancel(self) -> None:
        self.stop.set()

    @property
    def steps(self) -> int:
        return self.cfg.train.steps

    @property
    def steps_done(self) -> int:
        return self.result.result.steps_done if self.result is not None else (self.history[-1]["step"] if
                                                                               self.history else 0)

    def _run(self):
        from ..runs.experiment import run

        def on_step(event):
            self.stage = "training"
            self.updates.put({"type": "step", **event})

        def on_encode(done, total):
            self.stage, self.encoded = "encoding", (done, total)
            self.updates.put({"type": "encode", "done": done, "total": total})
            if self.stop.is_set():
                raise Cancelled(f"cancelled while encoding ({done} of {total} images encoded and cached)")

        def on_snapshot(step, projector, eval_tokens, eval_text):
            import torch

            from ..train import embed

            w = WATCH_POINTS
            if self.watch_text is None:
                self.watch_text = torch.nn.functional.normalize(eval_text[:w].float(), dim=-1)
            img = embed(projector, eval_tokens[:w], self.cfg.train.pooling)  # (W, D_txt)
            self.frames.append((step, torch.nn.functional.normalize(img, dim=-1)))

        out = Path(tempfile.mkdtemp(prefix="vlmviz-run-")) / "run.safetensors"
        try:
            self.stage = "loading"
            self.result = run(self.cfg, self.dataset, self.n_train, self.n_test, out=out, callback=on_step,
                              should_stop=self.stop.is_set, progress=on_encode, snapshot=on_snapshot)
            self.cancelled = bool(self.result.result.cancelled)
            if not self.cancelled and self.cfg.train.loss != "caption":
                self.stage = "scoring"
                self.updates.put({"type": "stage", "stage": "scoring"})
                self.open_set = score_open_set(self.cfg, self.dataset, self.n_train, self.n_test,
                                               self.result.checkpoint)
            if self.result.checkpoint is not None:
                done = self.result.result.steps_done
                steps = f"{done} of {self.steps} steps (cancelled)" if self.cancelled else f"{done} steps"
                label, path = add_checkpoint(self.owner, self.result.checkpoint, f"{self.label} · {steps}",
                                             move=True)
                self.checkpoint = (label, str(path))
        except EncodingCancelled:
            self.cancelled = True
        except Exception as err:  # noqa: BLE001 - reported in the UI; the app keeps serving
            self.error = report(err, "training")
        finally:
            self.finished = True
            shutil.rmtree(out.parent, ignore_errors=True)
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

    def summary(self) -> str:
        """The status line once the job has ended."""
        if self.error:
            return f"Training stopped: {self.error.removeprefix('⚠️ ')}"
        done = self.steps_done
        if self.cancelled:
            line = f"Cancelled after {done} of {self.steps} steps"
            if self.stage == "encoding":
                line += (f", while encoding images ({self.encoded[0]} of {self.encoded[1]} encoded; they stay "
                         "cached for the next run)")
            if self.checkpoint is None:
                return line + ". Nothing was trained, so no checkpoint was saved."
            return line + f". The partial connector is kept as **{self.checkpoint[0]}**."
        seconds = self.result.result.seconds
        line = f"Finished {done} of {self.steps} steps in {seconds:.1f} s of training on {self.result.result.device}"
        return line + (f". Saved and selected as **{self.checkpoint[0]}**." if self.checkpoint else ".")


def score_open_set(cfg: ExperimentConfig, dataset: str, n_train: int, n_test: int, path) -> dict | None:
    """Scenes only: rank each held-out image against every seen and held-out caption plus the swapped twins (the
    figures BENCHMARKS.md and the presets quote), from the checkpoint just saved and the cached test tokens."""
    from ..data import SCENES
    from ..data.splits import load_split
    from ..runs.experiment import featurize
    from ..eval.openset import candidate_set, open_set_report
    from ..checkpoints import load_checkpoint
    from ..train import embed

    if dataset not in SCENES or path is None:
        return None
    train, test = load_split(dataset, n_train, n_test, cfg.train.seed)
    feats = featurize(cfg, test)  # cache hits: run() just encoded them
    projector, _ = load_checkpoint(path)
    captions, metas = candidate_set(train, test)
    return open_set_report(embed(projector, feats.tokens, cfg.train.pooling), test, captions, metas,
                           load_text_space(cfg.text.name).encode)


_JOBS: dict[str, TrainJob] = {}
_JOBS_LOCK = threading.Lock()


def start_job(job: TrainJob) -> TrainJob:
    with _JOBS_LOCK:
        running = _JOBS.get(job.owner)
        if running is not None and not running.finished:
            raise ValueError("a training run is already going in this browser; cancel it or wait for it to finish")
        _JOBS[job.owner] = job
    return job.start()


def current_job(owner: str) -> TrainJob | None:
    with _JOBS_LOCK:
        return _JOBS.get(owner)


def cancel_job(owner: str) -> bool:
    job = current_job(owner)
    if job is None or job.finished:
        return False
    job.cancel()
    return True


# ---- Train-tab recipes -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """A preset for the Train tab: the run's config, its data, and what it reached here (held-out, open set)."""

    config: ExperimentConfig
    dataset: str
    n_train: int
    expected: str
    cost: str
    n_test: int = 200


def _scenes_block4() -> ExperimentConfig:
    from ..config import EncoderConfig, ProjectorConfig, TrainConfig

    return ExperimentConfig(EncoderConfig("vit-s14@4", "cls+mean+max"), projector=ProjectorConfig("lowrank",
                                                                                                    {"rank": 64}),
                            train=TrainConfig(loss="infonce", steps=1000, lr=1e-2, batch_size=256, weight_decay=0.5))


def _scenes_output() -> ExperimentConfig:
    from ..config import EncoderConfig, ProjectorConfig, TrainConfig

    return ExperimentConfig(EncoderConfig("vit-s14", "cls+mean+max"), projector=ProjectorConfig("linear"),
                            train=TrainConfig(loss="infonce", steps=1000, lr=1e-2, batch_size=256, weight_decay=0.5))


def recipes() -> dict[str, Recipe]:
    """The proven one-object recipes of BENCHMARKS.md first, then the CLI's presets (config.PRESETS)."""
    from ..config import preset

    return {
        "one-object scenes, quick: lowrank on vit-s14@4, 1000 scenes": Recipe(
            _scenes_block4(), "scenes-1obj", 1000,
            "held-out open-set i2t R@1 0.915, swap 1.00, color 1.00 (seed 0, measured through this tab; "
            "BENCHMARKS.md, the app)",
            "first run encodes 1,200 scenes (about 2-3 min on a 2-core CPU), later runs about 15 s"),
        "one-object scenes, best: lowrank on vit-s14@4, 4000 scenes": Recipe(
            _scenes_block4(), "scenes-1obj", 4000,
            "held-out open-set i2t R@1 0.988 +- 0.006 (3 seeds, BENCHMARKS.md, one-object scenes at block 4); "
            "0.975, swap 1.00, color 1.00 through this tab (seed 0)",
            "first run encodes 4,200 scenes (about 8-10 min on a 2-core CPU), later runs about 20 s"),
        "one-object scenes: linear on vit-s14 output, 4000 scenes": Recipe(
            _scenes_output(), "scenes-1obj", 4000,
            "held-out open-set i2t R@1 0.975 +- 0.005 (3 seeds, BENCHMARKS.md, one-object target)",
            "first run encodes 4,200 scenes through all 12 blocks (about 25-30 min on a 2-core CPU), later ~25 s"),
        "pooled-linear (CLI preset), 600 scenes": Recipe(
            preset("pooled-linear"), "scenes-1obj", 600,
            "held-out open-set i2t R@1 about 0.87 (BENCHMARKS.md, 600 scenes, cls+mean)",
            "first run encodes 800 scenes (about 4-6 min), later runs about 15 s"),
        "llava-1.5 (CLI preset), 600 scenes": Recipe(
            preset("llava-1.5"), "scenes-1obj", 600, "no held-out figure measured for this preset yet",
            "first run encodes 800 scenes (about 4-6 min); 300 steps on 256 patch tokens, a few minutes"),
        "caption-describe (CLI preset, the Describe captioner), 2000 scenes": Recipe(
            preset("caption-describe"), "scenes-1obj", 2000,
            "held-out captions name color, shape, size and position all right 0.85 (color 0.94, shape 0.96; "
            "BENCHMARKS.md, captions right on every attribute)",
            "first run encodes 2,200 scenes at blocks 4 and 12 (about 10 min on a 2-core CPU); 300 steps through "
            "SmolLM2 at about 1.2-2 s each: 6-10 min"),
        "caption-stage1 (CLI preset), 600 scenes": Recipe(
            preset("caption-stage1"), "scenes-1obj", 600,
            "held-out caption loss about 0.70; names held-out shapes 0.55, sizes 0.93 (BENCHMARKS.md, captioning)",
            "200 steps through SmolLM2 at about 4 s each: about 13 min"),
        "classic-lesson (CLI preset), 40 pairs": Recipe(
            preset("classic-lesson"), "scenes-1obj", 40,
            "the loss falls (about 1.07 -> 0.80) while held-out recall stays near chance: it memorises",
            "a minute; the point is what overfitting looks like"),
    }


def dataset_limit(name: str, cap: int) -> int:
    """How many pairs a slider may offer for a dataset: its size when it has one (the gallery has 14), else `cap`
    (scenes are generated on demand)."""
    from ..data import SCENES, load_gallery

    if name in SCENES:
        return cap
    if name == "gallery":
        return min(cap, len(load_gallery()))
    if name == "digits":
        return min(cap, 1797)
    return cap


def held_out_size(n_train: int) -> int:
    """Held-out pairs scored during and after a run: 200 (what BENCHMARKS.md and the recipes use) once the
    training set is large enough, fewer for small runs so that encoding them does not dominate."""
    return min(200, max(20, n_train // 3))


def train_config(family: str, loss: str, pooling: str, tokens: str, steps, lr, batch, weight_decay,
                 caption_mode: str, encoder: str, text: str, recipe: Recipe | None = None) -> ExperimentConfig:
    """The run the Train tab describes; a recipe contributes the projector options it was measured with
    (lowrank's rank, the classic lesson's hidden width) when its family is still the one chosen."""
    from ..config import (CAPTION_OPTIONS, CaptionConfig, EncoderConfig, ProjectorConfig, TextConfig,
                         TrainConfig)

    caption = loss == "caption"
    options = dict(CAPTION_OPTIONS.get(family, {})) if caption else {}
    standardize = True
    if recipe is not None and recipe.config.projector.family == family:
        options = {**options, **recipe.config.projector.options}
        standardize = recipe.config.train.standardize
    steps = int(steps)
    warmup = min(20, steps // 10)
    if caption and recipe is not None and recipe.config.train.steps == steps:  # a captioner as caption-eval ran it
        warmup = recipe.config.train.warmup_steps
    return ExperimentConfig(
        EncoderConfig(encoder, tokens), TextConfig(text), ProjectorConfig(family, options),
        TrainConfig(loss=loss, pooling=pooling, steps=steps, lr=float(lr), batch_size=int(batch),
                    weight_decay=float(weight_decay), warmup_steps=warmup,
                    eval_every=0 if caption else max(1, steps // 10), standardize=standardize),
        CaptionConfig(caption_mode))
