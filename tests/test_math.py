"""Losses and metrics against slow, obviously correct loop references on seeded random data."""
import math

import numpy as np
import pytest
import torch

from vlmviz import losses
from vlmviz.eval import metrics


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(20, 8, generator=g, dtype=torch.float64)
    txt = img + 0.8 * torch.randn(20, 8, generator=g, dtype=torch.float64)
    return img, txt


def test_cosine_loss_bounds_and_reference(pair):
    img, txt = pair
    assert float(losses.cosine_alignment_loss(img, img)) == pytest.approx(0.0, abs=1e-12)
    assert float(losses.cosine_alignment_loss(img, -img)) == pytest.approx(2.0)
    a, b = img.numpy(), txt.numpy()
    ref = np.mean([1 - a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i]) for i in range(len(a))])
    assert float(losses.cosine_alignment_loss(img, txt)) == pytest.approx(ref)


def test_infonce_reference(pair):
    img, txt = pair
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    a, b = unit(img.numpy()), unit(txt.numpy())
    n, t = len(a), 1 / 0.07
    i2t = -np.mean([t * a[i] @ b[i] - np.log(sum(np.exp(t * a[i] @ b[j]) for j in range(n))) for i in range(n)])
    t2i = -np.mean([t * a[i] @ b[i] - np.log(sum(np.exp(t * a[j] @ b[i]) for j in range(n))) for i in range(n)])
    assert float(losses.info_nce_loss(img, txt, scale)) == pytest.approx((i2t + t2i) / 2, rel=1e-9)


def test_sigmoid_reference(pair):
    img, txt = pair
    t, bias = 10.0, -10.0
    a, b = unit(img.numpy()), unit(txt.numpy())
    n = len(a)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += math.log(1 + math.exp(-z * (t * a[i] @ b[j] + bias)))
    got = losses.sigmoid_loss(img, txt, torch.tensor(math.log(t), dtype=torch.float64),
                              torch.tensor(bias, dtype=torch.float64))
    assert float(got) == pytest.approx(total / n, rel=1e-9)


def test_loss_head_learns_temperature():
    head = losses.LossHead("infonce")
    assert head.temperature == pytest.approx(0.07)
    assert {n for n, _ in losses.LossHead("sigmoid").named_parameters()} == {"logit_scale", "logit_bias"}
    with pytest.raises(ValueError, match="valid: cosine, infonce, sigmoid"):
        losses.LossHead("hinge")


def test_retrieval_reference(pair):
    img, txt = pair
    sim = unit(img.numpy()) @ unit(txt.numpy()).T
    n = len(sim)
    rank_i2t = [1 + sum(sim[i, j] > sim[i, i] for j in range(n) if j != i) for i in range(n)]
    rank_t2i = [1 + sum(sim[j, i] > sim[i, i] for j in range(n) if j != i) for i in range(n)]
    got = metrics.retrieval_metrics(img, txt)
    for k in (1, 5, 10):
        assert got[f"i2t_R@{k}"] == pytest.approx(np.mean([r <= k for r in rank_i2t]))
        assert got[f"t2i_R@{k}"] == pytest.approx(np.mean([r <= k for r in rank_t2i]))
    assert got["i2t_median_rank"] == float(torch.tensor(rank_i2t, dtype=torch.float).median())
    perfect = metrics.retrieval_metrics(img, img)
    assert perfect["i2t_R@1"] == 1.0 and perfect["t2i_median_rank"] == 1.0


def test_gap_alignment_uniformity_reference(pair):
    img, txt = pair
    a, b = unit(img.numpy()), unit(txt.numpy())
    assert metrics.modality_gap(img, txt) == pytest.approx(np.linalg.norm(a.mean(0) - b.mean(0)))
    assert metrics.modality_gap(img, img) == pytest.approx(0.0, abs=1e-9)
    assert metrics.alignment(img, txt) == pytest.approx(np.mean([np.sum((a[i] - b[i]) ** 2) for i in range(len(a))]))
    n = len(a)
    pairs = [np.exp(-2 * np.sum((a[i] - a[j]) ** 2)) for i in range(n) for j in range(i + 1, n)]
    assert metrics.uniformity(img) == pytest.approx(np.log(np.mean(pairs)))
    assert metrics.uniformity(img, chunk=3) == pytest.approx(np.log(np.mean(pairs)))  # row blocks add up the same


