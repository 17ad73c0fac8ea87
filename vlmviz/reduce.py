"""2-D maps of high-dimensional vectors: PCA (instant), UMAP and t-SNE (on request), each cached by content.

`import umap` spends about 27 s in numba JIT on first use here, so it is imported lazily and can be warmed in a
background thread; PCA is the instant view.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

METHODS = ("pca", "umap", "tsne")
_CACHE: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_LOCK = threading.Lock()


def _pca(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)  # rows of vt: principal directions
    out = xc @ vt[:2].T  # (N, 2)
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap  # lazy: numba JIT on first import

    n_neighbors = max(2, min(15, len(x) - 1))
    return umap.UMAP(n_neighbors=n_neighbors, metric="cosine", random_state=seed, init="random" if len(x) < 8
                     else "spectral").fit_transform(x)


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = max(2.0, min(30.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(x)


def reduce_2d(points, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2). Cached: the same points and method return the stored map at once."""
    if method not in METHODS:
        raise ValueError(f"map method must be one of {', '.join(METHODS)}; got {method!r}")
    x = np.ascontiguousarray(np.asarray(points, dtype=np.float32))
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"a 2-D map needs at least 3 points of shape (N, D); got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("cannot map vectors containing NaN or infinity")
    key = (method, seed, x.shape, hashlib.sha1(x.tobytes()).hexdigest())
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    out = {"pca": lambda: _pca(x), "umap": lambda: _umap(x, seed), "tsne": lambda: _tsne(x, seed)}[method]()
    out = np.asarray(out, dtype=np.float32)
    with _LOCK:
        _CACHE[key] = out
        while len(_CACHE) > 64:
            _CACHE.popitem(last=False)
    return out


def warm_umap_in_background() -> threading.Thread:
    """Pay numba's JIT cost (import + a first tiny fit) off the request path."""

    def work():
        try:
            reduce_2d(np.random.default_rng(0).normal(size=(20, 8)), "umap")
        except Exception as err:  # noqa: BLE001 - warm-up is best effort; a real request reports its own error
            print(f"[vlmviz] UMAP warm-up failed: {err}")

    thread = threading.Thread(target=work, name="vlmviz-umap-warmup", daemon=True)
    thread.start()
    return thread
