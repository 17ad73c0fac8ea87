"""The default index store: float32 vector shards on disk plus one SQLite file. No server, no extra package.

    index/
      index.sqlite          meta (who made the vectors), files (path, size, mtime, content hash), vectors
                            (content hash -> shard, row, crc32), shards (committed row counts), bad (skipped files)
      shards/00000.f32      rows of D float32, unit length, row-major; memory-mapped and scanned in chunks
      shards/00000.i8       the same rows as int8 codes, and 00000.i8s their float32 (scale, residual norm): what a
                            query scans first (a quarter of the bytes); derived from the .f32, crc-checked, and
                            rebuilt from it when missing, stale or damaged (vlmviz.search.lowp has the error bound)

Crash safety comes from the order of writes: vectors are appended to a shard and fsynced *before* the SQLite
transaction that makes them visible commits. A kill at any point leaves either the committed state (and a shard
tail past the committed row count, which the next writer overwrites) or the new one; nothing is lost and nothing
counted twice. Every row carries the crc32 of its bytes, so a damaged shard is found (`verify`) and its rows
dropped, which makes the next update re-embed exactly those files.

Vectors are keyed by content hash, not path: two copies of a photo share one row, and a renamed or moved file
keeps its vector. A row no file points at any more is dead; it is skipped by queries and reclaimed by `compact`.

A query scores every eligible row from the int8 copy, keeps the rows within twice the proven error bound of the
k-th best approximate score, and rescores those from the float32 shards: the exact top-k, for about a quarter of
the memory traffic of a float32 scan (bench/bench_search.py).
"""
from __future__ import annotations

import json
import os
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .lowp import MAX_NORM, QuantQuery, exact_scores, float32_bound, keep_floor, quantize_rows