def test_mutual_knn_reference(pair):
    img, txt = pair
    k = 4
    a, b = unit(img.numpy()), unit(txt.numpy())
    n = len(a)

    def knn(x, i):
        d = [(x[i] @ x[j], j) for j in range(n) if j != i]
        return {j for _, j in sorted(d, reverse=True)[:k]}

    ref = np.mean([len(knn(a, i) & knn(b, i)) / k for i in range(n)])
    assert metrics.mutual_knn(img, txt, k) == pytest.approx(ref)
    assert metrics.mutual_knn(img, txt, k, chunk=3) == pytest.approx(ref)  # row blocks: the same neighbours
    assert metrics.mutual_knn(img, img, k) == 1.0
    with pytest.raises(ValueError, match="1 <= k < N"):
        metrics.mutual_knn(img, txt, 20)


def test_cka_reference_and_invariances(pair):
    img, txt = pair
    x, y = img.numpy(), txt.numpy()
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h  # HSIC form with linear kernels
    ref = np.trace(kx @ ky) / np.sqrt(np.trace(kx @ kx) * np.trace(ky @ ky))
    assert metrics.cka(img, txt) == pytest.approx(ref)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    assert metrics.cka(img, 3.0 * img @ q + 1.0) == pytest.approx(1.0)


def test_alignment_report_states_n_and_k_and_rejects_nan(pair):
    img, txt = pair
    rep = metrics.alignment_report(img, txt, k=10)
    assert rep["N"] == 20 and rep["k"] == 10 and 0 <= rep["i2t_R@1"] <= 1
    bad = img.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        metrics.alignment_report(bad, txt)


def test_false_negative_masking_matches_a_loop_reference():
    from vlmviz.losses import LossHead

    torch.manual_seed(0)
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    groups = torch.tensor([0, 1, 0, 2, 1, 3])
    head = LossHead("infonce")
    scale = float(head.logit_scale.exp())
    sim = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    total = 0.0
    for i in range(6):  # each row and each column: the positive against only the other groups' pairs
        keep = [j for j in range(6) if j == i or groups[j] != groups[i]]
        for row in (sim[i, keep], sim[keep, i]):
            total += -torch.log_softmax(scale * row, 0)[keep.index(i)] / 12
    assert torch.allclose(head(img, txt, groups), torch.tensor(float(total)), atol=1e-5)
    assert torch.allclose(head(img, txt, torch.arange(6)), head(img, txt), atol=1e-6)  # no shared group: plain
    sig = LossHead("sigmoid")
    assert sig(img, txt, groups) < sig(img, txt)  # masked pairs no longer add their negative term


