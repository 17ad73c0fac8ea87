"""2-D maps of high-dimensional vectors: PCA (instant), UMAP and t-SNE (on request), each cached by content.

`import umap` spends about 27 s in numba JIT on first use here, so it is imported lazily and can be warmed in a
background thread; PCA is the instant view.

At scale (`map_2d`): a map is fitted once per set of points and kept on disk ($VLMVIZ_CACHE/maps, plain .npy, no
pickled models), so drawing it again costs a file read. Above `max_fit` points UMAP and t-SNE are fitted on a
seeded sample and every other point is placed from its nearest fitted neighbours in the original space (`place`),
which is also how new points (the same images after more training) join a fitted map without refitting it.
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
    if len(xc) > 2000:  # many points: randomized subspace iteration for the top two directions (Halko et al.
        # 2011), matmuls of (N, D) by (D, 10) only; a full SVD or a LAPACK eigh took 5-10 s at 10k here
        q = np.random.default_rng(0).standard_normal((xc.shape[1], 10)).astype(np.float32)  # (D, 10)
        for _ in range(8):
            q, _ = np.linalg.qr(xc.T @ (xc @ q))  # (D, 10) orthonormal, converging on the top subspace
        _, _, vt = np.linalg.svd(xc @ q, full_matrices=False)  # (10, 10)
        top = (q @ vt[:2].T).T  # (2, D)
        top *= np.where(top[np.arange(2), np.abs(top).argmax(1)] < 0, -1, 1)[:, None]  # a fixed sign
        return xc @ top.T
    _, _, vt = np.linalg.svd(xc, full_matrices=False)  # rows of vt: principal directions
    out = xc @ vt[:2].T  # (N, 2)
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


_UMAP_FITTED = threading.Event()  # set once a fit has run: numba has compiled, later fits are quick


def umap_ready() -> bool:
    """Whether UMAP has run in this process (the first fit pays numba's compilation; views.eta says how long)."""
    return _UMAP_FITTED.is_set()


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap  # lazy: numba JIT on first import

    n_neighbors = max(2, min(15, len(x) - 1))
    # UMAP runs 500 epochs up to 10k points and 200 above; 200 from 5k on halves a 10k fit here (15.7 -> 7.8 s,
    # bench/bench_maps.py) where the layout has long converged
    epochs = 200 if len(x) > 5000 else None
    out = umap.UMAP(n_neighbors=n_neighbors, metric="cosine", random_state=seed, n_epochs=epochs,
                    init="random" if len(x) < 8 else "spectral").fit_transform(x)
    _UMAP_FITTED.set()
    return out


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = max(2.0, min(30.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(x)


def _points(points, method: str) -> np.ndarray:
    """The (N, D) float32 points a map can be drawn of, or a ValueError saying what was expected."""
    if method not in METHODS:
        raise ValueError(f"map method must be one of {', '.join(METHODS)}; got {method!r}")
    x = np.ascontiguousarray(np.asarray(points, dtype=np.float32))
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"a 2-D map needs at least 3 points of shape (N, D); got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("cannot map vectors containing NaN or infinity")
    return x


def reduce_2d(points, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2). Cached: the same points and method return the stored map at once."""
    x = _points(points, method)
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


MAX_FIT = {"pca": None, "umap": 20_000, "tsne": 5_000}  # points fitted; the rest placed (t-SNE is O(N log N) but slow)


def place(new: np.ndarray, fitted: np.ndarray, fitted_xy: np.ndarray, k: int = 10, chunk: int = 4096) -> np.ndarray:
    """2-D positions for `new` (M, D) on a map fitted to `fitted` (N, D) -> `fitted_xy` (N, 2): the mean of its k
    nearest fitted points by cosine, weighted by similarity (what UMAP's own transform starts from). A point that
    equals a fitted point lands on it."""
    a = new / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
    b = fitted / np.maximum(np.linalg.norm(fitted, axis=1, keepdims=True), 1e-12)
    k = min(k, len(b))
    out = np.empty((len(a), 2), np.float32)
    for start in range(0, len(a), chunk):
        sim = a[start:start + chunk] @ b.T  # (c, N)
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (c, k)
        s = np.take_along_axis(sim, idx, 1)
        w = np.exp((s - s.max(1, keepdims=True)) * 50.0)  # sharp: the nearest neighbours dominate
        block = (w[:, :, None] * fitted_xy[idx]).sum(1) / w.sum(1, keepdims=True)
        exact = s.max(1) >= 1 - 1e-6  # a point the map was fitted on keeps its fitted place
        block[exact] = fitted_xy[idx[exact, s[exact].argmax(1)]]
        out[start:start + chunk] = block
    return out


def map_2d(points, method: str = "pca", seed: int = 0, max_fit: int | None = -1, cache: bool = True
           ) -> tuple[np.ndarray, str]:
    """(N, D) -> ((N, 2), note): reduce_2d for any N, fitted once and kept on disk. max_fit -1: the method's
    default (MAX_FIT); None: fit every point. The note says what was fitted and what was placed."""
    from ..checkpoints import atomic_write
    from ..paths import cache_dir

    x = _points(points, method)
    max_fit = MAX_FIT[method] if max_fit == -1 else max_fit
    key = hashlib.sha1(x.tobytes() + repr((method, seed, max_fit, x.shape)).encode()).hexdigest()
    path = cache_dir("maps") / f"{key[:24]}.npy"
    sampled = max_fit is not None and len(x) > max_fit
    note = (f"{method.upper()} fitted on a seeded sample of {max_fit:,} of {len(x):,} points; the others placed at "
            "their nearest fitted neighbours" if sampled else f"{method.upper()} of all {len(x):,} points")
    if cache and path.exists():
        xy = np.load(path, allow_pickle=False)
        if xy.shape == (len(x), 2):
            return xy, note
    if sampled:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), max_fit, replace=False))
        fitted_xy = reduce_2d(x[pick], method, seed)
        xy = place(x, x[pick], fitted_xy)
        xy[pick] = fitted_xy  # fitted points keep their fitted places exactly
    else:
        xy = reduce_2d(x, method, seed)
    xy = np.asarray(xy, np.float32)
    if cache:
        atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), xy, allow_pickle=False))
    return xy, note


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
