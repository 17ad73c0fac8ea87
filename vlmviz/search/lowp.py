"""The int8 copy of the vectors that the exact top-k scans first, and the error bound that keeps the result exact.

Shapes: N rows in a chunk, D vector width.

A scan over 1M x 384 float32 vectors reads 1.5 GB per query and is bound by memory bandwidth (BENCHMARKS.md,
issue 16). Each row x is also kept as int8 codes c with one float32 scale s per row, x~ = s * c (a quarter of the
bytes), and the residual norm r = ||x - x~|| computed exactly when the codes are written. The query q is quantized
the same way (q~ = s_q * c_q, residual r_q). The integer dot c . c_q is computed exactly (see BLOCK below), so the
approximate score a = float32(c . c_q) * s * s_q is q~ . x~ up to three float32 roundings. The bound, for one row:

    q.x - q~.x~ = q~.(x - x~) + (q - q~).x                       (add and subtract q~.x)
    |q.x - q~.x~| <= ||q~|| r + r_q ||x||                         (Cauchy-Schwarz, twice)
    |a - q~.x~|   <= 3 * 2^-24 * |q~.x~| <= 2^-22 ||q~|| (||x|| + r)   (the dot to float32, exact below 2^24,
                                                                  then the float32 products * s and * s_q)
    |e - q.x|     <= (2^-24 + D * 2^-53) ||q|| ||x||              (e: the exact score, see `exact_scores`)

so |e - a| <= B = ||q~|| R + r_q X + 2^-22 ||q~|| (X + R) + (2^-24 + D 2^-53) ||q|| X, with R the largest
residual of the rows scanned and X >= every ||x|| (the store keeps unit vectors: X = MAX_NORM).

Selection (`keep_floor`): let t be the k-th largest approximate score among the eligible rows. Those k rows have
e >= a - B >= t - B, so the k-th best exact score is >= t - B; a row with a < t - 2B has e < a + B < t - B and so
is strictly below it: it is not in the exact top-k whatever the tie-break. Keeping every row with a >= t - 2B and
rescoring those exactly gives the same top-k as rescoring every row. The float32 BLAS scan uses the same rule with
its own bound (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5: a dot product of length
D in float32 in any order is off by at most gamma_D sum|q_i x_i|, gamma_D = D u / (1 - D u), u = 2^-24), because
BLAS gives a row different low bits depending on how many rows it computes at once; the exact score of a row must
not depend on which chunk it was in.
"""
from __future__ import annotations

import numpy as np

MAX_NORM = 1.0 + 1e-3  # the store takes unit vectors (cosine); append refuses rows longer than this
_U32, _U64 = 2.0 ** -24, 2.0 ** -53


def quantize_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 rows (N, D) -> int8 codes (N, D) and float32 (scale, residual norm) per row (N, 2).

    The scale is rounded to float32 first and the residual is measured against that scale in float64 (where
    scale * code is exact), then rounded up, so the stored residual is never below the true one."""
    x = np.asarray(block, dtype=np.float64)  # (N, D)
    scale = (np.abs(x).max(axis=1) / 127.0).astype(np.float32)  # (N,)
    s64 = scale.astype(np.float64)
    codes = np.clip(np.rint(x / np.where(s64 > 0, s64, 1.0)[:, None]), -127, 127).astype(np.int8)  # (N, D)
    resid = np.sqrt(((x - codes * s64[:, None]) ** 2).sum(axis=1)) * (1 + 1e-12)  # (N,)
    resid32 = resid.astype(np.float32)
    resid32 = np.where(resid32.astype(np.float64) < resid, np.nextafter(resid32, np.float32(np.inf)), resid32)
    return codes, np.stack([scale, resid32], axis=1).astype("<f4")  # (N, 2)


def exact_scores(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The exact score of each float32 row (N, D) against the float32 query (D,): products exact in float64,
    summed pairwise along the row (numpy's reduction of a contiguous axis, the same order for a row whatever the
    other rows), rounded once to float32. Unlike BLAS, a row's score never depends on the rows scored with it."""
    rows = np.asarray(rows, dtype=np.float64)  # (N, D)
    return (rows * np.asarray(query, np.float64)).sum(axis=1).astype(np.float32)  # (N,)


def exact_error(query: np.ndarray) -> float:
    """Bound on |exact_scores - q.x| for rows of norm <= MAX_NORM."""
    d = len(query)
    return (_U32 + d * _U64) * float(np.linalg.norm(np.asarray(query, np.float64))) * MAX_NORM


def float32_bound(query: np.ndarray) -> float:
    """Bound on |exact score - a float32 BLAS dot of the same row and query| (any summation order)."""
    d = len(query)
    gamma = d * _U32 / (1 - d * _U32)
    return gamma * float(np.linalg.norm(np.asarray(query, np.float64))) * MAX_NORM + exact_error(query)


