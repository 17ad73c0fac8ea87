"""The ablation runner on real bundled models and a handful of scenes: baselines and trained rows side by side,
seeds averaged with their spread, the time budget obeyed, open-set facts (N, candidates, collisions) stated."""
import pytest

from vlmviz.ablate import run_ablation


@pytest.fixture(scope="module")
def table():
    return run_ablation("vit-s14", "smollm2-135m", ["linear", "pixel_shuffle"], steps=3, batch_size=16, lr=1e-3,
                        n_train=40, n_test=10, seeds=2, log=lambda *_: None)


def test_baselines_and_families_share_one_open_set_table(table):
    assert table.connector.tolist() == ["untrained linear", "least squares", "procrustes", "linear", "pixel_shuffle"]
    assert (table.N_test == 10).all() and (table.candidates > 10).all()  # seen captions and twins compete too
    assert (table.colliding_captions >= 0).all()
    trained = table[table.kind.str.startswith("trained")]
    assert trained.kind.tolist() == ["trained (cls+mean+max)", "trained (patch)"]
    assert (trained.seeds == 2).all() and trained["i2t_R@1_std"].notna().all()
    assert (trained.steps_done == 3).all()
    assert trained.set_index("connector").loc["pixel_shuffle", "out_tokens"] == 64
    for col in ("i2t_R@1", "swap_acc", "acc_color", "acc_shape"):
        assert table[col].between(0, 1).all(), col


def test_the_budget_stops_training():
    cut = run_ablation("vit-s14", "smollm2-135m", ["linear"], steps=50, batch_size=16, n_train=40, n_test=10,
                       budget_s=0.0, log=lambda *_: None)
    assert cut.set_index("connector").loc["linear", "steps_done"] == 0


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown families"):
        run_ablation("vit-s14", "smollm2-135m", ["transformer9000"], n_train=40, n_test=10, log=lambda *_: None)
