"""Projector-only training on synthetic features: it learns, it is deterministic, it cancels, it is frozen-safe."""
import pytest
import torch

from vlmviz.config import TrainConfig
from vlmviz.projectors import build_projector
from vlmviz.train import fit_least_squares, fit_procrustes, lr_at, train_projector


def toy_pairs(n=64, t=4, d_vis=24, d_txt=16, seed=0):
    """Captions are a fixed random linear map of the mean image token, plus noise: learnable by a linear map."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, t, d_vis, generator=g)
    w = torch.randn(d_vis, d_txt, generator=g)
    text = tokens.mean(1) @ w + 0.05 * torch.randn(n, d_txt, generator=g)
    return tokens, text


@pytest.mark.parametrize("loss", ["cosine", "infonce", "sigmoid"])
@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_training_improves_retrieval(loss, pooling):
    tokens, text = toy_pairs()
    torch.manual_seed(0)
    proj = build_projector("linear", 24, 16)
    cfg = TrainConfig(loss=loss, pooling=pooling, steps=150, lr=1e-2, batch_size=32, warmup_steps=5, eval_every=150)
    before = train_projector(build_projector("linear", 24, 16), tokens, text,
                             TrainConfig(loss=loss, steps=1, lr=1e-9, eval_every=1), tokens, text).evals[0]
    result = train_projector(proj, tokens, text, cfg, tokens, text)
    losses = [row["loss"] for row in result.history]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    after = result.evals[-1]
    assert after["i2t_R@1"] > before["i2t_R@1"] + 0.3
    assert after["N"] == 64


def test_deterministic_on_cpu():
    tokens, text = toy_pairs()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        proj = build_projector("mlp2x_gelu", 24, 16, hidden_dim=32)
        train_projector(proj, tokens, text, TrainConfig(loss="infonce", steps=20, batch_size=16, seed=7, device="cpu"))
        runs.append(torch.cat([p.flatten().cpu() for p in proj.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_callback_and_cancel():
    tokens, text = toy_pairs()
    seen = []
    result = train_projector(build_projector("linear", 24, 16), tokens, text,
                             TrainConfig(steps=100, eval_every=2), tokens, text,
                             callback=seen.append, should_stop=lambda: len(seen) >= 5)
    assert result.cancelled and result.steps_done == 5 and len(seen) == 5
    assert [e["step"] for e in seen] == [1, 2, 3, 4, 5]
    assert seen[1]["metrics"]["N"] == 64 and seen[0]["metrics"] is None
    assert result.evals[-1]["step"] == 5  # the cancelled projector is still measured


def test_only_projector_and_temperature_change():
    tokens, text = toy_pairs()
    frozen = torch.nn.Linear(8, 8).requires_grad_(False)  # stands in for a frozen encoder
    frozen_before = frozen.weight.clone()
    tokens_before = tokens.clone()
    proj = build_projector("linear", 24, 16)
    w0 = proj.linear.weight.detach().clone()
    result = train_projector(proj, tokens, text, TrainConfig(loss="infonce", steps=5))
    assert not torch.equal(proj.linear.weight.cpu(), w0)  # trained on whatever device 'auto' picked
    assert result.loss_head.temperature != pytest.approx(0.07, abs=1e-6)  # learned
    assert torch.equal(tokens, tokens_before) and torch.equal(frozen.weight, frozen_before)
    assert frozen.weight.grad is None


def test_bad_inputs_are_explained():
    tokens, text = toy_pairs()
    proj = build_projector("linear", 24, 16)
    with pytest.raises(ValueError, match="64 images but 63 captions"):
        train_projector(proj, tokens, text[:63], TrainConfig(steps=1))
    with pytest.raises(ValueError, match=r"\(N, T, 24\)"):
        train_projector(proj, tokens[..., :20], text, TrainConfig(steps=1))
    bad = text.clone()
    bad[3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_projector(proj, tokens, bad, TrainConfig(steps=1))
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(loss="hinge")


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) < 0.15 and lr_at(50, cfg) < lr_at(20, cfg)


def test_least_squares_and_procrustes_baselines():
    tokens, text = toy_pairs(n=200)
    x = tokens.mean(1)
    w, b = fit_least_squares(x, text, ridge=1e-6)
    assert torch.allclose(x @ w + b, text, atol=0.2)
    r = fit_procrustes(x, text)
    assert r.shape == (24, 16)
    assert torch.allclose(r.T @ r, torch.eye(16), atol=1e-4)  # orthonormal columns


def test_hard_negatives_are_checked_and_change_training():
    from vlmviz.config import TrainConfig
    from vlmviz.projectors import build_projector
    from vlmviz.train import train_projector

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, generator=g), torch.randn(32, 6, generator=g)
    hard, mask = torch.randn(32, 2, 6, generator=g), torch.ones(32, 2, dtype=torch.bool)
    cfg = TrainConfig(loss="infonce", steps=5, batch_size=16, lr=1e-2, eval_every=0)

    def weights(**kw):
        torch.manual_seed(0)
        proj = build_projector("linear", 8, 6)
        train_projector(proj, x, y, cfg, **kw)
        return torch.cat([p.detach().flatten() for p in proj.parameters()])

    plain, pushed = weights(), weights(hard_negatives=hard, hard_mask=mask)
    assert not torch.allclose(plain, pushed)
    assert torch.allclose(plain, weights(hard_negatives=hard, hard_mask=torch.zeros(32, 2, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"hard_negatives must be \(N, K, 6\) with N = 32"):
        weights(hard_negatives=hard[:10])
    with pytest.raises(ValueError, match="hard negatives need loss infonce or sigmoid"):
        train_projector(build_projector("linear", 8, 6), x, y, TrainConfig(loss="cosine", steps=1),
                        hard_negatives=hard)


def test_least_squares_is_scale_free_and_its_ridge_is_chosen_on_held_out_pairs():
    """The old ridge (lambda N I on raw features) depended on feature scale: a few huge dimensions, as DINOv2 has,
    made it shrink every other direction to nothing. Standardised, the fit is the same whatever the scale."""
    from vlmviz.eval.metrics import retrieval_metrics
    from vlmviz.train import choose_ridge

    torch.manual_seed(0)
    classes = torch.randn(6, 16)
    label = torch.arange(300) % 6
    x = torch.randn(6, 32)[label] + 0.3 * torch.randn(300, 32)  # (300, 32)
    x[:, 0] *= 1000.0  # one outlier dimension
    y = classes[label]
    w, b = fit_least_squares(x, y, ridge=1e-3)
    w2, b2 = fit_least_squares(x * 50.0, y, ridge=1e-3)
    assert torch.allclose(x @ w + b, (x * 50.0) @ w2 + b2, atol=1e-3)
    assert retrieval_metrics(x @ w + b, y)["i2t_R@1"] == 1.0
    choice, scores = choose_ridge(x, y)
    assert scores[(choice["standardize"], choice["ridge"])] == max(scores.values())
    assert {s for s, _ in scores} == {True, False}  # both scalings compete
    w3, b3 = fit_least_squares(x, y, ridge=1e-3, standardize=False)
    w4, b4 = fit_least_squares(x * 50.0, y, ridge=1e-3, standardize=False)
    assert torch.allclose(x @ w3 + b3, (x * 50.0) @ w4 + b4, atol=1e-3)  # RMS scaling is scale-free too
    # ridge 0 is plain least squares: the normal equations hold on standardised features
    w0, b0 = fit_least_squares(x, y, ridge=0.0)
    resid = x @ w0 + b0 - y
    assert (x.double() - x.double().mean(0)).T.matmul(resid.double()).abs().max() < 1e-2 * x.abs().max()
    with pytest.raises(ValueError, match="at least 4 pairs"):
        choose_ridge(x[:3], y[:3])
