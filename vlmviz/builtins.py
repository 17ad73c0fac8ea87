"""The built-in connectors: made from the bundled models by a fixed recipe, cached on disk, selectable by name.

Each one is a checkpoint like any other (vlmviz.checkpoints), whose config also records what it was trained on,
its recipe, its measured held-out figures and its `domain` (what kind of image its ranking means something on,
read by vlmviz.views.domain). The file name carries a hash of the recipe and of the models it was made from, so a change
to either builds a new one instead of reusing a stale file. They live under `$VLMVIZ_CACHE/connectors`, the folder
scripts/setup.sh fills and the app and the tests read (VLMVIZ_FEATURES moves only the token cache, not these).

    from vlmviz.builtins import BUILT_IN, built_in_checkpoint
    path = built_in_checkpoint(SCENES_LOWRANK)   # about 2 minutes the first time on a 2-core CPU, then instant
    path = build_describe(progress=print)        # the optional Describe captioner (OPTIONAL), ~10 min
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .paths import cache_dir

BUILD_VERSION = 1  # bump when a change to any build should replace cached checkpoints
PHOTO_CONSE = "photo concepts (ConSE, ImageNet head)"
SCENES_LOWRANK = "scenes (low-rank, ViT-S/14 block 4)"
DESCRIBE = "describe (captioner, ViT-S/14 blocks 4 + 12)"


@dataclass(frozen=True)
class BuiltIn:
    stem: str  # file name prefix
    domain: str  # "photos" or "scenes": what vlmviz.views.domain compares the image source against
    key: Callable[[], list]  # what the checkpoint depends on (recipe, model ids); hashed into the file name
    build: Callable[[Path, str], Path]  # build(path, label) writes the checkpoint at path


def _photo_key() -> list:
    from .runs import concepts

    return concepts.build_key()


def _photo_build(path: Path, label: str) -> Path:
    from .runs import concepts

    return concepts.build_photo_checkpoint(path, label)


def _scenes_key() -> list:
    from .runs import scene_connector

    return scene_connector.build_key()


def _scenes_build(path: Path, label: str) -> Path:
    from .runs import scene_connector

    return scene_connector.build_checkpoint(path, label)


# the order the app lists them in: the photo connector first, since the app opens on a gallery photo
BUILT_IN = {PHOTO_CONSE: BuiltIn("photo-conse", "photos", _photo_key, _photo_build),
            SCENES_LOWRANK: BuiltIn("scenes-lowrank", "scenes", _scenes_key, _scenes_build)}
def _describe_key() -> list:
    from .caption import builtin as caption_builtin

    return caption_builtin.build_key()


def _describe_build(path: Path, label: str) -> Path:
    from .caption import builtin as caption_builtin

    return caption_builtin.build_checkpoint(path, label)


# Built on request only, not on first use or by setup.sh: the Describe captioner takes about 10 minutes on an
# unshared 2-core CPU, 2100 scenes through the whole ViT-S/14 and 300 steps of about 1.2 s through the 135 M LM
# (scripts/build_connectors.py --describe; the app through build_describe)
OPTIONAL = {DESCRIBE: BuiltIn("describe-captioner", "scenes", _describe_key, _describe_build)}
_LOCK = threading.Lock()  # one build at a time: two requests for a missing connector must not both build it
_DESCRIBE_LOCK = threading.Lock()


def _spec(label: str) -> BuiltIn:
    if label in BUILT_IN:
        return BUILT_IN[label]
    if label in OPTIONAL:
        return OPTIONAL[label]
    raise ValueError(f"unknown built-in connector {label!r}; valid: {', '.join([*BUILT_IN, *OPTIONAL])}")


def _path(spec: BuiltIn, key: list, folder: str | Path | None) -> Path:
    digest = hashlib.sha1(json.dumps([BUILD_VERSION, *key], sort_keys=True).encode()).hexdigest()[:10]
    return Path(folder or cache_dir("connectors")) / f"{spec.stem}-{digest}.safetensors"


def built_in_path(label: str, folder: str | Path | None = None) -> Path:
    """Where the checkpoint of `label` lives (whether or not it is built yet)."""
    spec = _spec(label)
    return _path(spec, spec.key(), folder)


def built_in_checkpoint(label: str = PHOTO_CONSE, folder: str | Path | None = None) -> Path:
    """The checkpoint of a built-in connector, built from the bundled models on first use and cached."""
    path = built_in_path(label, folder)
    if path.exists():  # never wait on the lock for a built one: a long build (the captioner) may hold it
        return path
    with _LOCK:
        if path.exists():
            return path
        return _spec(label).build(path, label)


def build_describe(folder: str | Path | None = None, progress=None, should_stop=None, log=None,
                   **settings) -> Path:
    """The built-in Describe captioner (caption_builtin.py), built now unless cached: for a background build with
    visible progress. progress(stage, done, total) with stage 'encoding', 'training' or 'captioning';
    should_stop() cancels (caption_builtin.BuildCancelled, nothing saved). settings (n_train, n_test, steps, lm)
    make a smaller one for tests; they are part of the file name's hash, so it never stands in for the real one."""
    from .caption import builtin as caption_builtin

    path = describe_path(folder, **settings)
    with _DESCRIBE_LOCK:  # its own lock: a 15-minute build must not hold up the other built-ins
        if path.exists():
            return path
        return caption_builtin.build_checkpoint(path, DESCRIBE, progress=progress, should_stop=should_stop, log=log,
                                                **settings)


def describe_path(folder: str | Path | None = None, **settings) -> Path:
    """Where the Describe captioner made with `settings` lives, built or not."""
    from .caption import builtin as caption_builtin

    return _path(OPTIONAL[DESCRIBE], caption_builtin.build_key(**settings), folder)


def is_built(label: str, folder: str | Path | None = None) -> bool:
    """Whether using `label` now is instant (the app can say 'building, about 2 minutes' otherwise)."""
    return built_in_path(label, folder).exists()


def built_in_note(label: str) -> str:
    """What the UI says about a built-in (issue 14): what it was trained on, its held-out figures, its recipe."""
    from .checkpoints import read_config
    from .views.domain import held_out_figure

    config = read_config(built_in_checkpoint(label))
    recipe = ", ".join(f"{k} {v}" for k, v in config.get("recipe", {}).items())
    return (f"**{label}**: {config.get('trained_on', 'training data not recorded')} "
            f"Measured{held_out_figure(config) or ': nothing recorded'}. Recipe: {recipe}.")


def fitting_built_in(choice: str, source: str) -> str:
    """The built-in made for `source` ('photo' or 'scene', vlmviz.views.domain) when `choice` is a built-in, so that
    picking a scene swaps the photo connector for the scenes one and back; any other choice (the user's own
    checkpoint, an untrained family) stays chosen."""
    domain = {"photo": "photos", "scene": "scenes"}.get(source)
    fits = [label for label, spec in BUILT_IN.items() if spec.domain == domain]
    return fits[0] if choice in BUILT_IN and fits else choice
