"""Search quality where the truth is known: text -> image recall@K and mean average precision.

A query is relevant to every image that shows what it names ("a red circle": every red circle), so a query has
many relevant images; recall@K here is the share of queries with at least one relevant image in the top K
(clip-retrieval's and rclip's success@K), and AP averages the precision at each relevant image's rank.
"""
from __future__ import annotations

import numpy as np


def retrieval_scores(vectors: np.ndarray, names: list[str], queries: dict[str, tuple[np.ndarray, set[str]]],
                     ks=(1, 5, 10)) -> dict:
    """vectors (N, D) unit rows named `names`; queries {text: (unit query vector (D,), relevant names)}.
    Returns mean R@k for each k, mAP, and the counts they are over."""
    names = np.asarray(names)
    out: dict[str, list[float]] = {f"R@{k}": [] for k in ks} | {"mAP": []}
    for text, (vec, relevant) in queries.items():
        if not relevant:
            raise ValueError(f"query {text!r} has no relevant image: it cannot be scored")
        order = np.argsort(-(vectors @ vec), kind="stable")  # ties keep index order: no luck from sorting
        hit = np.isin(names[order], list(relevant))
        for k in ks:
            out[f"R@{k}"].append(float(hit[:k].any()))
        ranks = np.flatnonzero(hit) + 1  # 1-based ranks of the relevant images
        out["mAP"].append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    return {k: float(np.mean(v)) for k, v in out.items()} | {"queries": len(queries), "images": len(names)}


def index_scores(index, queries: dict[str, set[str]], ks=(1, 5, 10)) -> dict:
    """retrieval_scores over every vector of a SearchIndex; `queries` {query text: relevant file names}."""
    from pathlib import Path

    hashes, vectors = index.store.vectors()
    name_of = {h: Path(p[0]).name for h, p in index.store.paths_of(hashes).items()}
    return retrieval_scores(vectors, [name_of[h] for h in hashes],
                            {q: (index.query_vector(q), rel) for q, rel in queries.items()}, ks)
