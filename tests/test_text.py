"""Frozen text spaces: tiny random models for every "any Hugging Face model" path, the bundled models for the
facts the UI relies on (bag-of-words collisions, order-aware contextual vectors, readable nearest words)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from vlmviz.text import (ClipTextSpace, ContextualLMSpace, SentenceSpace, TokenMeanSpace, list_text_spaces,
                         load_smollm2_lm, load_text_space)
from vlmviz.text.base import check_captions, masked_mean, readable_token, whole_words
from vlmviz.text.hf_causal import tokenize

SENTENCES = ["a red circle left of a blue square", "a blue circle left of a red square", "a photo of a cat",
             "a kitten sitting on a mat", "the dog runs on the beach", "a spreadsheet of taxes", "a cat"]
SWAP = ["a red circle left of a blue square", "a blue circle left of a red square", "a photo of a cat"]


# ---------- tiny random models saved like Hub folders ----------

@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer, 32-wide random Llama with a byte-level BPE tokenizer trained on a few sentences."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random CLIPModel (text width 32, projection 16) with a CLIP BPE tokenizer built from a few sentences."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=120, end_of_word_suffix="</w>", special_tokens=["<|startoftext|>", "<|endoftext|>"]))
    bpe.model.save(str(folder))  # vocab.json + merges.txt, the files CLIPTokenizer reads
    # positional: transformers 4 and 5 name these arguments differently
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_st_dir(tmp_path_factory):
    """A sentence-transformers folder: random 2-layer BERT + mean pooling, WordPiece vocab with ## and [unused0]."""
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers >= 6 moved the module classes
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]"]
    wp.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=150, special_tokens=specials))
    cls_sep = [("[CLS]", wp.token_to_id("[CLS]")), ("[SEP]", wp.token_to_id("[SEP]"))]
    wp.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=cls_sep)
    tokenizer = BertTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    bert_dir, st_dir = tmp_path_factory.mktemp("tiny-bert"), tmp_path_factory.mktemp("tiny-st")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64)).save_pretrained(str(bert_dir))
    tokenizer.save_pretrained(str(bert_dir))
    transformer = Transformer(str(bert_dir))
    width = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = Pooling(width(), "mean")
    SentenceTransformer(modules=[transformer, pooling]).save(str(st_dir))
    return st_dir


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMVIZ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _frozen(module: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


# ---------- pure helpers ----------

def test_check_captions_names_the_empty_one():
    with pytest.raises(ValueError, match=r"^caption 3 is empty; expected non-empty text$"):
        check_captions(["a", "b", "c", "  \n"])
    with pytest.raises(ValueError, match="no captions"):
        check_captions([])
    with pytest.raises(ValueError, match="one str"):
        check_captions("a red circle")


def test_masked_mean_ignores_padding():
    torch.manual_seed(0)
    x, lengths = torch.randn(3, 5, 4), [5, 2, 1]
    mask = torch.zeros(3, 5, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    slow = torch.stack([x[i, :n].sum(0) / n for i, n in enumerate(lengths)])
    torch.testing.assert_close(masked_mean(x, mask), slow)


def test_readable_token():
    assert readable_token(" cat") == "cat"
    assert readable_token("\n") == "\\n"
    assert readable_token(" ") == " "


# ---------- any Hugging Face model: causal LM -> token-mean ----------

def test_causal_lm_folder_is_token_mean(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    space = load_text_space(str(tiny_llama_dir))
    assert isinstance(space, TokenMeanSpace) and space.kind == "token-mean" and space.dim == 32
    assert load_text_space(str(tiny_llama_dir), "cpu") is space  # cached per (name, device)
    assert not space.table.requires_grad
    table = LlamaForCausalLM.from_pretrained(str(tiny_llama_dir)).get_input_embeddings().weight.detach()
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    vecs = space.encode(SENTENCES, batch_size=3)
    assert vecs.dtype == torch.float32 and vecs.shape == (len(SENTENCES), 32)
    for caption, v in zip(SENTENCES, vecs):  # slow reference: one caption at a time, a Python loop over ids
        ids = tok(caption, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(v, sum(table[i] for i in ids) / len(ids))


def test_token_mean_collides_on_attribute_swap(tiny_llama_dir):
    space = load_text_space(str(tiny_llama_dir))
    assert space.collisions(SWAP) == [[0, 1]]
    assert space.collisions(SWAP[1:]) == []


def test_token_mean_nearest_tokens_finds_the_row_itself(tiny_llama_dir):
    space = load_text_space(str(tiny_llama_dir))
    cat_id = space.tokenizer(" cat", add_special_tokens=False)["input_ids"]
    assert len(cat_id) == 1, "the tiny BPE was trained on ' cat' as a word"
    (row,) = space.nearest_tokens(space.table[cat_id], k=3)
    assert row[0][0] == "cat" and row[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len(row) == 3 and row[0][1] >= row[1][1] >= row[2][1]
    with pytest.raises(ValueError, match=r"\(K, 32\).*got \(2, 7\)"):
        space.nearest_tokens(torch.zeros(2, 7))


def test_contextual_space_is_order_aware_and_padding_free(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(tiny_llama_dir)).requires_grad_(False).eval()
    space = ContextualLMSpace("tiny-ctx", model, AutoTokenizer.from_pretrained(str(tiny_llama_dir)), "", "tiny")
    batched = space.encode(SENTENCES, batch_size=4)  # (T, D), mixed lengths: right padding inside each batch
    single = torch.cat([space.encode([c]) for c in SENTENCES])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert space.collisions(SWAP) == []
    ids, mask = tokenize(space.tokenizer, [SWAP[0]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0]  # (L, D), final norm applied
    torch.testing.assert_close(batched[0], hidden.mean(0), atol=1e-5, rtol=1e-4)


# ---------- CLIP text tower ----------

def test_clip_folder_gives_projected_text_embeds(tiny_clip_dir, tmp_cache):
    from transformers import CLIPModel, CLIPTokenizer

    space = load_text_space(str(tiny_clip_dir))
    assert isinstance(space, ClipTextSpace) and space.kind == "clip-text" and space.dim == 16
    assert _frozen(space.model)
    ref_model = CLIPModel.from_pretrained(str(tiny_clip_dir)).eval()
    tok = CLIPTokenizer.from_pretrained(str(tiny_clip_dir))
    vecs = space.encode(SENTENCES, batch_size=4)
    with torch.no_grad():  # reference: the full CLIPModel, one unpadded caption at a time
        ref = torch.cat([ref_model.get_text_features(**tok([c], return_tensors="pt")).pooler_output
                         for c in SENTENCES])
    torch.testing.assert_close(vecs, ref, atol=1e-5, rtol=1e-4)
    words = [w for row in space.nearest_tokens(vecs[:2], k=4) for w, _ in row]
    assert len(words) == 8 and all(w.isalpha() for w in words)
    assert list((tmp_cache / "text" / "vocab").glob("*.safetensors")), "vocabulary vectors are cached on disk"


# ---------- sentence-transformers folder ----------

def test_sentence_transformers_folder(tiny_st_dir, tmp_cache):
    from sentence_transformers import SentenceTransformer

    space = load_text_space(str(tiny_st_dir))
    assert isinstance(space, SentenceSpace) and space.kind == "sentence" and space.dim == 32
    assert _frozen(space.model)
    ref = SentenceTransformer(str(tiny_st_dir)).encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(space.encode(SENTENCES, batch_size=2), ref.cpu(), atol=1e-5, rtol=1e-4)
    words = whole_words(space.model.tokenizer)
    assert "circle" in words and not any(w.startswith(("#", "[")) for w in words)
    (row,) = space.nearest_tokens(space.encode(["circle"]), k=2)
    assert row[0][0] == "circle" and row[0][1] == pytest.approx(1.0, abs=1e-5)


def test_whole_words_reads_each_vocabulary_style():
    class Vocab:
        def __init__(self, tokens):
            self.tokens = tokens

        def get_vocab(self):
            return {t: i for i, t in enumerate(self.tokens)}

    assert whole_words(Vocab(["[PAD]", "[unused3]", "cat", "##s", "Dog", "dog", "42"])) == ["cat", "Dog"]
    assert whole_words(Vocab(["<|endoftext|>", "c", "at</w>", "cat</w>", "red</w>"])) == ["at", "cat", "red"]
    assert whole_words(Vocab(["<s>", "Ġcat", "s", "Ġred", "Ġ!"]), limit=1) == ["cat"]


# ---------- conversion cache ----------

def test_converted_dir_builds_once_and_rebuilds_for_a_new_gguf(tmp_cache, monkeypatch):
    from vlmviz.text import smollm2

    builds = []

    def build(tmp):
        builds.append(tmp)
        (tmp / "weights.txt").write_text(str(len(builds)))

    monkeypatch.setattr(smollm2, "gguf_sha1", lambda: "aaaa")
    folder = smollm2._converted_dir("thing", build)
    assert smollm2._converted_dir("thing", build) == folder and len(builds) == 1
    monkeypatch.setattr(smollm2, "gguf_sha1", lambda: "bbbb")  # a reinstalled, different GGUF
    assert (smollm2._converted_dir("thing", build) / "weights.txt").read_text() == "2"

    def broken(tmp):
        (tmp / "half.bin").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(smollm2, "gguf_sha1", lambda: "cccc")
    with pytest.raises(OSError, match="disk full"):
        smollm2._converted_dir("other", broken)
    assert not (tmp_cache / "text" / "other").exists()
    assert [p.name for p in (tmp_cache / "text").iterdir()] == ["thing"]  # no temp folder left behind


# ---------- unknown names ----------

def test_unknown_name_lists_the_bundled_spaces():
    with pytest.raises(ValueError, match=r"unknown text space 'no-such-text-space': not one of smollm2-135m, "
                                         r"smollm2-135m-ctx, minilm-l6, not a local folder"):
        load_text_space("no-such-text-space")


def test_non_text_model_is_refused(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64).save_pretrained(
        str(tmp_path))
    with pytest.raises(ValueError, match="'vit' model"):
        load_text_space(str(tmp_path))


# ---------- bundled real models (loaded once per process through the cached loaders) ----------

def test_list_text_spaces():
    assert list_text_spaces() == ["smollm2-135m", "smollm2-135m-ctx", "minilm-l6"]


@pytest.mark.slow
def test_smollm2_table_and_caption_mean():
    space = load_text_space("smollm2-135m")
    assert space.table.shape == (49152, 576) and space.dim == 576 and not space.table.requires_grad
    assert space.cache_id.startswith("smollm2-135m@") and "Apache-2.0" in space.description
    captions = ["a cat", "a small green triangle above a yellow star"]
    vecs = space.encode(captions)  # one batch: the short caption is padded
    for caption, v in zip(captions, vecs):
        ids = space.tokenizer.encode(caption, add_special_tokens=False)
        manual = torch.zeros(576)
        for i in ids:
            manual += space.table[i]
        torch.testing.assert_close(v, manual / len(ids), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_smollm2_nearest_token_of_cat_row():
    space = load_text_space("smollm2-135m")
    cat_id = space.tokenizer.encode(" cat", add_special_tokens=False)
    assert len(cat_id) == 1
    (row,) = space.nearest_tokens(space.table[cat_id], k=5)
    assert row[0][0] == "cat" and row[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len({w for w, _ in row}) == 5  # distinct readable words


@pytest.mark.slow
@pytest.mark.parametrize("name, groups", [("smollm2-135m", [[0, 1]]), ("smollm2-135m-ctx", []), ("minilm-l6", [])])
def test_attribute_swap_collisions(name, groups):
    assert load_text_space(name).collisions(SWAP) == groups


@pytest.mark.slow
def test_smollm2_contextual_shares_the_cached_lm():
    space = load_text_space("smollm2-135m-ctx")
    model, tokenizer = load_smollm2_lm()
    assert space.model is model and space.dim == 576 and space.kind == "contextual"
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 49152 and _frozen(model)
    # two independent conversions agree: our gguf dequantization of the table and transformers' GGUF loader
    assert torch.equal(model.get_input_embeddings().weight, load_text_space("smollm2-135m").table)
    v = space.encode(SWAP)
    cos = F.cosine_similarity(v[0], v[1], dim=0)
    assert 0.5 < cos < 1 - 1e-4  # close (same words) but not the same vector
    (row,) = space.nearest_tokens(v[:1], k=5)  # logit-lens reading: the scene's own words rank high here
    assert {"circle", "square"} <= {w for w, _ in row}


@pytest.mark.slow
def test_minilm_ranks_by_meaning():
    space = load_text_space("minilm-l6")
    assert space.dim == 384 and _frozen(space.model)
    v = space.encode(["a photo of a cat", "a kitten sitting", "a spreadsheet of taxes"])
    assert F.cosine_similarity(v[0], v[1], dim=0) > F.cosine_similarity(v[0], v[2], dim=0) + 0.2
    with pytest.raises(ValueError, match="caption 1 is empty"):
        space.encode(["a cat", ""])


@pytest.mark.slow
def test_bundled_spaces_describe_themselves():
    for name in list_text_spaces():
        space = load_text_space(name)
        assert space.name == name and space.kind in {"token-mean", "contextual", "sentence"}
        assert space.description and space.cache_id and space.has_vocab
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