def test_hard_negatives_match_a_loop_reference(pair):
    """Each image's own K hard negatives join its image->text denominator (InfoNCE) or add K -1 pairs (sigmoid);
    masked ones count for nothing, so an all-False mask gives the plain loss."""
    img, txt = pair
    g = torch.Generator().manual_seed(1)
    hard = torch.randn(20, 3, 8, generator=g, dtype=torch.float64)
    mask = torch.rand(20, 3, generator=g) > 0.3
    t = 1 / 0.07
    a, b, h = unit(img.numpy()), unit(txt.numpy()), hard.numpy() / np.linalg.norm(hard.numpy(), axis=2, keepdims=True)
    n = len(a)
    i2t = -np.mean([t * a[i] @ b[i] - np.log(sum(np.exp(t * a[i] @ b[j]) for j in range(n))
                                             + sum(np.exp(t * a[i] @ h[i, k]) for k in range(3) if mask[i, k]))
                    for i in range(n)])
    t2i = -np.mean([t * a[i] @ b[i] - np.log(sum(np.exp(t * a[j] @ b[i]) for j in range(n))) for i in range(n)])
    scale = torch.tensor(math.log(t), dtype=torch.float64)
    assert float(losses.info_nce_loss(img, txt, scale, hard=hard, hard_mask=mask)) == pytest.approx(
        (i2t + t2i) / 2, rel=1e-9)
    none = torch.zeros(20, 3, dtype=torch.bool)
    assert float(losses.info_nce_loss(img, txt, scale, hard=hard, hard_mask=none)) == pytest.approx(
        float(losses.info_nce_loss(img, txt, scale)), rel=1e-12)
    st, bias = 10.0, -10.0
    extra = sum(math.log(1 + math.exp(st * a[i] @ h[i, k] + bias)) for i in range(n) for k in range(3) if mask[i, k])
    plain = losses.sigmoid_loss(img, txt, torch.tensor(math.log(st), dtype=torch.float64),
                                torch.tensor(bias, dtype=torch.float64))
    got = losses.sigmoid_loss(img, txt, torch.tensor(math.log(st), dtype=torch.float64),
                              torch.tensor(bias, dtype=torch.float64), hard=hard, hard_mask=mask)
    assert float(got) == pytest.approx(float(plain) + extra / n, rel=1e-9)
    token_level = img[:, None].expand(20, 4, 8)  # (B, M, D): identical tokens score like the pooled vector
    assert float(losses.info_nce_loss(token_level, txt, scale, hard=hard, hard_mask=mask)) == pytest.approx(
        (i2t + t2i) / 2, rel=1e-9)
    with pytest.raises(ValueError, match="hard negatives need a contrastive loss"):
        losses.LossHead("cosine")(img, txt, None, hard, mask)


def test_recall_with_repeated_captions_scores_distinct_captions():
    """Class-style data: 3 captions, each on 10 images. A connector that puts every image on its caption is perfect
    both ways (was i2t R@1 0 and t2i R@1 = 3 / 30, as ties and duplicates counted against the target)."""
    torch.manual_seed(0)
    classes = torch.randn(3, 16)
    label = torch.arange(30) % 3
    txt = classes[label]  # (30, 16) repeated rows
    perfect = metrics.retrieval_metrics(txt + 0.01 * torch.randn(30, 16), txt)
    assert perfect["candidates"] == 3 and perfect["N"] == 30
    assert perfect["i2t_R@1"] == 1.0 and perfect["t2i_R@1"] == 1.0 and perfect["i2t_median_rank"] == 1.0
    # the images of one class land on another: those 10 are wrong i2t; no image on top of that caption carries it
    img = txt.clone()
    img[label == 2] = classes[0] + 0.1 * classes[1]
    got = metrics.retrieval_metrics(img + 0.01 * torch.randn(30, 16), txt)
    assert got["i2t_R@1"] == pytest.approx(20 / 30)
    # against a loop reference on random data with repeats
    img = torch.randn(30, 16)
    sim = unit(img.numpy()) @ unit(classes.numpy()).T  # (30, 3)
    i2t = [1 + sum(sim[i, c] >= sim[i, label[i]] for c in range(3) if c != label[i]) for i in range(30)]
    t2i = []
    for c in range(3):
        best = max(sim[i, c] for i in range(30) if label[i] == c)
        t2i.append(1 + sum(sim[i, c] >= best for i in range(30) if label[i] != c))
    got = metrics.retrieval_metrics(img, txt)
    assert got["i2t_R@1"] == pytest.approx(np.mean([r <= 1 for r in i2t]))
    assert got["t2i_R@1"] == pytest.approx(np.mean([r <= 1 for r in t2i]))
    assert got["t2i_median_rank"] == float(torch.tensor(t2i, dtype=torch.float).median())
    assert metrics.alignment_report(img, txt)["candidates"] == 3
