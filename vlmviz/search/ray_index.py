"""Indexing on Ray Data, for libraries that outgrow one process or one machine (optional: pip install "ray[data]").

    index = SearchIndex.create("/data/photos", connector="photo")
    index.update(engine="ray")        # ray.init() first to join a cluster; otherwise a local one is started

The driver scans and hashes (cheap), Ray Data runs `map_batches` with an actor class that loads the connector
once per worker and embeds batch after batch, and the driver writes what comes back into the same shards and
SQLite as the single-process path, batch by batch, so a run that dies is resumed by the next `update`.
Workers read the images from the same path, so on a cluster the library must be on storage every node sees.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError('indexing on Ray needs the optional extra: pip install "ray[data]" (Apache-2.0); '
                          "the default single-process index needs none of it") from None
    return ray


class Embedder:
    """One Ray actor: the connector loaded once, then images -> unit vectors for every batch it is given."""

    def __init__(self, connector: str, root: str, threads: int = 1):
        import torch

        from .index import resolve_connector

        torch.set_num_threads(threads)
        self.pipe, _ = resolve_connector(connector)
        self.root = Path(root)

    def __call__(self, batch: dict) -> dict:
        from ..images import load_image
        from .index import embed_pixels

        images, errors = [], []
        for path in batch["path"]:
            try:
                images.append(self.pipe.encoder.view(load_image(self.root / str(path), name=str(path))))
                errors.append("")
            except (ValueError, OSError) as err:
                images.append(None)
                errors.append(str(err))
        good = [im for im in images if im is not None]
        dim = self.pipe.text.dim
        vectors = np.zeros((len(images), dim), np.float32)
        if good:
            vectors[[i for i, im in enumerate(images) if im is not None]] = embed_pixels(
                self.pipe, self.pipe.encoder.preprocess(good))
        return {"path": batch["path"], "hash": batch["hash"], "vector": vectors, "error": np.array(errors, object)}


def embed_batches(connector: str, root: Path, unique: list[tuple[str, int, int, str]], batch_size: int = 16,
                  workers: int | None = None):
    """(files, vectors, bad files) per batch as Ray Data's actors finish them (any order; rows are keyed by
    content hash). Starts a local Ray with this machine's CPUs when none is running."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller draws one progress bar for the whole update
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = workers or max(1, min(cpus, len(unique) // batch_size or 1))
    row_of = {r[3]: r for r in unique}
    ds = ray.data.from_items([{"path": r[0], "hash": r[3]} for r in unique])
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"connector": connector, "root": str(root)},
                        batch_size=batch_size, batch_format="numpy", concurrency=workers, num_cpus=1)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ok = [i for i, e in enumerate(batch["error"]) if not e]
        good = [row_of[str(batch["hash"][i])] for i in ok]
        bad = [(str(batch["path"][i]), str(e)) for i, e in enumerate(batch["error"]) if e]
        yield good, (np.asarray(batch["vector"][ok], np.float32) if ok else None), bad
