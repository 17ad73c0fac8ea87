"""Index an image library through a connector and search it by text, by image, or by a mix of both.

    from vlmviz.search import SearchIndex
    index = SearchIndex.create("~/Pictures", connector="photo")   # or a checkpoint path
    index.update(progress=print)                                   # incremental: only what changed is embedded
    index.search('"a cat" - "indoors" + 0.5 * ./ref.jpg', k=10)

An image's vector is its pooled projected tokens (the connector's output, mean-pooled where it is token-level),
unit length, in the connector's text space; a text query is the text space's embedding of the words. Files are
known by content hash (sha1), so a renamed or moved photo is not embedded again. While one batch goes through the
encoder, a thread decodes and resizes the next, so indexing runs at the encoder's own pace (bench/bench_search.py).
"""
from __future__ import annotations

import hashlib
import queue
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..images import load_image
from ..paths import cache_dir, file_sha1
from ..tokens import pool_tokens
from .query import parse_query
from .store import Hit, IndexStoreError, ShardStore

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
VERSION = 1
Progress = Callable[[int, int, str], None]


class IndexCancelled(Exception):
    """update() was cancelled; everything embedded before the cancel is committed and the next update resumes."""


def scan(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Image files under root, recursively: {relative posix path: (size, mtime_ns)}; hidden folders skipped."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts[:-1]) or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if skip is not None and skip in path.parents:
            continue
        try:
            st = path.stat()
        except OSError:
            continue
        if path.is_file():
            out[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def default_index_dir(folder: str | Path, connector_sha1: str) -> Path:
    """Where `python -m vlmviz index FOLDER` keeps FOLDER's index for one connector unless told otherwise
    (outside the library, so indexing never writes into a user's photo folder)."""
    folder = Path(folder).expanduser().resolve()
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
    return cache_dir("indexes") / f"{folder.name or 'root'}-{digest}-{connector_sha1[:8]}"


def indexes_of(folder: str | Path) -> list[Path]:
    """The default-place indexes of an image folder, one per connector it was indexed with."""
    stem = default_index_dir(folder, "").name
    return sorted(p.parent for p in cache_dir("indexes").glob(f"{stem}*/index.sqlite"))


def resolve_connector(spec: str | None):
    """(Pipeline, identity) of a connector named on the command line: 'photo' or 'scenes' (the built-ins), a
    built-in's full label, or a checkpoint file. The identity (file sha1 and the models) is what an index records."""
    from ..builtins import BUILT_IN, PHOTO_CONSE, SCENES_LOWRANK, built_in_checkpoint
    from ..views.pipeline import get_checkpoint_pipeline

    if isinstance(spec, str) and spec.startswith("vlm:"):
        return _vlm_connector(spec)
    aliases = {None: PHOTO_CONSE, "photo": PHOTO_CONSE, "scenes": SCENES_LOWRANK}
    label = aliases.get(spec, spec)
    if label in BUILT_IN:
        path = built_in_checkpoint(label)
    else:
        path = Path(str(spec)).expanduser()
        if not path.is_file():
            raise ValueError(f"connector {spec!r}: expected 'photo', 'scenes' or a checkpoint file "
                             "(.safetensors from `python -m vlmviz train`); no such file")
        label = str(path.resolve())
    pipe = get_checkpoint_pipeline(path)
    identity = {"connector": label, "sha1": file_sha1(Path(path)), "encoder": pipe.encoder.name,
                "text": pipe.text.name, "tokens": pipe.tokens, "pooling": pipe.pooling}
    return pipe, identity


def _vlm_connector(spec: str):
    """A real VLM's own tower and connector (vlmviz.vlms) from a saved folder: 'vlm:PATH'. Its identity hashes the
    config and the weight files' names, sizes and mtimes (hashing gigabytes of weights on every query would not do)."""
    from ..views.pipeline import Pipeline

    folder = Path(spec[len("vlm:"):]).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"connector {spec!r}: expected vlm:FOLDER, a saved VLM's folder with config.json")
    folder = folder.resolve()
    key = _VLMS.get(str(folder))
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    h = hashlib.sha1((folder / "config.json").read_bytes())
    for w in weights:
        st = w.stat()
        h.update(f"{w.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    if key is None or key[0] != h.hexdigest():
        key = _VLMS[str(folder)] = (h.hexdigest(), Pipeline.from_vlm(folder))
    pipe = key[1]
    identity = {"connector": f"vlm:{folder}", "sha1": key[0], "encoder": pipe.encoder.name, "text": pipe.text.name,
                "tokens": pipe.tokens, "pooling": pipe.pooling}
    return pipe, identity


_VLMS: dict[str, tuple] = {}  # folder -> (identity hash, pipeline): a VLM is opened once per process


def embed_pixels(pipe, pixels: torch.Tensor) -> np.ndarray:
    """Preprocessed pixels (B, 3, H, W) -> unit vectors (B, D_txt) float32 through encoder and connector."""
    with torch.inference_mode():
        tokens = pipe.encoder.forward(pixels.to(pipe.encoder.device)).float().cpu()  # (B, N, D_vis)
        vec = pool_tokens(pipe.project(tokens), pipe._vector_pooling)  # (B, D_txt)
        return F.normalize(vec.float(), dim=-1).numpy()


def _prefetch(pipe, root: Path, todo: list[tuple[str, int, int, str]], batch_size: int, out: queue.Queue,
              stop: threading.Event) -> None:
    """Decode and preprocess batches ahead of the encoder: puts (files, pixels or None, bad) per batch."""
    try:
        for start in range(0, len(todo), batch_size):
            if stop.is_set():
                break
            good, images, bad = [], [], []
            for row in todo[start:start + batch_size]:
                try:
                    images.append(pipe.encoder.view(load_image(root / row[0], name=row[0])))
                    good.append(row)
                except (ValueError, OSError) as err:  # ImageLoadError is a ValueError
                    bad.append((row[0], str(err)))
            pixels = pipe.encoder.preprocess(images) if images else None
            out.put((good, pixels, bad))
    except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
        out.put(err)
    finally:
        out.put(None)


class SearchIndex:
    """A library index: the store plus the connector that made its vectors, loaded once and kept."""

    def __init__(self, store: ShardStore, pipe=None):
        self.store, self._pipe = store, pipe
        self.meta = store.get_meta()
        self.root = Path(self.meta["root"])

    # ---- opening ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, index_dir: str | Path | None = None, connector: str | None = None,
               ) -> "SearchIndex":
        """Open the index of `folder` (made with the same connector) or start a new one."""
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"{folder}: expected a folder of images")
        pipe, identity = resolve_connector(connector)
        index_dir = Path(index_dir).expanduser() if index_dir else default_index_dir(folder, identity["sha1"])
        store = ShardStore(index_dir, create=True)
        meta = store.get_meta()
        if "connector" in meta:
            _check_same(meta, identity, index_dir)
            if Path(meta["root"]) != folder:
                store.set_meta(root=str(folder))  # the library moved as a whole: paths are relative, vectors stay
        else:
            store.set_meta(version=VERSION, root=str(folder), created=time.time(), **identity)
        return cls(store, pipe)

    @classmethod
    def open(cls, path: str | Path, connector: str | None = None) -> "SearchIndex":
        """An index folder, or an image folder indexed at its default place. With `connector`, the connector
        must be the one the index was built with."""
        path = Path(path).expanduser()
        pipe = identity = None
        if connector is not None:
            pipe, identity = resolve_connector(connector)
        if not (path / "index.sqlite").exists() and path.is_dir():
            found = indexes_of(path)
            if identity is not None and default_index_dir(path, identity["sha1"]) in found:
                found = [default_index_dir(path, identity["sha1"])]
            if len(found) > 1:
                raise IndexStoreError(f"{path} is indexed with {len(found)} connectors; name one with --connector "
                                      f"or give the index folder: {', '.join(p.name for p in found)}")
            path = found[0] if found else path
        store = ShardStore(path)
        meta = store.get_meta()
        if "connector" not in meta:
            raise IndexStoreError(f"{path}: the index records no connector; rebuild it with `python -m vlmviz index`")
        if identity is not None:
            _check_same(meta, identity, path)
        return cls(store, pipe)

    @property
    def pipe(self):
        """The connector the index was built with, loaded on first use and kept for every later query."""
        if self._pipe is None:
            pipe, identity = resolve_connector(self.meta["connector"])
            _check_same(self.meta, identity, self.store.root)
            self._pipe = pipe
        return self._pipe

    # ---- building -----------------------------------------------------------------------------------------
    def update(self, batch_size: int = 16, progress: Progress | None = None,
               cancel: threading.Event | None = None, engine: str = "local") -> dict:
        """Bring the index in line with the folder: embed new or changed files, recognise renamed and copied ones
        by content hash, drop removed ones, retry files that were bad. Commits after every batch, so a kill or a
        cancel loses at most the batch in flight. engine 'ray' computes the embeddings on Ray Data (a cluster, or
        local processes), written into the same shards. Returns what changed."""
        problems = self.store.verify()
        on_disk = scan(self.root, skip=self.store.root.resolve())
        known = self.store.files()
        vectors = self.store.known_hashes()
        report = {"scanned": len(on_disk), "unchanged": 0, "renamed_or_copied": 0, "embedded": 0, "removed": 0,
                  "bad": {}, "repaired": problems}
        renamed, todo, seen = [], [], set()
        stale = [p for p, (size, mtime, h) in known.items() if p in on_disk and on_disk[p] == (size, mtime)
                 and h not in vectors]  # their vectors were in a damaged shard
        for i, (path, (size, mtime)) in enumerate(on_disk.items()):
            row = known.get(path)
            if row is not None and (row[0], row[1]) == (size, mtime) and path not in stale:
                report["unchanged"] += 1
                continue
            if progress and i % 200 == 0:
                progress(i, len(on_disk), "checking files")
            try:
                digest = file_sha1(self.root / path)
            except OSError as err:
                report["bad"][path] = f"cannot read: {err}"
                continue
            if digest in vectors:
                renamed.append((path, size, mtime, digest))
            else:
                todo.append((path, size, mtime, digest))
        if renamed:
            self.store.put_files(renamed)
            report["renamed_or_copied"] = sum(1 for r in renamed if r[0] not in known)
        gone = [p for p in known if p not in on_disk]
        self.store.remove_files(gone)
        still_here = {r[3] for r in renamed}  # a moved file's old path is gone, its content is not
        report["removed"] = sum(1 for p in gone if known[p][2] not in still_here)
        unique = []  # one embedding per content: copies within the batch share it
        for row in todo:
            if row[3] not in seen:
                seen.add(row[3])
                unique.append(row)
        self._embed(unique, todo, batch_size, progress, cancel, report, engine)
        self.store.prune()
        if report["bad"]:
            self.store.mark_bad(sorted(report["bad"].items()))
        self.store.set_meta(updated=time.time())
        report.update(self.store.counts())
        return report

    def _embed(self, unique, todo, batch_size, progress, cancel, report, engine: str = "local") -> None:
        """Embed `unique` (one row per new content) and commit batch by batch, whichever engine computes them."""
        if not unique:
            return
        by_hash: dict[str, list] = {}
        for row in todo:
            by_hash.setdefault(row[3], []).append(row)
        if engine == "ray":
            from .ray_index import embed_batches

            batches = embed_batches(self.meta["connector"], self.root, unique, batch_size)
        elif engine == "local":
            batches = self._local_batches(unique, batch_size)
        else:
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
        done = 0
        try:
            for good, vec, bad in batches:
                report["bad"].update(bad)
                if good:
                    self.store.append([g[3] for g in good], vec, [r for g in good for r in by_hash[g[3]]])
                    report["embedded"] += len(good)
                done += len(good) + len(bad)
                if progress:
                    progress(done, len(unique), "embedding images")
                if cancel is not None and cancel.is_set():
                    raise IndexCancelled(f"cancelled after {done} of {len(unique)} images; run the update again to "
                                         "go on from there")
        finally:
            batches.close()

    def _local_batches(self, unique, batch_size):
        """(files, unit vectors, bad files) per batch, in this process: a thread decodes the next batch while
        the encoder runs on this one."""
        pipe = self.pipe
        out: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()
        worker = threading.Thread(target=_prefetch, args=(pipe, self.root, unique, batch_size, out, stop), daemon=True)
        worker.start()
        try:
            while (item := out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                good, pixels, bad = item
                yield good, (embed_pixels(pipe, pixels) if pixels is not None else None), bad
        finally:
            stop.set()
            while worker.is_alive():  # unblock a worker waiting on a full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    time.sleep(0.01)

    # ---- querying -----------------------------------------------------------------------------------------
    def query_vector(self, query: str) -> np.ndarray:
        """The unit vector of a query expression (see vlmviz.search.query)."""
        total = None
        for weight, kind, value in parse_query(query):
            vec = self._text_vector(value) if kind == "text" else self._image_vector(value)
            total = weight * vec if total is None else total + weight * vec
        norm = float(np.linalg.norm(total))
        if not norm > 1e-8:
            raise ValueError(f"query {query!r} adds up to nothing (its terms cancel out)")
        return (total / norm).astype(np.float32)

    def _text_vector(self, text: str) -> np.ndarray:
        vec = self.pipe.text.encode([text])  # (1, D_txt)
        return F.normalize(vec.float(), dim=-1)[0].numpy()

    def _image_vector(self, path: str) -> np.ndarray:
        path = Path(path).expanduser()
        if path.is_file():
            stored = self.store.vector_of(file_sha1(path))
            if stored is not None:  # an indexed photo: its vector is already here
                return stored
        pixels = self.pipe.encoder.preprocess([load_image(path, name=path.name)])
        return embed_pixels(self.pipe, pixels)[0]

    def sync_ann(self) -> dict:
        """Bring the LanceDB mirror (IVF-PQ, approximate) in line with the exact index; see vlmviz.search.lance."""
        from .lance import LanceStore

        lance = LanceStore(self.store.root / "lance")
        report = lance.sync(self.store)
        if report["added"] or report["deleted"]:
            lance.build_ann()
        return report

    def search(self, query: str | np.ndarray, k: int = 20, min_score: float | None = None, folder: str | None = None,
               after: str | None = None, before: str | None = None, ann: bool = False) -> list[Hit]:
        """Top-k files for a query expression (or a unit vector), best first: exact cosine over every vector,
        optionally only files under `folder` (relative to the library) or modified within [after, before)
        (dates as YYYY-MM-DD). ann: through the LanceDB mirror (approximate; built by sync_ann)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive whole number, got {k!r}")
        vec = self.query_vector(query) if isinstance(query, str) else np.asarray(query, np.float32)
        where, params = _filters(folder, after, before)
        allowed = None
        if where:
            allowed = {h for (h,) in self.store.db.execute(f"SELECT hash FROM files {where}", params)}
        if ann:
            from .lance import LanceStore

            if not (self.store.root / "lance").is_dir():
                raise IndexStoreError(f"{self.store.root} has no LanceDB mirror; build it with "
                                      "`python -m vlmviz index FOLDER --ann lance`")
            fetch = k if allowed is None else k * 10  # filters apply after the approximate search
            ranked = [(h, s) for h, s in LanceStore(self.store.root / "lance").top_k(vec, fetch)
                      if allowed is None or h in allowed][:k]
        else:
            ranked = self.store.top_k(vec, k, allowed)
        paths = self.store.paths_of([h for h, _ in ranked], where, params)
        hits = []
        for h, score in ranked:
            if min_score is not None and score < min_score:
                break
            hits += [Hit(str(self.root / p), score, h) for p in paths.get(h, [])]
        return hits[:k]

    def summary(self) -> dict:
        m = self.meta
        return {"root": str(self.root), "index": str(self.store.root), "connector": m.get("connector"),
                "encoder": m.get("encoder"), "text": m.get("text"), "dim": m.get("dim"), **self.store.counts()}


def _check_same(meta: dict, identity: dict, where) -> None:
    if meta.get("sha1") != identity["sha1"]:
        raise IndexStoreError(f"the index at {where} was built with connector {meta.get('connector')!r} "
                              f"({meta.get('encoder')} -> {meta.get('text')}); {identity['connector']!r} is another "
                              "connector and its vectors would not compare. Query without --connector, or build "
                              "a new index with it (--index DIR)")


def _day(text: str, what: str) -> int:
    try:
        return int(datetime.strptime(text, "%Y-%m-%d").timestamp() * 1e9)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a date as YYYY-MM-DD, got {text!r}") from None


def _filters(folder, after, before) -> tuple[str, tuple]:
    clauses, params = [], []
    if folder:
        prefix = Path(folder).as_posix().strip("/")
        clauses.append("(path LIKE ? ESCAPE '\\')")
        params.append(prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%")
    if after:
        clauses.append("mtime_ns >= ?")
        params.append(_day(after, "--after"))
    if before:
        clauses.append("mtime_ns < ?")
        params.append(_day(before, "--before"))
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)
