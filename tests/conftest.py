"""Shared test setup: no network, the user's model and connector caches shared (the built-in connectors are built once
by setup), artifacts kept for people to look at. Tests that need an empty feature cache set VLMVIZ_FEATURES."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url():
    """The real app, served once per test session on a free loopback port (browser and API tests share it)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import app as vlmviz_app
    from vlmviz.views.background import DescribeBuild

    # a small Describe captioner that only the test of its build makes (and removes): the real one, built on a
    # machine where someone ran the app, must not change what the other tests' Describe clicks see
    vlmviz_app.DESCRIBE = DescribeBuild({"steps": 2, "n_train": 8, "n_test": 2})
    port = _free_port()
    vlmviz_app.demo.queue(default_concurrency_limit=2).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        css=vlmviz_app.CSS, theme=vlmviz_app.THEME, show_error=True)
    yield f"http://127.0.0.1:{port}/"
    vlmviz_app.demo.close()


TINY_WORDS = ["<unk>", "<|im_end|>", "Image:", "Describe", "the", "image.", "Caption:", "a", "an", "photo", "of",
              "there", "is", "small", "large", "red", "green", "blue", "yellow", "purple", "orange", "circle",
              "square", "triangle", "star", "diamond", "on", "at", "in", "left", "right", "top", "bottom", "center"]


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (width 32) with a word-level tokenizer over the scene captions' words, saved like any
    Hugging Face causal LM folder, so every code path that takes an LM name can be tested in seconds."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(TINY_WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      initializer_range=0.2)  # a random LM at the default 0.02 barely reacts to any prefix
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
