"""The ablation runner on real bundled models and a handful of scenes: baselines and trained rows side by side,
seeds averaged with their spread, the time budget obeyed, open-set facts (N, candidates, collisions) stated."""
import pytest

from vlmviz.runs.ablate import run_ablation


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


def test_two_object_scenes_keep_the_grid_and_train_on_canonical_statements():
    """Relations need where things are (cls+maxgrid) and one phrasing per fact: with captions='auto' the training
    targets are the canonical statements, with 'drawn' the captions as drawn, some of them converse phrasings."""
    from vlmviz.runs.ablate import prepare
    from vlmviz.eval.openset import target_caption
    from vlmviz.text import load_text_space

    two = run_ablation("vit-s14", "minilm-l6", ["linear"], steps=3, batch_size=16, n_train=40, n_test=10,
                       dataset="scenes-2obj", log=lambda *_: None)
    assert two.set_index("connector").loc["linear", "kind"] == "trained (cls+maxgrid)"
    assert two.set_index("connector").loc["linear", "params"] == 17 * 384 * 384 + 384
    assert "role_swap_acc" in two and two.role_swap_acc.between(0, 1).all()
    text = load_text_space("minilm-l6")
    _, _, auto = prepare("vit-s14", "minilm-l6", n_train=40, n_test=10, dataset="scenes-2obj")
    _, _, drawn = prepare("vit-s14", "minilm-l6", n_train=40, n_test=10, dataset="scenes-2obj", captions="drawn")
    assert (auto.text_train - text.encode([target_caption(s) for s in auto.train])).abs().max() < 1e-5
    assert (drawn.text_train - text.encode([s.caption for s in drawn.train])).abs().max() < 1e-5
    assert any(s.caption.replace("a photo of ", "") != target_caption(s) for s in auto.train)  # converse phrasings
    with pytest.raises(ValueError, match="captions must be one of"):
        prepare("vit-s14", "minilm-l6", n_train=40, n_test=10, dataset="scenes-2obj", captions="mixed")


def test_hard_negatives_are_each_scenes_own_twins_naming_only_seen_pairs():
    """NegCLIP-style hard negatives: a scene's color-swapped and role-swapped twins, kept only where every
    (color, shape) pair they name is seen in training, so held-out pairs never enter training as mere negatives."""
    from vlmviz.runs.ablate import prepare
    from vlmviz.data.scenes import held_out_combos
    from vlmviz.eval.openset import _pairs, hard_negative_captions
    from vlmviz.text import load_text_space

    _, _, data = prepare("vit-s14", "minilm-l6", n_train=40, n_test=10, dataset="scenes-2obj", hard_negatives=True)
    rows, mask = hard_negative_captions(data.train)
    assert data.hard_train.shape == (40, 2, 384) and mask.shape == (40, 2) and mask[:, 0].all()
    held = held_out_combos(0)
    for sample, row, keep in zip(data.train, rows, mask):
        twins = [sample.meta["swapped"], sample.meta["swapped_role"]]
        used = [c for c, k in zip(row, keep) if k]
        assert sample.meta["swapped_role"] in used  # same pairs, another arrangement: always safe
        assert all(not (_pairs(c) & held) for c in used) and set(used) <= set(twins)
        assert (sample.meta["swapped"] in used) == (not _pairs(sample.meta["swapped"]) & held)
    assert 0 < mask[:, 1].sum() < 40  # some color swaps name a held-out pair and are left out
    text = load_text_space("minilm-l6")
    i = int(mask[:, 1].nonzero()[0])
    assert (data.hard_train[i] - text.encode(rows[i])).abs().max() < 1e-5
    assert (data.hard_train[~mask] == 0).all()
    table = run_ablation("vit-s14", "minilm-l6", ["linear"], steps=3, batch_size=16, n_train=40, n_test=10,
                         dataset="scenes-2obj", hard_negatives=True, log=lambda *_: None)
    assert table.set_index("connector").loc["linear", "kind"] == "trained (cls+maxgrid, hard negatives)"


def test_attnpool_reads_the_cells_as_tokens():
    from vlmviz.runs.ablate import token_mode

    assert token_mode("attnpool", True, "scenes-2obj") == "cls+cells" and token_mode("attnpool", False) == "patch"
    table = run_ablation("vit-s14", "minilm-l6", ["attnpool"], steps=3, batch_size=16, n_train=40, n_test=10,
                         dataset="scenes-2obj", log=lambda *_: None).set_index("connector")
    assert table.loc["attnpool", "kind"] == "trained (cls+cells)" and table.loc["attnpool", "out_tokens"] == 1
    key_value, pos, queries, out = 2 * (384 * 64 + 64), 1024 * 64, 2 * 64, 2 * 64 * 384 + 384
    assert table.loc["attnpool", "params"] == key_value + pos + queries + out
