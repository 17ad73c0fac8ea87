"""Captioning through a frozen causal LM: masking, the zero-gate identity of cross-attention, training, generation.
Unit tests use a tiny random Llama and a word-level tokenizer; the real SmolLM2 runs in test_captioning_real."""
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from vlmviz.caption.model import CaptionHead, VisualLM, attribute_hits
from vlmviz.config import TrainConfig
from vlmviz.projectors import build_projector
from vlmviz.train import train_projector

WORDS = ["<unk>", "<|im_end|>", "Image:", "Describe", "the", "image.", "Caption:", "a", "red", "blue", "green",
         "circle", "square", "triangle", "on", "left", "right"]


@pytest.fixture(scope="module")
def tiny():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      initializer_range=0.2)  # a random LM at the default 0.02 barely reacts to any prefix
    return LlamaForCausalLM(cfg).eval(), tokenizer


def test_loss_falls_on_caption_tokens_only(tiny):
    lm, tokenizer = tiny
    vlm = VisualLM(lm, tokenizer, "prefix")
    visual = torch.randn(2, 3, 32)
    captions = ["a red circle", "a blue square on the left"]
    loss = vlm.caption_loss(visual, captions)
    # reference: one sequence at a time, cross-entropy of caption tokens + end token given everything before
    total, count = 0.0, 0
    for i, cap in enumerate(captions):
        ids = tokenizer(cap, add_special_tokens=False)["input_ids"] + [vlm.end]
        emb = lm.get_input_embeddings()
        seq = torch.cat([emb(vlm.ids_before), visual[i], emb(vlm.ids_after), emb(torch.tensor(ids))])[None]
        logits = lm(inputs_embeds=seq).logits[0]
        start = len(vlm.ids_before) + 3 + len(vlm.ids_after)
        for j, t in enumerate(ids):
            total += -torch.log_softmax(logits[start + j - 1], -1)[t]
            count += 1
    assert float(loss) == pytest.approx(float(total / count), rel=1e-4)


def test_zero_gates_leave_the_text_only_lm_unchanged(tiny):
    lm, tokenizer = tiny
    ids = torch.tensor([[2, 3, 4, 5, 7, 8]])
    before = lm(input_ids=ids).logits
    vlm = VisualLM(LlamaForCausalLM(lm.config).eval(), tokenizer, "xattn", every=1)
    vlm.lm.load_state_dict(lm.state_dict())
    vlm._visual = torch.randn(1, 4, 32)
    assert torch.equal(vlm.lm(input_ids=ids).logits, before)  # tanh(0) = 0: exactly the text-only LM
    with torch.no_grad():
        vlm.xattn[0].attn_gate.fill_(1.0)
    assert not torch.allclose(vlm.lm(input_ids=ids).logits, before)
    vlm._visual = None


@pytest.mark.parametrize("mode,family", [("prefix", "pixel_shuffle"), ("prefix", "resampler"), ("xattn", "linear")])
def test_connector_learns_to_caption_through_frozen_lm(tiny, mode, family):
    lm, tokenizer = tiny
    frozen = {k: v.clone() for k, v in lm.state_dict().items()}
    vlm = VisualLM(lm, tokenizer, mode, every=1)
    captions = ["a red circle on the left", "a blue square on the right", "a green triangle on the left"]
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(3, 16, 8, generator=g)
    labels = torch.arange(30) % 3
    tokens = protos[labels] + 0.1 * torch.randn(30, 16, 8, generator=g)  # (N, 16 tokens, 8)
    options = {"resampler": {"num_queries": 4, "num_heads": 4}}.get(family, {})
    torch.manual_seed(0)
    proj = build_projector(family, 8, 32, **options)
    head = CaptionHead(vlm, captions)
    cfg = TrainConfig(loss="caption", pooling="none", steps=60, lr=1e-2, batch_size=6, warmup_steps=0)
    result = train_projector(proj, tokens, labels, cfg, head=head)
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert all(torch.equal(v, lm.state_dict()[k].cpu()) for k, v in frozen.items())  # the LM never moved
    if mode == "xattn":
        assert float(vlm.xattn[0].attn_gate.abs()) > 0  # the gates learned to open
    with torch.no_grad():
        out = vlm.generate(proj.eval()(tokens[:3].to(result.device)), max_new_tokens=6)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    lm.cpu()  # the module-scoped LM goes back where the other tests expect it


def test_contrastive_decoding_is_vcd_over_the_plausible_tokens(tiny):
    """generate(contrast=...): the first token is argmax (1 + a) log p(t | image) - a log p(t | contrast) among the
    tokens within beta of the image's best, computed here by a full forward; alpha 0 and beta 1 are plain greedy."""
    lm, tokenizer = tiny
    vlm = VisualLM(lm, tokenizer, "prefix")
    g = torch.Generator().manual_seed(1)
    visual, blank = torch.randn(4, 3, 32, generator=g) * 3, torch.randn(1, 3, 32, generator=g) * 3
    emb = lm.get_input_embeddings()

    def first_logits(v):  # (V,) next-token logits after the prompt with visual tokens v (3, 32)
        seq = torch.cat([emb(vlm.ids_before), v, emb(vlm.ids_after)])[None]
        return lm(inputs_embeds=seq).logits[0, -1].float()

    with torch.no_grad():
        greedy = vlm.generate(visual, max_new_tokens=4)
        assert vlm.generate(visual, max_new_tokens=4, contrast=blank, alpha=0.0) == greedy
        assert vlm.generate(visual, max_new_tokens=4, contrast=blank, alpha=3.0, beta=1.0) == greedy
        said = vlm.generate(visual, max_new_tokens=1, contrast=blank, alpha=3.0, beta=0.05)
        q = first_logits(blank[0]).log_softmax(-1)
        expected = []
        for v in visual:
            p = first_logits(v).log_softmax(-1)
            vcd = (4 * p - 3 * q).masked_fill(p < p.max() + torch.log(torch.tensor(0.05)), float("-inf"))
            expected.append(tokenizer.decode([int(vcd.argmax())], skip_special_tokens=True).strip())
    assert said == expected
    assert said != [t.split()[0] if t else "" for t in greedy]  # the contrast changed some first word
    with pytest.raises(ValueError, match="alpha >= 0 and 0 < beta <= 1"):
        vlm.generate(visual, contrast=blank, beta=0.0)
    with pytest.raises(ValueError, match="needs visual tokens and the prefix mode"):
        vlm.generate(None, contrast=blank)


def test_caption_objective_needs_token_level_pooling():
    with pytest.raises(ValueError, match="pooling 'none'"):
        TrainConfig(loss="caption", pooling="mean")


def test_attribute_hits():
    meta = {"color": "red", "shape": "circle", "position": "left"}
    assert attribute_hits("a red circle on the left", meta) == {"color": True, "shape": True, "position": True}
    assert attribute_hits("a red and blue circles", meta)["color"] is False  # a rival color is also named
    assert attribute_hits("a square", meta)["shape"] is False