SHARD_ROWS = 65_536  # rows per shard file: 96 MiB at 384-d, so one file never holds a whole large library
CHUNK_ROWS = 65_536  # rows scored per matmul when scanning: bounded memory whatever the index size
# int8 copies up to this size are read into memory and kept between queries, the rest stay memory-mapped:
# the scan ran 1.2-1.5x faster from memory here (BENCHMARKS.md; likely huge pages, which a file map does not get).
# 2 GiB holds 5.5M vectors of 384; beyond it the index still works from the maps
LOWP_RAM_BYTES = 2 << 30
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                                  hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS files_hash ON files (hash);
CREATE TABLE IF NOT EXISTS vectors (hash TEXT PRIMARY KEY, shard INTEGER NOT NULL, row INTEGER NOT NULL,
                                    crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bad (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lowp (shard INTEGER PRIMARY KEY, rows INTEGER NOT NULL, crc INTEGER NOT NULL,
                                 crc_aux INTEGER NOT NULL);
"""


class IndexStoreError(ValueError):
    """An index folder that cannot be used as asked; the message says what was expected."""


def row_crcs(block: np.ndarray) -> list[int]:
    """crc32 of each row's float32 bytes."""
    block = np.ascontiguousarray(block, dtype="<f4")
    return [zlib.crc32(row.tobytes()) for row in block]


def _write_at(path: Path, offset: int, data: bytes) -> None:
    """Write `data` at `offset` of `path` (cutting what lay beyond it) and fsync."""
    with open(path, "r+b" if path.exists() else "w+b") as f:
        f.truncate(offset)
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _file_crc(path: Path, size: int) -> int | None:
    """crc32 of the first `size` bytes of `path`, or None when the file is shorter or missing."""
    if not path.exists() or path.stat().st_size < size:
        return None
    crc, left = 0, size
    with open(path, "rb") as f:
        while left:
            chunk = f.read(min(left, 1 << 24))
            crc, left = zlib.crc32(chunk, crc), left - len(chunk)
    return crc


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
        self._lowmaps: dict[tuple[int, int], tuple | None] = {}  # (shard, rows) -> (int8 codes, scales, max resid)
        self._lowp_bytes = 0  # of int8 codes read into memory (LOWP_RAM_BYTES)
        self._where = None  # (the _live it was made from, content hash -> (shard, row)), for filters

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

    def _lowp_paths(self, shard: int) -> tuple[Path, Path]:
        """The shard's int8 copy: codes (rows, D) int8 and (rows, 2) float32 (scale, residual norm)."""
        return self.root / "shards" / f"{shard:05d}.i8", self.root / "shards" / f"{shard:05d}.i8s"

    def _lowp_crcs(self, shard: int, rows: int) -> tuple[int, int]:
        """crc32s of the shard's int8 copy of its first `rows` rows, rebuilt from the float32 shard first when the
        recorded copy covers other rows (an index from before the copy existed, an interrupted rebuild)."""
        got = self.db.execute("SELECT rows, crc, crc_aux FROM lowp WHERE shard = ?", (shard,)).fetchone()
        if got is not None and got[0] == rows:
            return got[1], got[2]
        return self._rebuild_lowp(shard, rows)

    def _rebuild_lowp(self, shard: int, rows: int) -> tuple[int, int]:
        """Write the int8 copy of the shard's first `rows` float32 rows to new files swapped in whole (a reader's
        map of the old ones stays valid), record it, and return its crc32s. The float32 shard is the truth."""
        data = self._memmap(shard, rows) if rows else np.zeros((0, self.dim), np.float32)
        crcs, paths = [0, 0], self._lowp_paths(shard)
        tmps = [p.with_name(p.name + ".tmp") for p in paths]
        with open(tmps[0], "wb") as fc, open(tmps[1], "wb") as fa:
            for start in range(0, rows, CHUNK_ROWS):
                for i, (f, part) in enumerate(zip((fc, fa), quantize_rows(np.asarray(data[start:start + CHUNK_ROWS])))):
                    f.write(part.tobytes())
                    crcs[i] = zlib.crc32(part.tobytes(), crcs[i])
            for f in (fc, fa):
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO lowp VALUES (?, ?, ?, ?)", (shard, rows, *crcs))
        for key in [key for key in self._lowmaps if key[0] == shard]:
            got = self._lowmaps.pop(key)
            if got is not None and not isinstance(got[0], np.memmap):
                self._lowp_bytes -= got[0].nbytes
        return crcs[0], crcs[1]

    def _lowp_problem(self, shard: int, rows: int) -> str | None:
        """Why the shard's int8 copy cannot be used for its `rows` committed rows (None: it can)."""
        got = self.db.execute("SELECT rows, crc, crc_aux FROM lowp WHERE shard = ?", (shard,)).fetchone()
        if got is None:
            return "missing"
        if got[0] != rows:
            return f"stale (covers {got[0]} of {rows} rows)"
        codes, aux = self._lowp_paths(shard)
        for path, size, crc in ((codes, rows * self.dim, got[1]), (aux, rows * 8, got[2])):
            found = _file_crc(path, size)
            if found is None:
                return f"{path.name} missing or shorter than {size} bytes"
            if found != crc:
                return f"{path.name} fails its checksum"
        return None

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
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1) if len(vectors) else np.zeros(0)
        if (norms > MAX_NORM).any():  # the int8 prefilter's error bound assumes it (vlmviz.search.lowp)
            raise ValueError(f"expected unit vectors (the index ranks by cosine); got a row of norm {norms.max():.4f}")
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
            _write_at(path, committed * block.shape[1] * 4, block.tobytes())  # drops an interrupted writer's tail
            crcs = self._lowp_crcs(shard, committed)
            codes, aux = quantize_rows(block)  # (take, D) int8, (take, 2) float32
            _write_at(self._lowp_paths(shard)[0], committed * block.shape[1], codes.tobytes())
            _write_at(self._lowp_paths(shard)[1], committed * 8, aux.tobytes())
            crcs = (zlib.crc32(codes.tobytes(), crcs[0]), zlib.crc32(aux.tobytes(), crcs[1]))
            names = hashes[start:start + take]
            mine = set(names)
            with self.db:  # one transaction: the vectors, their files and the new row count appear together
                self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                                    [(h, shard, committed + i, c) for i, (h, c) in enumerate(zip(names, row_crcs(block)))])
                self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                    [f for f in files if f[3] in mine])
                self.db.execute("UPDATE shards SET rows = ? WHERE id = ?", (committed + take, shard))
                self.db.execute("INSERT OR REPLACE INTO lowp VALUES (?, ?, ?, ?)", (shard, committed + take, *crcs))
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
        shard so that the next update re-embeds their files. Then check each int8 copy against its crc32s and
        rebuild it from its float32 shard when missing, stale or damaged. Returns one line per problem found."""
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
                self.db.execute("DELETE FROM lowp WHERE shard = ?", (shard,))
            for path in (self._shard_path(shard), *self._lowp_paths(shard)):
                path.unlink(missing_ok=True)
        with self.db:  # records a kill in the middle of `compact` left behind
            self.db.execute("DELETE FROM lowp WHERE shard NOT IN (SELECT id FROM shards)")
        for shard, rows in self._shard_rows().items():
            why = self._lowp_problem(shard, rows)
            if why is not None:
                problems.append(f"int8 copy of shard {self._shard_path(shard).name}: {why}; rebuilt from float32")
                self._rebuild_lowp(shard, rows)
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
        for shard, rows in new_rows:  # recorded (in lowp) now; the old shards' records go in the swap below
            self._rebuild_lowp(shard, rows)
        with self.db:
            self.db.execute("DELETE FROM vectors")
            self.db.execute("DELETE FROM shards")
            self.db.executemany("INSERT INTO vectors VALUES (?, ?, ?, ?)", placed)
            self.db.executemany("INSERT INTO shards VALUES (?, ?)", new_rows)
            self.db.executemany("DELETE FROM lowp WHERE shard = ?", [(shard,) for shard in old])
        for shard in old:
            for path in (self._shard_path(shard), *self._lowp_paths(shard)):
                path.unlink(missing_ok=True)
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
            self._lowmaps.clear()
            self._lowp_bytes = 0
            live: dict[int, tuple[list, list]] = {}
            for h, shard, r in self.db.execute("SELECT hash, shard, row FROM vectors ORDER BY shard, row"):
                rows, names = live.setdefault(shard, ([], []))
                rows.append(r)
                names.append(h)
            self._live = {s: (np.asarray(rows, dtype=np.int64), names) for s, (rows, names) in live.items()}
        return self._live

    def _eligible(self, allowed: set[str] | None) -> dict[int, np.ndarray]:
        """Per shard, the sorted rows a query may return: the live ones, or those of the `allowed` hashes."""
        live = self._live_rows()
        if allowed is None:
            return {shard: rows for shard, (rows, _) in live.items()}
        if self._where is None or self._where[0] is not live:
            self._where = (live, {h: (shard, r) for shard, (rows, names) in live.items()
                                  for h, r in zip(names, rows.tolist())})
        where, picked = self._where[1], {}
        for h in allowed:
            if h in where:
                shard, r = where[h]
                picked.setdefault(shard, []).append(r)
        return {shard: np.sort(np.asarray(rows, np.int64)) for shard, rows in sorted(picked.items())}

    def _lowp(self, shard: int, rows: int) -> tuple | None:
        """(int8 codes (rows, D), scales (rows,), largest residual) of a shard. Rebuilt from float32 when missing,
        stale or cut short; when read into memory (LOWP_RAM_BYTES) also checked against its crc32s, once per state
        of the index (a mapped one is checked by `verify`, as the float32 shards are). None when it cannot be
        written (a read-only index): the query then scans that shard in float32."""
        key = (shard, rows)
        if key in self._lowmaps:
            return self._lowmaps[key]
        self._lowmaps[key] = None
        try:
            for attempt in range(2):
                got = self.db.execute("SELECT rows, crc, crc_aux FROM lowp WHERE shard = ?", (shard,)).fetchone()
                codes_path, aux_path = self._lowp_paths(shard)
                if got is None or got[0] != rows or any(
                        not p.exists() or p.stat().st_size < rows * width
                        for p, width in ((codes_path, self.dim), (aux_path, 8))):
                    got = (rows, *self._rebuild_lowp(shard, rows))
                aux = np.fromfile(aux_path, dtype="<f4", count=rows * 2).reshape(rows, 2)
                if self._lowp_bytes + rows * self.dim > LOWP_RAM_BYTES:  # see LOWP_RAM_BYTES
                    codes = np.memmap(codes_path, dtype=np.int8, mode="r", shape=(rows, self.dim))
                    break
                codes = np.fromfile(codes_path, dtype=np.int8, count=rows * self.dim).reshape(rows, self.dim)
                if (zlib.crc32(codes), zlib.crc32(aux)) == (got[1], got[2]):
                    self._lowp_bytes += codes.nbytes
                    break
                self._rebuild_lowp(shard, rows)  # damaged: the next pass reads the rebuilt copy
            else:
                return None
        except (OSError, sqlite3.Error):
            return None
        self._lowmaps[key] = (codes, np.ascontiguousarray(aux[:, 0]), float(aux[:, 1].max()))
        return self._lowmaps[key]

    def top_k(self, query: np.ndarray, k: int, allowed: set[str] | None = None, prefilter: bool = True,
              stats: dict | None = None) -> list[tuple[str, float]]:
        """Exact top-k (content hash, cosine) of a query against every live row; `allowed` restricts to those
        hashes (filters). Two stages (the bound and its proof: vlmviz.search.lowp): approximate scores of the
        eligible rows in chunks of CHUNK_ROWS (from the int8 copies, or with prefilter=False from the float32
        shards through BLAS), keeping the rows within twice the error bound of the k-th best; then those rows'
        exact scores from the float32 shards. Both ways give the same hits and scores, best first, ties broken by
        position (the older row first). `stats`, when given, receives the number of rows rescored."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if "dim" not in self.get_meta():
            return []
        if query.shape[0] != self.dim:
            raise ValueError(f"query vector is {query.shape[0]}-d; this index holds {self.dim}-d vectors")
        if not np.isfinite(query).all():
            raise ValueError("query vector has NaN or inf entries")
        if k < 1:
            return []
        shard_rows, eligible = self._shard_rows(), self._eligible(allowed)
        quant = QuantQuery(query) if prefilter else None
        sources = {shard: self._lowp(shard, shard_rows[shard]) if prefilter else None for shard in eligible}
        bound = max([float32_bound(query)] + [quant.bound(src[2]) for src in sources.values() if src is not None])
        top, kept = np.zeros(0, np.float32), []  # the k best approximate scores so far; (shard, rows, approx)
        for shard, rows in eligible.items():
            n, src = shard_rows[shard], sources[shard]
            data = self._mapped(shard, n)
            for start in range(0, n, CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, n)
                lo, hi = np.searchsorted(rows, [start, stop])
                if lo == hi:
                    continue
                picked = rows[lo:hi]  # eligible rows of this chunk
                dense = 4 * (hi - lo) >= stop - start  # else gather the few rows a filter left
                if src is not None:
                    s = quant.scores(src[0], src[1], picked, (start, stop) if dense else None)  # (picked,)
                elif dense:
                    s = (np.asarray(data[start:stop]) @ query)[picked - start]  # (picked,)
                else:
                    s = np.asarray(data[picked]) @ query  # (picked,): gather the few rows a filter left
                keep = np.flatnonzero(s >= keep_floor(top, k, bound))  # the floor so far: most rows fail it
                top = np.concatenate([top, s[keep]])
                if len(top) > k:
                    top = np.partition(top, len(top) - k)[len(top) - k:]
                keep = keep[s[keep] >= keep_floor(top, k, bound)]
                kept.append((shard, picked[keep], s[keep]))
        floor = keep_floor(top, k, bound)  # the floor only rises: what an earlier chunk dropped stays dropped
        found_shard, found_row, found_score = [], [], []
        for shard, rows, approx in kept:
            rows = rows[approx >= floor]
            if len(rows):
                found_shard.append(np.full(len(rows), shard))
                found_row.append(rows)
                found_score.append(exact_scores(self._mapped(shard, shard_rows[shard])[rows], query))
        if stats is not None:
            stats["rescored"] = int(sum(len(r) for r in found_row))
        if not found_row:
            return []
        shards, rows, scores = (np.concatenate(a) for a in (found_shard, found_row, found_score))
        order = np.lexsort((rows, shards, -scores))[:k]  # best first; on a tie, the lower (shard, row)
        live = self._live_rows()
        return [(live[int(shards[i])][1][int(np.searchsorted(live[int(shards[i])][0], rows[i]))], float(scores[i]))
                for i in order]

    def paths_of(self, hashes: list[str], where: str = "", params: tuple = ()) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for path, h in self.db.execute(f"SELECT path, hash FROM files {where} ORDER BY path", params):
            out.setdefault(h, []).append(path)
        return {h: out[h] for h in hashes if h in out}

    def close(self) -> None:
        self.db.close()
