"""What the app's VLM picker does, without gradio: list the VLMs in the local Hugging Face cache, open one (from
the cache or a folder) as the Inspect tab's pipeline, say how it is composed, draw a projected token's patches.

A VLM is chosen in the app's Connector menu as 'vlm: <folder or hub id>' (explore.VLM_PREFIX), resolved by
explore.resolve_pipeline and cached by that source, so Inspect, Map and Compare all use the same loaded model.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .pipeline import VLM_CONTEXT_PREFIX, VLM_PREFIX, get_vlm_pipeline, vlm_source
from ..vlms import SUPPORTED

NOT_RUN = ("the LM's layers are not run: vlmviz reads only its input-embedding table, the space the connector "
           "writes into")
NOT_RUN_ON_IMAGES = ("the LM's layers are not run on the image tokens: captions are read by the LM (the mean of its "
                     "last hidden states), the image is the connector's output, so the two meet in a space the "
                     "connector was not trained to write into")
_OPENED: dict[str, tuple[str, str]] = {}  # choice -> (tower name, text space name), in the order opened
_LOCK = threading.Lock()


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _model_type(repo: Path) -> str | None:
    """model_type in the config.json of a cached repo's main snapshot (else its newest one)."""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    folders = [snapshots / ref.read_text().strip()] if ref.is_file() else []
    if snapshots.is_dir():
        folders += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders:
        try:
            return json.loads((folder / "config.json").read_text()).get("model_type")
        except (OSError, ValueError):
            continue
    return None


def cached_vlms(cache: str | Path | None = None) -> list[tuple[str, str]]:
    """(label, hub id) of every model in the Hugging Face cache whose config names a family vlmviz opens; reads
    only config files, so it is quick whatever the cache holds."""
    root = Path(cache) if cache else hub_cache()
    found = []
    for repo in sorted(root.glob("models--*")) if root.is_dir() else []:
        kind = _model_type(repo)
        if kind in SUPPORTED:
            repo_id = repo.name.removeprefix("models--").replace("--", "/")
            found.append((f"{repo_id} ({kind})", repo_id))
    return found


def cache_note(found: list) -> str:
    where = hub_cache()
    return f"{len(found)} found in {where}" if found else f"none found in {where}"


def source_of(text: str) -> str:
    """A folder (made absolute, so one folder is one choice) or a hub id, from what the person typed or picked."""
    text = (text or "").strip().removeprefix(VLM_PREFIX).removeprefix(VLM_CONTEXT_PREFIX).strip()
    if not text:
        raise ValueError("no VLM given: type the folder of a saved VLM or pick one from your Hugging Face cache")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path.name} is a file; expected the folder a VLM was saved in (with its "
                             "config.json and weights)")
        return str(path.resolve())
    if text.startswith(("/", ".", "~")) or text.count("/") > 1:  # a hub id is "owner/name"
        raise ValueError(f"{path.name}: no such folder on this machine")
    return text  # a hub id: vlms.open_vlm says when it is not in the cache


def open_choice(text: str, contextual: bool = False) -> tuple[str, object]:
    """Open a VLM for the app: its Connector-menu choice and its pipeline, or a VLMError / ValueError that says
    what is wrong (not a VLM, an unsupported family, a missing folder). contextual: captions are read as the mean of
    the LM's last hidden states over them (order-aware) instead of the mean of their rows in its embedding table."""
    source = source_of(text)
    pipe = get_vlm_pipeline(source, "context" if contextual else "embed")
    choice = (VLM_CONTEXT_PREFIX if contextual else VLM_PREFIX) + source
    with _LOCK:
        _OPENED[choice] = (pipe.encoder.name, pipe.text.name)
    return choice, pipe


def opened() -> list[str]:
    """Connector-menu choices of the VLMs opened by this server, oldest first."""
    with _LOCK:
        return list(_OPENED)


def is_vlm_choice(choice) -> bool:
    return vlm_source(choice) is not None


def is_vlm_part(name) -> bool:
    """Whether a top-bar value names an opened VLM's tower or LM table (shown while that VLM is chosen)."""
    with _LOCK:
        return any(name in parts for parts in _OPENED.values())


def composition(pipe) -> str:
    """One paragraph for beside the Connector menu: the real model's token grid, tokens per image, the
    connector's reduction and what vlmviz does not show."""
    s = pipe.info["vlm"]
    gh, gw = s["grid"]
    n, m = s["tower_tokens"], s["tokens_per_image"]
    grid = pipe.output_grid(n)
    cls = " + CLS" if s["has_cls"] else ""
    reduce = f"{n} → {m} tokens, {n / m:g}x fewer" if m < n else f"{n} → {m} tokens, one per tower token"
    laid = f"a {grid[0]} x {grid[1]} grid" + (" after a CLS token" if grid[2] else "") if grid else \
        "learned queries, not tied to places"
    notes = "; ".join([*s["notes"], NOT_RUN_ON_IMAGES if pipe.text.kind == "contextual" else NOT_RUN])
    return (f"**VLM {s['family']}** ({Path(s['source']).name}): tower {gh} x {gw} patches{cls} at "
            f"{s['image_size']} px = {n} tokens of {s['d_vis']}-d → connector **{s['connector']}** "
            f"({s['connector_params']:,} parameters) → **{m} tokens per image** of {s['d_txt']}-d, {laid} "
            f"({reduce}). *Not shown:* {notes}.")


def provenance_view(pipe, image, token):
    """(picture, note) for the Inspect tab: the source patches of one projected token over the tower's view."""
    from . import plots
    from .provenance import SHOWN_AT, outline, patch_provenance

    if pipe.tokens not in ("all", "patch"):
        return None, (f"This connector reads '{pipe.tokens}': pooled vectors, so no projected token comes from "
                      "particular patches. Open a real VLM above, or pick a connector on 'all' or 'patch' tokens.")
    prov = patch_provenance(pipe, image, token)
    picture = plots.provenance_overlay(pipe.encoder.view(image), prov.weights, outline(prov, SHOWN_AT), SHOWN_AT)
    return picture, prov.note


def token_at(pipe, image, x: float, y: float):
    """The projected token made at pixel (x, y) of the heatmap or provenance picture (vlmviz.views.provenance.token_at)."""
    from .provenance import SHOWN_AT, token_at as at

    return at(pipe, image, x, y, SHOWN_AT)