class QuantQuery:
    """A query in int8, its approximate scores against int8 rows, and their error bound."""

    def __init__(self, query: np.ndarray):
        self.query = np.asarray(query, np.float32)  # (D,)
        codes, aux = quantize_rows(self.query[None])
        self.codes = codes[0]  # (D,)
        self.scale, self.resid = np.float32(aux[0, 0]), float(aux[0, 1])
        self.norm_q = float(aux[0, 0]) * float(np.linalg.norm(self.codes.astype(np.float64)))  # ||q~||

    def bound(self, max_resid: float) -> float:
        """B of the module docstring for rows whose residual norms are <= max_resid."""
        x, r, qn = MAX_NORM, float(max_resid), self.norm_q
        return qn * r + self.resid * x + 2.0 ** -22 * qn * (x + r) + exact_error(self.query)

    def scores(self, codes: np.ndarray, scale: np.ndarray, rows: np.ndarray, span: tuple[int, int] | None = None
               ) -> np.ndarray:
        """Approximate scores (R,) float32 of the int8 rows `rows` (R,) of a shard's codes (N, D) and scales (N,).
        With span=(start, stop), every row of that range is scored in one sequential pass and `rows` picked after
        (cheaper than jumping when most rows of the range are wanted)."""
        by_range, by_rows = _kernels()
        codes, rows = np.asarray(codes), np.asarray(rows, np.int64)
        qcodes = self.codes.astype(np.float32)
        n = len(rows) if span is None else span[1] - span[0]
        dots = np.zeros(n, np.float64) if codes.shape[1] > BLOCK else None  # exact whole numbers
        for jb in range(0, codes.shape[1], BLOCK):
            part, out = codes[:, jb:jb + BLOCK], np.empty(n, np.float32)
            if span is None:
                by_rows(part, rows, qcodes[jb:jb + BLOCK], out)
            else:
                by_range(part, span[0], span[1], qcodes[jb:jb + BLOCK], out)
            if dots is None:
                dots = out
            else:
                dots += out
        scale = np.asarray(scale)
        if span is None:
            scale = scale[rows]
        elif len(rows) == n:  # every row of the span: no gathers
            scale = scale[span[0]:span[1]]
        else:
            dots, scale = dots[rows - span[0]], scale[rows]
        return dots.astype(np.float32, copy=False) * scale * self.scale  # the roundings of the bound


def _by_rows_numpy(codes, rows, qcodes, out):
    """The kernels without numba: the same exact integer dots, in int32."""
    for start in range(0, len(rows), 4096):
        part = rows[start:start + 4096]
        out[start:start + 4096] = codes[part].astype(np.int32) @ qcodes.astype(np.int32)  # (R,) exact


def _by_range_numpy(codes, start, stop, qcodes, out):
    _by_rows_numpy(codes, np.arange(start, stop), qcodes, out)


# The kernels sum int8 * int8 products in float32 because numba widens integer arithmetic to int64 (4 lanes of
# an AVX2 register instead of 8 or 16), and float32 is exact here: every product and every partial sum of up to
# BLOCK of them is a whole number below 127^2 * 1040 < 2^24, so no summation order (fastmath reassoc lets LLVM
# vectorize it) rounds anything. Wider vectors are summed BLOCK columns at a time, the blocks added in float64
# (whole numbers below 2^53: exact too). A block loop inside the kernel stopped LLVM vectorizing it (5x slower).
BLOCK = 1024


def _by_range(codes, start, stop, qcodes, out):  # rows start..stop-1 of (N, D) int8, (D,) float32 -> out
    d = codes.shape[1]
    m = start + (stop - start) // 4 * 4
    for i in range(start, m, 4):  # four rows per pass share each load of the query
        a0 = np.float32(0)
        a1 = np.float32(0)
        a2 = np.float32(0)
        a3 = np.float32(0)
        for j in range(d):
            w = qcodes[j]
            a0 += np.float32(codes[i, j]) * w
            a1 += np.float32(codes[i + 1, j]) * w
            a2 += np.float32(codes[i + 2, j]) * w
            a3 += np.float32(codes[i + 3, j]) * w
        out[i - start] = a0
        out[i + 1 - start] = a1
        out[i + 2 - start] = a2
        out[i + 3 - start] = a3
    for i in range(m, stop):
        a = np.float32(0)
        for j in range(d):
            a += np.float32(codes[i, j]) * qcodes[j]
        out[i - start] = a


def _by_rows(codes, rows, qcodes, out):  # rows (R,) of (N, D) int8, (D,) float32 -> out (R,)
    for i in range(len(rows)):
        a = np.float32(0)
        for j in range(codes.shape[1]):
            a += np.float32(codes[rows[i], j]) * qcodes[j]
        out[i] = a


_KERNELS: list = []


def _kernels():
    """(by_range, by_rows): exact int8 dots compiled by numba (a dependency of umap-learn, so here already;
    compiled once and cached on disk), or numpy in int32 when it is missing."""
    if not _KERNELS:
        try:
            import numba

            jit = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
            _KERNELS.extend(jit(f) for f in (_by_range, _by_rows))
        except ImportError:
            _KERNELS.extend([_by_range_numpy, _by_rows_numpy])
    return _KERNELS


def keep_floor(top: np.ndarray, k: int, bound: float) -> np.float64:
    """The lowest approximate score worth rescoring, given the k largest approximate scores seen so far
    (see the module docstring): t - 2B, or -inf while fewer than k rows were seen."""
    if len(top) < k:
        return np.float64(-np.inf)
    # a numpy float64, not a Python float: float32 scores compared with a Python float are compared in float32
    # (NEP 50), which could round the floor up past a row it must keep
    return np.float64(top.min()) - 2.0 * bound * (1 + 1e-9)
