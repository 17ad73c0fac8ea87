"""Fail fast on a model name that cannot be loaded here, instead of waiting through the Hub client's retries
(about 30 s offline). A name loads when it is a local path, is in the Hugging Face cache, or the Hub is reachable."""
from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path


# transformers' from_pretrained swaps process-wide state while it runs (PreTrainedModel.tie_weights becomes a no-op,
# the default dtype changes) and puts back what it found: two loads at once in threads can leave tie_weights a no-op
# for good, and every later LM with tied embeddings then keeps its head on the meta device ("Cannot copy out of meta
# tensor": the app's logit lens, after two requests had loaded MiniLM together). Every model load takes this lock.
MODEL_LOAD = threading.RLock()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


@functools.cache
def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached(repo_id: str) -> bool:
    """The repo's config.json is in the local Hugging Face cache (every transformers / sentence-transformers model
    has one)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


def check_loadable(name: str, what: str, bundled: list[str]) -> None:
    """Raise ValueError at once when `name` is neither a local path, nor cached, nor fetchable right now."""
    if Path(name).exists() or cached(name):
        return
    why = "HF_HUB_OFFLINE is set" if offline() else "huggingface.co cannot be reached" if not hub_reachable() else ""
    if why:
        raise ValueError(f"unknown {what} {name!r}: not one of {', '.join(bundled)}, not a local folder, and not in "
                         f"the Hugging Face cache ({why}); pass a bundled name or a folder holding the model")
