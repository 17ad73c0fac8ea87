"""Alignment metrics between image vectors and text vectors. Pure functions; tensors in, floats/tensors out.

Shapes: img (N, D) and txt (N, D) with row i of each a matched pair, unless a function says otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_matrix(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """Cosine similarities: (N, D) x (T, D) -> (N, T)."""
    return F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T


def ranks(sim: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each row's target column (target i for row i by default); ties count against the target."""
    targets = torch.arange(len(sim), device=sim.device) if targets is None else targets.to(sim.device)
    target_scores = sim.gather(1, targets[:, None])  # (N, 1)
    return (sim >= target_scores).sum(dim=1)  # (N,), includes the target itself


def first_relevant_ranks(sim: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-scoring relevant column of each row: 1 + the irrelevant columns scoring at least as
    high (ties count against). sim (R, C), relevant (R, C) bool with at least one True per row."""
    best = sim.masked_fill(~relevant, float("-inf")).max(dim=1, keepdim=True).values  # (R, 1)
    return 1 + ((sim >= best) & ~relevant).sum(dim=1)  # (R,)


def caption_ids(txt: torch.Tensor) -> torch.Tensor:
    """(N,) id of each row's distinct caption: rows with identical vectors are the same caption (text spaces encode
    each distinct string once, so repeated captions give bit-identical vectors)."""
    return torch.unique(txt, dim=0, return_inverse=True)[1]


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10),
                      ids: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@K and median rank both ways for N image-caption pairs, scored against the distinct captions.

    Captions repeat in class-style data ("a red circle" x 100). Image->text: each image ranks the U distinct captions
    and is right when its own caption is on top. Text->image: each distinct caption ranks the N images and is right
    when an image carrying it is on top. `ids` (N,) names each pair's caption (default: identical vectors are one
    caption). With all captions distinct this is the usual N x N retrieval."""
    ids = caption_ids(txt) if ids is None else torch.as_tensor(ids)
    if len(ids) != len(img) or len(txt) != len(img):
        raise ValueError(f"got {len(img)} images, {len(txt)} captions and {len(ids)} caption ids; expected one each")
    ids = torch.unique(ids, return_inverse=True)[1]  # 0 .. U-1
    u = int(ids.max()) + 1
    first = torch.full((u,), len(ids), dtype=torch.long).scatter_reduce(0, ids, torch.arange(len(ids)), "amin")
    sim = similarity_matrix(img, txt[first])  # (N, U)
    relevant = ids[:, None] == torch.arange(u)[None]  # (N, U): each image's own caption
    out: dict[str, float] = {"N": len(img), "candidates": u}
    for direction, matrix, rel in (("i2t", sim, relevant), ("t2i", sim.T, relevant.T)):
        r = first_relevant_ranks(matrix, rel).float()
        for k in ks:
            out[f"{direction}_R@{k}"] = float((r <= k).float().mean())
        out[f"{direction}_median_rank"] = float(r.median())
    return out


def modality_gap(img: torch.Tensor, txt: torch.Tensor) -> float:
    """||mean(normalize(img)) - mean(normalize(txt))||_2 (Liang et al., NeurIPS 2022; CLIP is about 0.82)."""
    return float((F.normalize(img.float(), dim=-1).mean(0) - F.normalize(txt.float(), dim=-1).mean(0)).norm())


def alignment(img: torch.Tensor, txt: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||x - y||^alpha over matched pairs on the unit sphere (Wang & Isola 2020); lower is better."""
    x, y = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    return float((x - y).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0, chunk: int = 4096) -> float:
    """log E_{i<j} exp(-t ||x_i - x_j||^2) on the unit sphere (Wang & Isola 2020); lower is more uniform.
    Summed over row blocks of `chunk`, so 100k points never hold an N x N matrix: the sum over all ordered pairs
    counts each i < j twice and each i = i once (exp(0) = 1)."""
    x = F.normalize(x.float(), dim=-1)
    n, total = len(x), 0.0
    for start in range(0, n, chunk):
        sq = (2 - 2 * x[start:start + chunk] @ x.T).clamp_min(0)  # (c, N): ||a - b||^2 of unit vectors
        total += float(sq.mul_(-t).exp_().sum(dtype=torch.float64))
    return float(torch.tensor((total - n) / (n * (n - 1)), dtype=torch.float64).log())


def _knn(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(N, k) indices of each row's k nearest rows by cosine, self excluded, in row blocks (no N x N matrix)."""
    x = F.normalize(x.float(), dim=-1)
    out = []
    for start in range(0, len(x), chunk):
        sim = x[start:start + chunk] @ x.T  # (c, N)
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = float("-inf")
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)


def mutual_knn(img: torch.Tensor, txt: torch.Tensor, k: int = 10, chunk: int = 2048) -> float:
    """Mean overlap of the k nearest neighbours of each item in image space and in text space (Huh et al. 2024,
    the platonic representation hypothesis); neighbours by cosine, self excluded. 1 = identical neighbourhoods.
    Memory O(chunk x N + N x k x k), so it runs on 100k pairs."""
    n = len(img)
    if not 1 <= k < n:
        raise ValueError(f"mutual_knn needs 1 <= k < N, got k={k}, N={n}")
    a, b = _knn(img, k, chunk), _knn(txt, k, chunk)  # (N, k) each
    shared = (a[:, :, None] == b[:, None, :]).any(-1).sum(1)  # (N,): neighbours in both lists
    return float(shared.float().div(k).mean())


def cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred features.
    Compares the geometry of two spaces of any widths; 1 = identical up to rotation and scale."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


def alignment_report(img: torch.Tensor, txt: torch.Tensor, k: int = 10,
                     ids: torch.Tensor | None = None) -> dict[str, float]:
    """Everything the UI and the ablation table show for N matched pairs; N, k and the number of distinct captions
    (`candidates`, what recall ranks against) are part of the report. `ids`: as in retrieval_metrics."""
    n = len(img)
    if n < 2:
        raise ValueError(f"metrics need at least 2 image-caption pairs, got {n}")
    if not (torch.isfinite(img).all() and torch.isfinite(txt).all()):
        raise ValueError("embeddings contain NaN or infinity; the projector or its checkpoint is broken")
    k = min(k, n - 1)
    report = {"k": k, **retrieval_metrics(img, txt, ids=ids)}
    report.update(
        modality_gap=modality_gap(img, txt),
        alignment=alignment(img, txt),
        uniformity_img=uniformity(img),
        uniformity_txt=uniformity(txt),
        mutual_knn=mutual_knn(img, txt, k),
        cka=cka(img, txt),
    )
    return report
