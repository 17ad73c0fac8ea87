"""LanceDB behind the index, for libraries past about a million images (optional: `pip install lancedb`).

The shards and SQLite stay the source of truth (crash-safe, exact). A Lance table beside them mirrors the live
vectors with an on-disk IVF-PQ index; `sync` adds what is new and deletes what is gone, so it is incremental too.
Queries through it are approximate: bench/bench_search.py measures its recall@10 against the exact scan.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    import lancedb
    import pyarrow as pa
except ImportError as err:  # the default store needs none of this
    raise ImportError("LanceDB is an optional extra: pip install lancedb (Apache-2.0); the default exact index "
                      f"needs nothing more ({err})") from None

TABLE = "vectors"


class LanceStore:
    """Content hash -> vector in a Lance table, searched by cosine; an IVF-PQ index once there are enough rows."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.db = lancedb.connect(str(self.folder))
        self.table = self.db.open_table(TABLE) if TABLE in self.db.table_names() else None

    def __len__(self) -> int:
        return 0 if self.table is None else self.table.count_rows()

    def hashes(self) -> set[str]:
        if self.table is None:
            return set()
        return set(self.table.to_arrow().column("hash").to_pylist())

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        if not len(hashes):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
        batch = pa.table({"hash": pa.array(hashes, pa.string()), "vector": column})
        if self.table is None:
            self.table = self.db.create_table(TABLE, data=batch)
        else:
            self.table.add(batch)

    def delete(self, hashes: list[str]) -> None:
        if self.table is None or not hashes:
            return
        for start in range(0, len(hashes), 1000):
            quoted = ", ".join("'" + h.replace("'", "''") + "'" for h in hashes[start:start + 1000])
            self.table.delete(f"hash IN ({quoted})")

    def sync(self, store) -> dict:
        """Make the table hold exactly the live vectors of a ShardStore; returns what changed."""
        have, (live, vectors) = self.hashes(), store.vectors()
        want = set(live)
        gone = sorted(have - want)
        new = [i for i, h in enumerate(live) if h not in have]
        self.delete(gone)
        self.add([live[i] for i in new], vectors[new])
        return {"added": len(new), "deleted": len(gone), "rows": len(self)}

    def build_ann(self, num_partitions: int | None = None, num_sub_vectors: int | None = None) -> None:
        """IVF-PQ on cosine: partitions about sqrt(rows), sub-vectors of 16 dims (LanceDB's own defaults)."""
        rows = len(self)
        if rows < 256:
            return  # PQ needs 256 rows to train its codebooks; a small table is scanned exactly anyway
        dim = self.table.schema.field("vector").type.list_size
        self.table.create_index(metric="cosine", vector_column_name="vector", replace=True,
                                num_partitions=num_partitions or max(1, int(rows ** 0.5)),
                                num_sub_vectors=num_sub_vectors or max(1, dim // 16))

    def top_k(self, query: np.ndarray, k: int, nprobes: int = 20, refine_factor: int | None = 10
              ) -> list[tuple[str, float]]:
        """(hash, cosine) best first. refine_factor re-ranks k x refine candidates by their full vectors."""
        if self.table is None:
            return []
        q = self.table.search(np.asarray(query, np.float32)).distance_type("cosine").nprobes(nprobes).limit(k)
        if refine_factor:
            q = q.refine_factor(refine_factor)
        rows = q.to_arrow()
        return [(h, 1.0 - float(d)) for h, d in zip(rows.column("hash").to_pylist(),
                                                   rows.column("_distance").to_pylist())]
