"""What the app's Search tab does, without gradio: pick or build an index, run a query, list the hits.

Indexes are opened once and kept, with their connector loaded, so a second query costs a text embedding and one
scan (the complaint of rclip's users: a model load per query).
"""
from __future__ import annotations

import threading
from pathlib import Path

from ..paths import cache_dir
from .index import SearchIndex, indexes_of
from .query import parse_query
from .store import ShardStore

GALLERY_FOLDER = Path(__file__).resolve().parents[2] / "assets" / "gallery"  # the bundled photos: a first library
_OPEN: dict[str, SearchIndex] = {}
_LOCK = threading.Lock()


def known_indexes() -> dict[str, str]:
    """{label: index folder} of the indexes at the default place, newest first; labels name library and connector."""
    found = []
    for db in cache_dir("indexes").glob("*/index.sqlite"):
        try:
            store = ShardStore(db.parent)
            meta, counts = store.get_meta(), store.counts()
            store.close()
        except Exception:  # noqa: BLE001 - a half-written or foreign folder is not listed
            continue
        if "connector" not in meta or not Path(meta["root"]).is_dir():
            continue  # a library that is gone (a moved folder is found again by building from its new place)
        connector = Path(meta["connector"]).stem if "/" in meta["connector"] else meta["connector"]
        label = f"{Path(meta['root']).name} · {connector} · {counts['files']} images"
        found.append((meta.get("updated", 0), label, str(db.parent)))
    return {label: path for _, label, path in sorted(found, reverse=True)}


def open_index(path: str | Path) -> SearchIndex:
    """An index folder, opened once per process."""
    key = str(Path(path).resolve())
    with _LOCK:
        if key not in _OPEN:
            _OPEN[key] = SearchIndex.open(key)
        return _OPEN[key]


def build(folder: str, connector: str, progress=None, cancel: threading.Event | None = None):
    """Create or update the index of `folder` through `connector` (a built-in label or a checkpoint path);
    returns (index folder, update report)."""
    if not folder or not str(folder).strip():
        raise ValueError("no folder given: type the path of a folder of images on this machine")
    folder = Path(str(folder).strip()).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder}: expected a folder of images on the machine running vlmviz")
    index = SearchIndex.create(folder, connector=connector)
    report = index.update(progress=progress, cancel=cancel)
    with _LOCK:
        _OPEN[str(index.store.root.resolve())] = index  # keep the loaded connector for the queries that follow
    return str(index.store.root), report


def report_line(report: dict) -> str:
    line = (f"{report['files']} images indexed: {report['embedded']} embedded now, {report['renamed_or_copied']} "
            f"renamed or copied, {report['unchanged']} unchanged, {report['removed']} removed")
    if report["bad"]:
        shown = "; ".join(f"{p}: {r.split(': ', 1)[-1]}" for p, r in list(report["bad"].items())[:3])
        line += f". Skipped {len(report['bad'])} unreadable: {shown}" + (" ..." if len(report["bad"]) > 3 else "")
    return line


def run_query(path: str, query: str, k: int = 12, min_score: float | None = None, folder: str | None = None):
    """(hits as [(image path, 'score · name')], note) for the Search tab."""
    if not path:
        raise ValueError("no index chosen: build one from a folder first (the bundled gallery is a quick start)")
    index = open_index(path)
    hits = index.search(query, k=int(k), min_score=min_score, folder=folder or None)
    terms = parse_query(query)
    shown = " ".join(f"{'-' if w < 0 else '+'} {'' if abs(w) == 1 else f'{abs(w):g} * '}"
                     f"{Path(v).name if kind == 'image' else repr(v)}" for w, kind, v in terms).removeprefix("+ ")
    s = index.summary()
    note = (f"{len(hits)} of {s['files']} images for {shown} · exact cosine in {s['text']} through "
            f"{Path(s['connector']).stem if '/' in str(s['connector']) else s['connector']}")
    return [(h.path, f"{h.score:.3f} · {Path(h.path).name}") for h in hits], note


def query_captions(query: str) -> list[str]:
    """The text terms of a query, the captions Inspect ranks and maps a result against."""
    return [v for w, kind, v in parse_query(query) if kind == "text" and w > 0]


def connector_of(path: str) -> str:
    return open_index(path).meta["connector"]


__all__ = ["GALLERY_FOLDER", "build", "connector_of", "indexes_of", "known_indexes", "open_index",
           "query_captions", "report_line", "run_query"]
