"""The three lenses on a tiny random Llama, each against a slow, obviously correct reference; ground-truth scoring on
hand-made cases whose answer is known, the shuffled-label control included."""
import numpy as np
import pytest
import torch

from vlmviz.eval.lens_score import derangement, names, object_mask, on_object, score_readings
from vlmviz.lenses import ContextualLens, EmbeddingLens, LogitLens, build_lens, corpus_states

SENTENCES = ["a small red circle on the left", "a large blue square at the top", "there is a green star",
             "a photo of a yellow triangle in the center"]


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(str(tiny_lm_dir))


@pytest.fixture(scope="module")
def lm_bos(lm, tiny_lm_dir):
    """The same LM with a BOS token, so the lenses' BOS prefix path runs too."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    tok.bos_token = "Image:"
    return lm[0], tok


def _words(tok, size):
    from vlmviz.text.base import vocab_strings

    return vocab_strings(tok, size)


def _prefixed(model, tok, vectors):
    x = vectors.unsqueeze(0)  # (1, M, D)
    if tok.bos_token_id is not None:
        x = torch.cat([model.get_input_embeddings().weight[tok.bos_token_id].view(1, 1, -1), x], 1)
    return x, int(tok.bos_token_id is not None)


@pytest.mark.parametrize("with_bos", [False, True])
def test_logit_lens_equals_running_the_lm_on_inputs_embeds(lm, lm_bos, with_bos):
    model, tok = lm_bos if with_bos else lm
    vectors = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    x, start = _prefixed(model, tok, vectors)
    with torch.no_grad():
        out = model(inputs_embeds=x, output_hidden_states=True)
    n = model.config.num_hidden_layers
    words = _words(tok, model.config.vocab_size)
    for layer in range(n + 1):
        if layer == n:  # the full forward: its own logits (Hugging Face's last hidden state is already normed)
            ref = out.logits[0, start:]
        else:
            with torch.no_grad():
                ref = model.lm_head(model.model.norm(out.hidden_states[layer][0, start:]))  # (M, V)
        lens = LogitLens(model, tok, layer)
        torch.testing.assert_close(lens.logits(vectors), ref, rtol=1e-4, atol=1e-4)
        expected = [[words[j] for j in row] for row in ref.argsort(-1, descending=True)[:, :3].tolist()]
        assert lens.read(vectors, 3) == expected
    with pytest.raises(ValueError, match="layer must be in 0..2"):
        LogitLens(model, tok, n + 1)


def test_embedding_lens_is_the_nearest_rows_by_cosine(tiny_lm_dir):
    from vlmviz.text import load_text_space

    space = load_text_space(str(tiny_lm_dir))
    vectors = torch.randn(4, space.dim, generator=torch.Generator().manual_seed(1))
    words, table = space._vocab()
    sims = torch.stack([torch.stack([torch.nn.functional.cosine_similarity(v, row, dim=0) for row in table])
                        for v in vectors])  # (K, V), one pair at a time
    expected = [[words[j] for j in row] for row in sims.argsort(-1, descending=True)[:, :4].tolist()]
    assert EmbeddingLens(space).read(vectors, 4) == expected
    assert build_lens("embedding", text_space=space).read(vectors, 4) == expected
    with pytest.raises(ValueError, match="unknown lens 'nope'; expected one of embedding, logit, contextual"):
        build_lens("nope")


@pytest.mark.parametrize("with_bos", [False, True])
def test_contextual_lens_is_the_nearest_corpus_token_in_context(lm, lm_bos, with_bos, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMVIZ_CACHE", str(tmp_path))
    model, tok = lm_bos if with_bos else lm
    layer = 1
    # reference: each sentence alone (no padding), its states at `layer`, BOS position dropped
    states, strings, owner = [], [], []
    for i, sentence in enumerate(SENTENCES):
        ids = tok(sentence, add_special_tokens=False)["input_ids"]
        ids = ([tok.bos_token_id] if with_bos else []) + ids
        with torch.no_grad():
            h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer][0]  # (L, D)
        start = int(with_bos)
        states.append(h[start:])
        strings += [tok.decode([t]).strip() for t in ids[start:]]
        owner += [i] * (len(ids) - start)
    table = torch.cat(states)  # (C, D)
    lens = ContextualLens(model, tok, layer, SENTENCES, cache_id="tiny")
    assert lens.size == len(strings) and lens.strings == strings
    torch.testing.assert_close(lens.table, table, rtol=1e-4, atol=1e-5)

    vectors = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    x, start = _prefixed(model, tok, vectors)
    with torch.no_grad():
        query = model(inputs_embeds=x, output_hidden_states=True).hidden_states[layer][0, start:]  # (M, D)
    sims = torch.stack([torch.stack([torch.nn.functional.cosine_similarity(q, c, dim=0) for c in table])
                        for q in query])  # (M, C)
    best = sims.argmax(-1).tolist()
    assert [row[0] for row in lens.read(vectors, 3)] == [strings[j] for j in best]
    assert [row[0] for row in lens.neighbours(vectors, 2)] == [(strings[j], SENTENCES[owner[j]]) for j in best]

    # query layer 0: the projected tokens themselves against the layer-1 corpus
    sims0 = torch.stack([torch.stack([torch.nn.functional.cosine_similarity(v, c, dim=0) for c in table])
                         for v in vectors])
    lens0 = ContextualLens(model, tok, layer, SENTENCES, cache_id="tiny", query_layer=0)
    assert [row[0] for row in lens0.read(vectors, 2)] == [strings[j] for j in sims0.argmax(-1).tolist()]

    # second build: read from the cache, no encoding, the same table; two layers in one pass
    assert lens.build_seconds > 0 and lens0.build_seconds == 0
    both = corpus_states(model, tok, SENTENCES, [1, 2], cache_id="tiny")
    torch.testing.assert_close(both[1], table, rtol=1e-4, atol=1e-5)
    assert both[2].shape == table.shape


def test_object_mask_finds_the_drawn_shape_on_the_token_grid():
    from vlmviz.data import scene_split
    from vlmviz.data.scenes import draw_scene

    # a square from 11 to 101 px of 224: the 14 px cells 1..6 in both directions lie wholly inside it
    img = draw_scene([{"color": "yellow", "shape": "square", "cx": 0.25, "cy": 0.25, "r": 0.2}], 224)
    on = on_object(object_mask(img), 16, 16).reshape(16, 16)
    assert on[1:7, 1:7].all() and not on[8:].any() and not on[:, 8:].any()
    _, test = scene_split(2, 10, seed=0)
    for s in test:
        cells = np.flatnonzero(on_object(object_mask(s.load()), 16, 16))
        assert len(cells) > 0
        row, col = (cells // 16).mean(), (cells % 16).mean()
        side = {"left": col < 7, "right": col > 8, "top": row < 7, "bottom": row > 8,
                "center": 6 < row < 9 and 6 < col < 9}
        assert side[s.meta["position"]], (s.meta, row, col)


def test_scoring_counts_on_object_tokens_and_the_shuffled_control_removes_a_constant_lens():
    metas = [{"color": "red", "shape": "circle", "size": "small", "position": "left"},
             {"color": "blue", "shape": "square", "size": "large", "position": "right"}]
    on = [np.array([True, True, False, False]), np.array([False, True, True, False])]
    # a lens that reads each scene right on the object (and says "blue" off it, which must not count)
    right = [[["red", "Circles"], ["small", "left"], ["blue"], ["blue"]],
             [["red"], ["purple", "square"], ["Large", "right."], ["square"]]]
    score = score_readings(right, on, metas)
    assert score["tokens"] == 4
    assert score["color"] == {"true": 0.25, "control": 0.0}  # only "red" on token 0 of scene 0
    assert score["shape"] == {"true": 0.5, "control": 0.0}  # 'Circles' counts as circle
    assert score["size"] == {"true": 0.5, "control": 0.0}
    assert score["position"] == {"true": 0.5, "control": 0.0}  # 'right.' counts as right
    # a lens that says "red" everywhere: right half the time, and exactly as often against the other scene
    always_red = [[["red"]] * 4, [["red"]] * 4]
    score = score_readings(always_red, on, metas)
    assert score["color"]["true"] == score["color"]["control"] == 0.5
    assert names(["the", "Red"], "red") and not names(["reddish"], "red")
    perm = derangement(7, seed=3)
    assert sorted(perm) == list(range(7)) and all(perm != np.arange(7))
    with pytest.raises(ValueError, match="one each per scene"):
        score_readings(right, on[:1], metas)


def test_pipeline_reads_its_token_grid_through_each_lens(tiny_lm_dir, lm, tmp_path, monkeypatch):
    from PIL import Image

    from vlmviz.views.pipeline import Pipeline
    from vlmviz.lenses import lens_for
    from vlmviz.projectors import build_projector
    from vlmviz.text import load_text_space

    monkeypatch.setenv("VLMVIZ_CACHE", str(tmp_path))

    class FourByFour:  # an encoder stand-in: 16 patch tokens of width 8, no CLS
        cache_id, has_cls, hidden_size, num_tokens = "four-by-four-lens-test", False, 8, 16

        def encode(self, images):
            return torch.randn(len(images), 16, 8, generator=torch.Generator().manual_seed(3))

    space = load_text_space(str(tiny_lm_dir))
    torch.manual_seed(0)
    pipe = Pipeline(FourByFour(), space, build_projector("linear", 8, space.dim).eval(), tokens="patch")
    image = Image.new("RGB", (32, 32), (200, 10, 10))
    projected = pipe.project(pipe.image_tokens(image))[0]  # (16, D)
    model, tok = lm
    rows, note = pipe.nearest_words(image, k=2)
    assert note == "4x4 grid of projected tokens" and len(rows) == 4
    assert rows[0][0] == " / ".join(EmbeddingLens(space).read(projected, 2)[0])
    rows, note = pipe.nearest_words(image, k=2, lens="logit", layer=1)
    assert note == "4x4 grid of projected tokens; logit lens at layer 1"
    assert [c for r in rows for c in r] == [" / ".join(w) for w in LogitLens(model, tok, 1).read(projected, 2)]
    rows, note = pipe.nearest_words(image, k=2, lens="contextual", layer=2)
    assert note.endswith("contextual lens at layer 2") and all(" / " in c for r in rows for c in r)
    lens = lens_for(space, "contextual", 2)
    assert lens.size > 1000 and lens is lens_for(space, "contextual", 2)  # the default corpus, built once
    with pytest.raises(ValueError, match="has none: use the embedding lens"):
        lens_for(type("S", (), {"name": "minilm", "kind": "sentence", "cache_id": "minilm@x"})(), "logit", 1)


def test_lenses_read_the_same_from_concurrent_threads(lm):
    """The app serves events concurrently: hooked forwards on the one shared LM must not fire each other's hooks."""
    from concurrent.futures import ThreadPoolExecutor

    model, tok = lm
    vectors = torch.randn(6, model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    lenses = [LogitLens(model, tok, layer) for layer in (1, 2, 1, 2, 1, 2, 1, 2)]
    serial = [lens.read(vectors, 3) for lens in lenses]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda lens: lens.read(vectors, 3), lenses)) == serial
