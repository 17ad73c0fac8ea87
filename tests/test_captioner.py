"""Captioning checkpoints and decoding on a tiny random Llama saved as a Hugging Face folder (conftest.tiny_lm_dir):
round trips for prefix and xattn, shape checks that say expected versus found, KV-cached decoding against a slow
reference, reproducible sampling, hooks that come off the shared LM."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmviz.caption.captioner import build_vlm, load_caption_lm, load_captioner, save_captioner
from vlmviz.checkpoints import CheckpointError, read_config, save_checkpoint
from vlmviz.config import CaptionConfig
from vlmviz.projectors import build_projector

CAPS = ["a small red circle on the left", "there is a large blue star at the top"]


def trained_like(vlm, family="resampler"):
    """A connector (ViT-S/14 patch width 384 -> LM width) and open cross-attention gates, as after training."""
    torch.manual_seed(1)
    proj = build_projector(family, 384, vlm.dim, num_queries=4, num_heads=4).eval()
    with torch.no_grad():
        for block in vlm.xattn:
            block.attn_gate.fill_(0.7)
            block.ff_gate.fill_(-0.3)
    return proj


@pytest.mark.parametrize("mode", ["prefix", "xattn"])
def test_round_trip_gives_the_same_captioner(tmp_path, tiny_lm_dir, mode):
    vlm = build_vlm(str(tiny_lm_dir), CaptionConfig(mode, every=1, prompt="Describe the image."))
    proj = trained_like(vlm)
    x = torch.randn(2, 256, 384)
    with torch.no_grad():
        loss = float(vlm.caption_loss(proj(x), CAPS))
        said = vlm.generate(proj(x), max_new_tokens=6)
    path = save_captioner(tmp_path / f"{mode}.safetensors", proj, vlm, str(tiny_lm_dir), encoder="vit-s14",
                          tokens="patch", text=str(tiny_lm_dir))
    vlm.close()
    config = read_config(path)
    assert config["loss"] == "caption" and config["caption"]["mode"] == mode
    assert config["caption"]["lm"] == str(tiny_lm_dir.resolve())
    assert config["caption"]["prompt"] == "Describe the image."
    assert config.get("extra", []) == (["xattn"] if mode == "xattn" else [])
    assert any(k.startswith("@xattn.") for k in load_file(str(path))) == (mode == "xattn")
    again = load_captioner(path)
    try:
        with torch.no_grad():
            assert float(again.vlm.caption_loss(again.projector(x), CAPS)) == pytest.approx(loss, rel=1e-6)
            assert again.vlm.generate(again.projector(x), max_new_tokens=6) == said
        if mode == "xattn":
            assert float(again.vlm.xattn[0].attn_gate.detach()) == pytest.approx(0.7)
    finally:
        again.close()


def test_shapes_and_widths_are_checked_with_expected_versus_found(tmp_path, tiny_lm_dir):
    from conftest import save_tiny_llama

    vlm = build_vlm(str(tiny_lm_dir), CaptionConfig("xattn", every=1))
    path = save_captioner(tmp_path / "x.safetensors", trained_like(vlm), vlm, str(tiny_lm_dir), encoder="vit-s14",
                          tokens="patch")
    vlm.close()
    header = {"vlmviz": json.dumps(read_config(path))}
    state = load_file(str(path))
    key = "@xattn.0.ff.0.weight"
    state[key] = torch.zeros(64, 32)  # the block's first feed-forward layer is (128, 32)
    save_file(state, str(tmp_path / "tampered.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match=r"cross-attention blocks: 0.ff.0.weight: expected \(128, 32\), "
                                              r"found \(64, 32\)"):
        load_captioner(tmp_path / "tampered.safetensors")
    # the same checkpoint pointed at an LM of another width
    wide = tmp_path / "wide-llama"
    save_tiny_llama(wide)
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48}))
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(**{**cfg, "hidden_size": 48})).save_pretrained(str(wide))
    config = read_config(path)
    config["caption"]["lm"] = str(wide)
    save_file(load_file(str(path)), str(tmp_path / "other-lm.safetensors"), metadata={"vlmviz": json.dumps(config)})
    with pytest.raises(CheckpointError, match="outputs D_txt=32 .* has 48"):
        load_captioner(tmp_path / "other-lm.safetensors")
    lm, _ = load_caption_lm(str(wide))
    assert not any(layer._forward_pre_hooks for layer in lm.model.layers)  # a failed load leaves no hooks


def test_a_retrieval_checkpoint_is_refused_with_how_to_make_one(tmp_path):
    path = save_checkpoint(tmp_path / "r.safetensors", build_projector("linear", 768, 576), encoder="vit-s14",
                           tokens="cls+mean", text="smollm2-135m", loss="infonce")
    with pytest.raises(CheckpointError, match="trained with loss 'infonce', not 'caption'.*--loss caption"):
        load_captioner(path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_captioner(tmp_path / "missing.safetensors")


def slow_greedy(vlm, visual, n):
    """Reference decoding: the whole sequence from scratch for every new token, no cache."""
    emb = vlm.lm.get_input_embeddings()
    seq = torch.cat([emb(vlm.ids_before), *([visual] if visual is not None else []), emb(vlm.ids_after)])
    out = []
    for _ in range(n):
        token = int(vlm.lm(inputs_embeds=seq[None]).logits[0, -1].argmax())
        if token == vlm.end:
            break
        out.append(token)
        seq = torch.cat([seq, emb(torch.tensor([token]))])
    return vlm.tokenizer.decode(out, skip_special_tokens=True).strip()


@torch.no_grad()
def test_cached_greedy_decoding_matches_the_slow_reference(tiny_lm_dir):
    vlm = build_vlm(str(tiny_lm_dir))
    visual = torch.randn(3, 4, vlm.dim)
    fast = vlm.generate(visual, max_new_tokens=8)
    assert fast == [slow_greedy(vlm, v, 8) for v in visual]
    assert vlm.generate(None, max_new_tokens=8) == [slow_greedy(vlm, None, 8)]


@torch.no_grad()
def test_sampling_is_reproducible_by_seed_and_validated(tiny_lm_dir):
    vlm = build_vlm(str(tiny_lm_dir))
    visual = torch.randn(4, 4, vlm.dim)
    a = vlm.generate(visual, max_new_tokens=8, sample=True, temperature=1.5, top_p=0.95, seed=3)
    assert a == vlm.generate(visual, max_new_tokens=8, sample=True, temperature=1.5, top_p=0.95, seed=3)
    others = [vlm.generate(visual, max_new_tokens=8, sample=True, temperature=1.5, top_p=0.95, seed=s)
              for s in range(4, 8)]
    assert any(o != a for o in others)
    with pytest.raises(ValueError, match="temperature > 0"):
        vlm.generate(visual, sample=True, temperature=0)


@torch.no_grad()
def test_close_takes_the_cross_attention_off_the_shared_lm(tiny_lm_dir):
    lm, _ = load_caption_lm(str(tiny_lm_dir))
    ids = torch.tensor([[2, 3, 4, 5]])
    plain = lm(input_ids=ids).logits
    vlm = build_vlm(str(tiny_lm_dir), CaptionConfig("xattn", every=1))
    trained_like(vlm)
    vlm._visual = torch.randn(1, 3, 32)
    assert not torch.allclose(lm(input_ids=ids).logits, plain)
    vlm.close()
    assert torch.equal(lm(input_ids=ids).logits, plain)
    vlm._visual = None


def test_swap_negatives_rank_each_caption_over_its_color_swapped_twin(tiny_lm_dir):
    """CaptionHead(swap_weight=w): the usual mean cross-entropy plus w * softplus(NLL(caption) - NLL(twin)) over the
    first half of the batch; the twin exchanges the two colors and keeps the articles right, so it differs from the
    caption in its binding only."""
    import torch.nn.functional as F

    from vlmviz.caption.model import CaptionHead, swap_colors

    assert swap_colors("a photo of a purple diamond right of a blue triangle") == \
        "a photo of a blue diamond right of a purple triangle"
    assert swap_colors("an orange circle above a green square") == "a green circle above an orange square"
    assert swap_colors("a small red circle on the left") is None  # one color: no twin, no ranking term
    caps = ["a red circle left of a blue square", "a blue star above a red circle", "a small red circle on the left",
            "a green square left of a blue circle"]
    vlm = build_vlm(str(tiny_lm_dir))
    torch.manual_seed(0)
    visual = torch.randn(4, 3, vlm.dim)
    index = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        plain = float(CaptionHead(vlm, caps)(visual, index))
        assert abs(plain - float(vlm.caption_loss(visual, caps))) < 1e-6
        ranked = float(CaptionHead(vlm, caps, swap_weight=0.5)(visual, index))
        nll = vlm.caption_loss(visual[:2], caps[:2], per_caption=True)
        twins = vlm.caption_loss(visual[:2], [swap_colors(c) for c in caps[:2]], per_caption=True)
    assert abs(ranked - plain - 0.5 * float(F.softplus(nll - twins).mean())) < 1e-4
    only_one_color = CaptionHead(vlm, caps, swap_weight=0.5)(visual[2:3], index[2:3])
    assert abs(float(only_one_color) - float(vlm.caption_loss(visual[2:3], caps[2:3]))) < 1e-6
    vlm.close()
    from vlmviz.caption.evaluate import train_caption_connector  # and it trains through the real trainer

    x = torch.randn(4, 16, 32)
    projector, trained, result, _ = train_caption_connector("linear", {}, x, caps, lm=str(tiny_lm_dir), steps=2,
                                                            batch_size=4, swap_weight=0.5)
    assert result.steps_done == 2 and all(h["loss"] > 0 for h in result.history)
    trained.close()


def test_word_grounding_pulls_a_token_to_each_caption_word_and_trains(tiny_lm_dir):
    """CaptionHead(word_weight=w) adds model.WordGrounding: per image and recurring caption word, the best cosine
    over the visual tokens to the LM's embedding of that word, scored by binary cross-entropy against whether the
    caption says the word. Words in most captions ("a") or too rare drop out of the vocabulary; tokens that ARE a
    caption's words score lower than tokens that are other words; the loss reaches the tokens and trains."""
    from vlmviz.caption.model import CaptionHead, WordGrounding

    caps = ["a red circle left of a blue square", "a blue star above a red circle",
            "a green square left of a blue circle", "a red star above a green square"] * 3 + ["a pink heart"]
    vlm = build_vlm(str(tiny_lm_dir))
    words = WordGrounding(vlm, caps, min_count=3, max_share=0.9)
    assert "a" not in words.vocab and "pink" not in words.vocab  # in every caption / once only
    assert {"red", "blue", "green", "circle", "square", "star", "left", "above"} <= set(words.vocab)

    def tokens_of(*said):  # one visual token per word, exactly the LM's embedding of " word"
        table = vlm.lm.get_input_embeddings().weight.detach()
        ids = [vlm.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in said]
        return torch.stack([table[i].float().mean(0) for i in ids])[None]  # (1, M, D)

    index = torch.tensor([0])  # "a red circle left of a blue square"
    with torch.no_grad():
        right = float(words(tokens_of("red", "circle", "blue", "square", "left"), index))
        wrong = float(words(tokens_of("green", "star", "green", "star", "above"), index))
        assert words.similarity(tokens_of("red", "circle"))[0, words.vocab.index("red")] > 0.99
    assert right < wrong
    visual = torch.randn(2, 3, vlm.dim, requires_grad=True)
    words(visual, torch.tensor([0, 1])).backward()
    assert visual.grad.abs().sum() > 0
    with torch.no_grad():
        torch.manual_seed(0)
        visual = torch.randn(4, 3, vlm.dim)
        both = CaptionHead(vlm, caps, word_weight=0.5)
        total = float(both(visual, torch.arange(4)))
        aux = float(both.words(visual, torch.arange(4)))
    assert abs(total - float(vlm.caption_loss(visual, caps[:4])) - 0.5 * aux) < 1e-4
    with pytest.raises(ValueError, match="recur"):
        WordGrounding(vlm, ["one caption only"])
    vlm.close()
    from vlmviz.caption.evaluate import train_caption_connector

    projector, trained, result, _ = train_caption_connector("linear", {}, torch.randn(13, 16, 32), caps,
                                                            lm=str(tiny_lm_dir), steps=3, batch_size=4,
                                                            word_weight=1.0)
    assert result.steps_done == 3 and all(h["loss"] > 0 for h in result.history)
    trained.close()


