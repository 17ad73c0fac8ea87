"""The default index store: float32 vector shards on disk plus one SQLite file. No server, no extra package.

    index/
      index.sqlite          meta (who made the vectors), files (path, size, mtime, content hash), vectors
                            (content hash -> shard, row, crc32), shards (committed row counts), bad (skipped files)
      shards/00000.f32      rows of D float32, unit length, row-major; memory-mapped and scanned in chunks

Crash safety comes from the order of writes: vectors are appended to a shard and fsynced *before* the SQLite
transaction that makes them visible commits. A kill at any point leaves either the committed state (and a shard
tail past the committed row count, which the next writer overwrites) or the new one; nothing is lost and nothing
counted twice. Every row carries the crc32 of its bytes, so a damaged shard is found (`verify`) and its rows
dropped, which makes the next update re-embed exactly those files.

Vectors are keyed by content hash, not path: two copies of a photo share one row, and a renamed or moved file
keeps its vector. A row no file points at any more is dead; it is skipped by queries and reclaimed by `compact`.
"""
from __future__ import annotations

import json
import os
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARD_ROWS = 65_536  # rows per shard file: 96 MiB at 384-d, so one file never holds a whole large library
CHUNK_ROWS = 65_536  # rows scored per matmul when scanning: bounded memory whatever the index size
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                                  hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS files_hash ON files (hash);
CREATE TABLE IF NOT EXISTS vectors (hash TEXT PRIMARY KEY, shard INTEGER NOT NULL, row INTEGER NOT NULL,
                                    crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bad (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""


class IndexStoreError(ValueError):
    """An index folder that cannot be used as asked; the message says what was expected."""


def row_crcs(block: np.ndarray) -> list[int]:
    """crc32 of each row's float32 bytes."""
    block = np.ascontiguousarray(block, dtype="<f4")
    return [zlib.crc32(row.tobytes()) for row in block]


@dataclass
class Hit:
    path: str
    score: float
    hash: str


class ShardStore:
    """Exact top-k over memory-mapped float32 shards, with the bookkeeping in SQLite."""

    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root)
        db = self.root / "index.sqlite"
        if not db.exists() and not create:
            raise IndexStoreError(f"{self.root} is not a vlmviz index (no index.sqlite); build one with "
                              "`python -m vlmviz index FOLDER`")
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(db, timeout=30, check_same_thread=False)
        self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA journal_mode=WAL")
        self._live = None  # (hashes per global row, shard/row arrays) cached for queries; reset on every write
        self._maps: dict[tuple[int, int], np.ndarray] = {}  # (shard, rows) -> memmap, for queries

    # ---- meta ---------------------------------------------------------------------------------------------
    def get_meta(self) -> dict:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    @property
    def dim(self) -> int:
        dim = self.get_meta().get("dim")
        if not dim:
            raise IndexStoreError(f"{self.root}: the index records no vector width yet (nothing was indexed)")
        return int(dim)

    # ---- shards -------------------------------------------------------------------------------------------
    def _shard_path(self, shard: int) -> Path:
        return self.root / "shards" / f"{shard:05d}.f32"

    def _shard_rows(self) -> dict[int, int]:
        return dict(self.db.execute("SELECT id, rows FROM shards ORDER BY id"))

    def _open_shard(self) -> tuple[int, int]:
        """(shard id, committed rows) of the shard new rows go to."""
        rows = self._shard_rows()
        if rows and max(rows.items())[1] < SHARD_ROWS:
            shard = max(rows)
            return shard, rows[shard]
        shard = max(rows) + 1 if rows else 0
        with self.db:
            self.db.execute("INSERT INTO shards VALUES (?, 0)", (shard,))
        return shard, 0

    def append(self, hashes: list[str], vectors: np.ndarray, files: list[tuple[str, int, int, str]]) -> None:
        """Add vectors (B, D) for `hashes` and the file rows (path, size, mtime_ns, hash) that point at them,
        atomically: after a kill either all of them are in the index or none."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or len(vectors) != len(hashes):
            raise ValueError(f"expected {len(hashes)} vectors of shape (B, D), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("refusing to index non-finite vectors (NaN or inf came out of the connector)")
        meta_dim = self.get_meta().get("dim")
        if meta_dim is None:
            self.set_meta(dim=int(vectors.shape[1]))
        elif vectors.shape[1] != meta_dim:
            raise ValueError(f"this index holds {meta_dim}-d vectors; got {vectors.shape[1]}-d")
        start = 0
        while start < len(vectors):
            shard, committed = self._open_shard()
            take = min(SHARD_ROWS - committed, len(vectors) - start)
            block = vectors[start:start + take]
            path = self._shard_path(shard)
            with open(path, "r+b" if path.exists() else "w+b") as f:
                f.truncate(committed * block.shape[1] * 4)  # drop a tail an interrupted writer left behind
                f.seek(committed * block.shape[1] * 4)
                f.write(block.tobytes())
                f.flush()
                os.fsync(f.fileno())
            names = hashes[start:start + take]
            mine = set(names)
            with self.db:  # one transaction: the vectors, their files and the new row count appear together
                self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                                    [(h, shard, committed + i, c) for i, (h, c) in enumerate(zip(names, row_crcs(block)))])
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                    [f for f in files if f[3] in mine])
                self.db.execute("UPDATE shards SET rows = ? WHERE id = ?", (committed + take, shard))
                self.db.executemany("DELETE FROM bad WHERE path = ?", [(f[0],) for f in files if f[3] in mine])
            start += take
        self._live = None

    # ---- files --------------------------------------------------------------------------------------------
    def files(self) -> dict[str, tuple[int, int, str]]:
        return {p: (s, m, h) for p, s, m, h in self.db.execute("SELECT path, size, mtime_ns, hash FROM files")}

    def known_hashes(self) -> set[str]:
        return {h for (h,) in self.db.execute("SELECT hash FROM vectors")}

    def put_files(self, rows: list[tuple[str, int, int, str]]) -> None:
        """File rows whose content is already embedded (a rename, a copy, a touched file)."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", rows)
            self.db.executemany("DELETE FROM bad WHERE path = ?", [(r[0],) for r in rows])
        self._live = None

    def remove_files(self, paths: list[str]) -> None:
        """Forget these files; a vector no file points at any more becomes a dead row (see `compact`)."""
        with self.db:
            self.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])
            self.db.executemany("DELETE FROM bad WHERE path = ?", [(p,) for p in paths])
            self.db.execute("DELETE FROM vectors WHERE hash NOT IN (SELECT hash FROM files)")
        self._live = None

    def prune(self) -> None:
        """Drop vectors whose files now hold other content."""
        self.remove_files([])

    def mark_bad(self, rows: list[tuple[str, str]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO bad VALUES (?, ?)", rows)
            self.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p, _ in rows])

    def bad_files(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT path, reason FROM bad ORDER BY path"))

    def counts(self) -> dict:
        one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        stored = one("SELECT COALESCE(SUM(rows), 0) FROM shards")
        live = one("SELECT COUNT(*) FROM vectors")
        return {"files": one("SELECT COUNT(*) FROM files"), "vectors": live, "dead_rows": stored - live,
                "shards": one("SELECT COUNT(*) FROM shards"), "bad_files": one("SELECT COUNT(*) FROM bad")}

    # ---- integrity ----------------------------------------------------------------------------------------
    def _memmap(self, shard: int, rows: int) -> np.ndarray:
        return np.memmap(self._shard_path(shard), dtype="<f4", mode="r", shape=(rows, self.dim))

    def _mapped(self, shard: int, rows: int) -> np.ndarray:
        """The shard's map, kept between queries: a fresh mmap per query would fault in every page again
        (375k page faults for 1M x 384), which costs more than the scan."""
        key = (shard, rows)
        if key not in self._maps:
            self._maps[key] = self._memmap(shard, rows)
        return self._maps[key]

    def verify(self) -> list[str]:
        """Check every committed row against its crc32 (and every shard's length); drop the rows of a damaged
        shard so that the next update re-embeds their files. Returns one line per problem found."""
        if "dim" not in self.get_meta():
            return []
        problems, drop = [], []
        for shard, rows in self._shard_rows().items():
            path = self._shard_path(shard)
            size = path.stat().st_size if path.exists() else 0
            if size < rows * self.dim * 4:
                problems.append(f"shard {path.name}: {size} bytes, expected {rows * self.dim * 4} "
                                f"({rows} rows of {self.dim} float32)")
                drop.append(shard)
                continue
            if rows == 0:
                continue
            data = self._memmap(shard, rows)
            stored = self.db.execute("SELECT row, crc FROM vectors WHERE shard = ?", (shard,)).fetchall()
            bad = [r for r, c in stored if zlib.crc32(np.ascontiguousarray(data[r]).tobytes()) != c]
            if bad:
                problems.append(f"shard {path.name}: {len(bad)} of {len(stored)} rows fail their checksum")
                drop.append(shard)
        for shard in drop:
            with self.db:
                self.db.execute("DELETE FROM vectors WHERE shard = ?", (shard,))
                self.db.execute("DELETE FROM shards WHERE id = ?", (shard,))
            self._shard_path(shard).unlink(missing_ok=True)
        self._live = None
        return problems

    def compact(self) -> int:
        """Rewrite the live rows into fresh shards (dead rows reclaimed); returns the rows reclaimed."""
        counts = self.counts()
        if counts["dead_rows"] == 0:
            return 0
        hashes, vectors = self.vectors()
        old = self._shard_rows()
        top = max(old) + 1 if old else 0
        new_rows, placed = [], []
        for i, start in enumerate(range(0, len(vectors), SHARD_ROWS)):
            block = np.ascontiguousarray(vectors[start:start + SHARD_ROWS], dtype="<f4")
            with open(self._shard_path(top + i), "wb") as f:
                f.write(block.tobytes())
                f.flush()
                os.fsync(f.fileno())
            new_rows.append((top + i, len(block)))
            placed += [(h, top + i, r, c) for r, (h, c) in enumerate(zip(hashes[start:start + SHARD_ROWS],
                                                                        row_crcs(block)))]
        with self.db:
            self.db.execute("DELETE FROM vectors")
            self.db.execute("DELETE FROM shards")
            self.db.executemany("INSERT INTO vectors VALUES (?, ?, ?, ?)", placed)
            self.db.executemany("INSERT INTO shards VALUES (?, ?)", new_rows)
        for shard in old:
            self._shard_path(shard).unlink(missing_ok=True)
        self._live = None
        return counts["dead_rows"]

    # ---- reading ------------------------------------------------------------------------------------------
    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every live (hash, vector), in shard order: for comparisons and compaction, not for queries."""
        out_h, out_v = [], []
        for shard, rows in self._shard_rows().items():
            stored = self.db.execute("SELECT hash, row FROM vectors WHERE shard = ? ORDER BY row", (shard,)).fetchall()
            if not stored:
                continue
            data = self._memmap(shard, rows)
            out_h += [h for h, _ in stored]
            out_v.append(np.asarray(data[[r for _, r in stored]]))
        dim = self.get_meta().get("dim", 0)
        return out_h, (np.concatenate(out_v) if out_v else np.zeros((0, dim), np.float32))

    def vector_of(self, content_hash: str) -> np.ndarray | None:
        row = self.db.execute("SELECT shard, row FROM vectors WHERE hash = ?", (content_hash,)).fetchone()
        if row is None:
            return None
        shard, r = row
        return np.asarray(self._memmap(shard, self._shard_rows()[shard])[r])

    def _live_rows(self) -> dict[int, tuple[np.ndarray, list[str]]]:
        """Per shard: the row numbers of live vectors and their hashes (loaded once per state of the index)."""
        if self._live is None:
            self._maps.clear()
            live: dict[int, tuple[list, list]] = {}
            for h, shard, r in self.db.execute("SELECT hash, shard, row FROM vectors ORDER BY shard, row"):
                rows, names = live.setdefault(shard, ([], []))
                rows.append(r)
                names.append(h)
            self._live = {s: (np.asarray(rows, dtype=np.int64), names) for s, (rows, names) in live.items()}
        return self._live

    def top_k(self, query: np.ndarray, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        """Exact top-k (content hash, cosine) of a unit query against every live row, scanning each shard in
        chunks of CHUNK_ROWS so memory stays bounded; `allowed` restricts to those hashes (filters)."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if "dim" not in self.get_meta():
            return []
        if query.shape[0] != self.dim:
            raise ValueError(f"query vector is {query.shape[0]}-d; this index holds {self.dim}-d vectors")
        best_s, best_h = np.zeros(0, np.float32), []
        shard_rows = self._shard_rows()
        for shard, (rows, names) in self._live_rows().items():
            data = self._mapped(shard, shard_rows[shard])
            for start in range(0, shard_rows[shard], CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, shard_rows[shard])
                scores = np.asarray(data[start:stop]) @ query  # (chunk,)
                lo, hi = np.searchsorted(rows, [start, stop])
                picked, local = rows[lo:hi] - start, names[lo:hi]  # live rows of this chunk
                s = scores[picked]
                if allowed is not None:
                    keep = np.fromiter((h in allowed for h in local), bool, len(local))
                    s, local = s[keep], [h for h, ok in zip(local, keep) if ok]
                if len(s) > k:
                    top = np.argpartition(-s, k - 1)[:k]
                    s, local = s[top], [local[i] for i in top]
                best_s = np.concatenate([best_s, s])
                best_h = best_h + list(local)
                if len(best_s) > k:
                    top = np.argpartition(-best_s, k - 1)[:k]
                    best_s, best_h = best_s[top], [best_h[i] for i in top]
        order = np.argsort(-best_s, kind="stable")
        return [(best_h[i], float(best_s[i])) for i in order]

    def paths_of(self, hashes: list[str], where: str = "", params: tuple = ()) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for path, h in self.db.execute(f"SELECT path, hash FROM files {where} ORDER BY path", params):
            out.setdefault(h, []).append(path)
        return {h: out[h] for h in hashes if h in out}

    def close(self) -> None:
        self.db.close()