def test_echo_makes_the_first_tokens_the_statement_words_then_trains_without_the_lm(tiny_lm_dir):
    """model.EchoWords: visual token k should be the LM's embedding of the k-th content word of the image's
    statement (its facts in one fixed order). Tokens that ARE those words cost nothing, the same words in another
    order cost more, all-zero tokens cost about 1; CaptionHead(echo=, echo_weight=w) adds exactly w x it; and
    train_caption_connector(echo_steps=S) trains the connector alone first until its slots read the words."""
    from vlmviz.caption.evaluate import train_caption_connector
    from vlmviz.caption.model import CaptionHead, EchoWords, content_words, word_vectors

    statements = ["a red circle left of a blue square", "a blue star above a red circle",
                  "a green square left of a blue circle", "a red star above a green square"]
    assert content_words("a photo of a red circle left of an orange square") == ["red", "circle", "left", "orange",
                                                                                 "square"]
    vlm = build_vlm(str(tiny_lm_dir))
    echo = EchoWords(vlm, statements)
    assert echo.slots == 5
    right = word_vectors(vlm, content_words(statements[0]))[None]  # (1, 5, D)
    index = torch.tensor([0])
    with torch.no_grad():
        assert float(echo(right, index)) < 1e-6
        assert float(echo(right[:, [1, 0, 2, 4, 3]], index)) > 0.05
        assert 0.5 < float(echo(torch.zeros_like(right), index)) < 2.0
        assert echo.read(right) == [content_words(statements[0])]
        # a token past the words costs nothing at the LM's mean embedding and much at 20x a word's scale
        extra = torch.cat([right, echo.neutral[None, None]], dim=1)
        assert float(echo(extra, index)) < 1e-6
        extra[:, -1] = right[:, 0] * 20
        assert float(echo(extra, index)) > 100
        torch.manual_seed(0)
        visual = torch.randn(4, 6, vlm.dim) * 0.1
        head = CaptionHead(vlm, statements, echo=echo, echo_weight=0.5)
        total = float(head(visual, torch.arange(4)))
        assert abs(total - float(vlm.caption_loss(visual, statements)) - 0.5 * float(echo(visual, torch.arange(4)))) \
            < 1e-4
    with pytest.raises(ValueError, match="at least 5 visual tokens"):
        echo(right[:, :3], index)
    vlm.close()
    # tokens that say their words plainly (token k one-hot on the id of word k): the echo phase alone maps them onto
    # the LM's word embeddings, no caption step needed for the slots to read right
    vocab = sorted({w for s in statements for w in content_words(s)})
    x = torch.zeros(len(statements), 5, 16)
    for i, s in enumerate(statements):
        for k, w in enumerate(content_words(s)):
            x[i, k, vocab.index(w)] = 1.0
    projector, trained, _, stats = train_caption_connector("linear", {}, x, statements, lm=str(tiny_lm_dir), steps=1,
                                                           lr=3e-2, echo_steps=300, echo_batch=4)
    with torch.no_grad():
        said = EchoWords(trained, statements).read(projector(x))
    trained.close()
    assert said == [content_words(s) for s in statements]
    assert stats["train_cpu_s"] > 0
