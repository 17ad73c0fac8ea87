"""Three lenses that read projected visual tokens as words: embedding, logit and contextual.

    lens = LogitLens(model, tokenizer, layer=8)
    lens.read(projected, k=5)     # projected (M, D_txt), one image's tokens -> M rows of k strings, best first

- EmbeddingLens: the k vocabulary entries nearest (cosine) to each token in the LM's input-embedding table, what
  `Pipeline.nearest_words` shows (TextSpace.nearest_tokens).
- LogitLens: the image's tokens fed as one sequence of input embeddings through the frozen LM (after a BOS
  embedding when the tokenizer has one, so that the first visual token is not the attention sink), the residual
  stream after `layer` decoder layers passed through the final norm and the LM head; its top-k next tokens
  (nostalgebraist 2020; Neo et al. 2024, "Towards interpreting visual information processing in VLMs", for LLaVA).
  Layer 0 reads the input embeddings themselves through the head.
- ContextualLens: nearest neighbours (cosine) among the LM's hidden states at `layer` of every token of a text
  corpus (LatentLens, 2026); the string is the neighbour's own token in its sentence, e.g. "red" of "a small red
  circle". The query is the visual token's hidden state at `query_layer` (default: the same layer; 0 = the
  projected token itself, LatentLens's input-layer comparison). The corpus (`default_corpus`: scene templates and
  gallery captions, plus any user text file) is encoded once per (LM, layer, corpus) and cached on disk.

Hidden states are taken from the decoder layers' outputs (pre final norm), so every layer is read the same way; the
Hugging Face `hidden_states[-1]` is already normed, which is why this module does not use it.
Shape legend: M visual tokens, L sequence length, D LM width, V vocabulary, C corpus tokens, K top-k.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .text.base import save_tensor_atomic, vocab_strings

LENSES = ("embedding", "logit", "contextual")
_HOOKS = threading.Lock()  # one hooked forward at a time
_BUILDING = threading.Lock()  # one lens (and LM) load at a time: concurrent from_pretrained calls of one model fail


def top_strings(scores: torch.Tensor, strings: Sequence[str], k: int, pool: int = 4) -> list[list[str]]:
    """(M, V) scores -> per row the k distinct strings of highest score, best first (' red' and 'red' both read
    "red" once readable: a row holds k distinct strings), looked for among the pool * k + 8 best entries (a corpus
    repeats 'a' and 'the' hundreds of times, so the contextual lens looks further)."""
    idx = scores.topk(min(pool * k + 8, scores.shape[-1]), dim=-1).indices  # (M, k')
    out = []
    for row in idx.tolist():
        seen: dict[str, None] = {}
        for j in row:
            seen.setdefault(strings[j], None)
            if len(seen) == k:
                break
        out.append(list(seen))
    return out


def decoder_layers(model) -> torch.nn.ModuleList:
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no base_model.layers; the logit and contextual lenses need a "
                         "Llama-style decoder (layers, norm, lm_head)")
    return layers


def hidden_at(model, embeds: torch.Tensor, layers: Sequence[int], mask: torch.Tensor | None = None) -> dict:
    """Residual stream (B, L, D) after each of `layers` decoder layers (0 = the input embeddings) for inputs_embeds
    (B, L, D); hooks on the decoder layers, and the forward stops after the deepest layer asked for."""
    blocks = decoder_layers(model)
    n = len(blocks)
    for layer in layers:
        if not 0 <= layer <= n:
            raise ValueError(f"layer must be in 0..{n} for this LM ({n} decoder layers), got {layer}")
    out, deepest = {}, max(layers)
    if 0 in layers:
        out[0] = embeds
    if deepest == 0:
        return out

    class _Stop(Exception):
        pass

    def hook(i):
        def fn(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output  # (B, L, D)
            if i + 1 in layers:
                out[i + 1] = h
            if i + 1 == deepest:
                raise _Stop
        return fn

    # hooks live on the shared model: two threads (the app serves concurrent events) would fire each other's
    with _HOOKS:
        handles = [blocks[i].register_forward_hook(hook(i)) for i in range(deepest)]
        try:
            with torch.no_grad():
                model.base_model(inputs_embeds=embeds, attention_mask=mask)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
    return out


class _LMReader:
    """What the logit and contextual lenses share: the frozen LM, its BOS prefix and how a token sequence runs."""

    def __init__(self, model, tokenizer, layer: int):
        self.model, self.tokenizer, self.layer = model, tokenizer, int(layer)
        self.num_layers = len(decoder_layers(model))
        if not 0 <= self.layer <= self.num_layers:
            raise ValueError(f"layer must be in 0..{self.num_layers} for this LM, got {layer}")
        self.bos = tokenizer.bos_token_id  # None for tokenizers without one: no prefix then
        self.device = next(model.parameters()).device

    def states(self, vectors: torch.Tensor, layers: Sequence[int]) -> dict:
        """One image's tokens (M, D) as one sequence -> {layer: (M, D) float32} at the visual positions."""
        if vectors.ndim != 2 or vectors.shape[-1] != self.model.config.hidden_size:
            raise ValueError(f"expected one image's projected tokens (M, {self.model.config.hidden_size}), got "
                             f"{tuple(vectors.shape)}")
        x = vectors.detach().to(self.device, self.model.dtype).unsqueeze(0)  # (1, M, D)
        if self.bos is not None:
            bos = self.model.get_input_embeddings().weight[self.bos].view(1, 1, -1)  # (1, 1, D)
            x = torch.cat([bos.to(x.dtype), x], dim=1)  # (1, 1 + M, D)
        start = int(self.bos is not None)
        return {k: v[0, start:].float() for k, v in hidden_at(self.model, x, layers).items()}


class EmbeddingLens:
    """Nearest input-embedding rows by cosine: a text space with a vocabulary (TextSpace.nearest_tokens)."""

    name = "embedding"

    def __init__(self, text_space):
        if not getattr(text_space, "has_vocab", False):
            raise ValueError(f"text space {text_space.name!r} has no vocabulary for the embedding lens")
        self.text = text_space
        self.layer = 0

    def read(self, vectors: torch.Tensor, k: int = 5, states: dict | None = None) -> list[list[str]]:
        return [[w for w, _ in row] for row in self.text.nearest_tokens(vectors, k)]


class LogitLens(_LMReader):
    name = "logit"

    def __init__(self, model, tokenizer, layer: int):
        super().__init__(model, tokenizer, layer)
        size = min(model.get_output_embeddings().weight.shape[0], len(tokenizer))
        self.words = vocab_strings(tokenizer, size)

    def logits(self, vectors: torch.Tensor, states: dict | None = None) -> torch.Tensor:
        """(M, D) -> (M, V): final norm and LM head over the residual stream after `layer` layers; `states` from
        self.states(...) when several lenses share one LM pass."""
        states = states if states is not None else self.states(vectors, [self.layer])
        h = states[self.layer]  # (M, D)
        with torch.no_grad():
            normed = self.model.base_model.norm(h.to(self.model.dtype))
            return self.model.get_output_embeddings()(normed).float()[:, :len(self.words)]  # (M, V)

    def read(self, vectors: torch.Tensor, k: int = 5, states: dict | None = None) -> list[list[str]]:
        return top_strings(self.logits(vectors, states).cpu(), self.words, k)


# ---- the contextual corpus --------------------------------------------------------------------------------------
def default_corpus(text_file: str | Path | None = None) -> list[str]:
    """Sentences for the contextual lens, built offline: every one-object scene caption of the first template (6
    colors x 5 shapes x 2 sizes x 5 places = 300), 120 counted and 120 two-object captions drawn by seed, the
    gallery captions, then the non-empty lines of `text_file`. Deterministic, duplicates removed."""
    from .data.scenes import make_scenes, ONE_TEMPLATES, COLORS, SHAPES, SIZES, WHERE, _articles

    sentences = [_articles(ONE_TEMPLATES[0].format(size=z, color=c, shape=s, where=w))
                 for c in COLORS for s in SHAPES for z in SIZES for w in WHERE.values()]
    sentences += [s.caption for s in make_scenes(120, seed=1, counts=True)]
    sentences += [s.caption for s in make_scenes(120, seed=2, objects=2)]
    gallery = Path(__file__).resolve().parent.parent / "assets" / "gallery.jsonl"
    if gallery.is_file():
        sentences += [json.loads(line)["caption"] for line in gallery.read_text().splitlines() if line.strip()]
    if text_file is not None:
        sentences += [line.strip() for line in Path(text_file).read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(sentences))


def _corpus_tokens(tokenizer, sentences: list[str], bos: int | None) -> list[list[int]]:
    rows = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    return [([bos] if bos is not None else []) + r for r in rows]


def encode_corpus(model, tokenizer, sentences: list[str], layers: Sequence[int], batch_size: int = 64) -> dict:
    """{layer: (C, D) float32} hidden states of every corpus token (BOS excluded), and 'strings': the readable
    token at each position, and 'sentence': which sentence it is in (C,)."""
    from .text.base import readable_token

    bos = tokenizer.bos_token_id
    rows = _corpus_tokens(tokenizer, sentences, bos)
    start = int(bos is not None)
    table = model.get_input_embeddings()
    device = next(model.parameters()).device
    states = {layer: [] for layer in layers}
    strings, owner = [], []
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        length = max(len(r) for r in chunk)
        ids = torch.zeros(len(chunk), length, dtype=torch.long)  # (B, L), right-padded
        mask = torch.zeros(len(chunk), length, dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        with torch.no_grad():
            embeds = table(ids.to(device))  # (B, L, D)
        out = hidden_at(model, embeds, layers, mask.to(device))
        keep = mask.bool().clone()
        keep[:, :start] = False  # the BOS position is the same attention sink in every sentence
        for layer in layers:
            states[layer].append(out[layer][keep.to(device)].float().cpu())  # (c, D)
        for i, r in enumerate(chunk):
            strings += [readable_token(tokenizer.decode([t])) for t in r[start:]]
            owner += [b + i] * (len(r) - start)
    result = {layer: torch.cat(v) for layer, v in states.items()}
    result["strings"], result["sentence"] = strings, torch.tensor(owner)
    return result


def corpus_states(model, tokenizer, sentences: list[str], layers: Sequence[int], cache_id: str = "",
                  cache: bool = True) -> dict:
    """Corpus hidden states per layer, read from the cache (vlmviz.paths.cache_dir('lenses'), keyed by the LM's
    cache_id, the layer and a hash of the sentences) or encoded in one pass for every layer missing there.
    Returns {layer: (C, D)}, 'strings', 'sentence' (C,), 'seconds' (encoding time, 0 when all came from the cache)."""
    from safetensors.torch import load_file

    from .paths import cache_dir

    digest = hashlib.sha1("\n".join(sentences).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", cache_id)
    use = cache and bool(cache_id)
    path = lambda layer: cache_dir("lenses") / f"{safe}-L{layer}-{digest}.safetensors"  # noqa: E731
    meta = cache_dir("lenses") / f"{safe}-{digest}.json" if use else None
    out: dict = {"seconds": 0.0}
    missing = list(layers)
    if use and meta.exists():
        missing = [layer for layer in layers if not path(layer).exists()]
        for layer in set(layers) - set(missing):
            out[layer] = load_file(str(path(layer)))["states"]
        info = json.loads(meta.read_text())
        out["strings"], out["sentence"] = info["strings"], torch.tensor(info["sentence"])
    if missing:
        t0 = time.perf_counter()
        enc = encode_corpus(model, tokenizer, sentences, missing)
        out["seconds"] = time.perf_counter() - t0
        out.update(enc)
        if use:
            for layer in missing:
                save_tensor_atomic(path(layer), {"states": enc[layer]})
            meta.write_text(json.dumps({"strings": enc["strings"], "sentence": enc["sentence"].tolist()}))
    return out


class ContextualLens(_LMReader):
    name = "contextual"

    def __init__(self, model, tokenizer, layer: int, sentences: Sequence[str] | None = None, cache_id: str = "",
                 query_layer: int | None = None, corpus: dict | None = None):
        """corpus: what corpus_states returned for these sentences (and this layer), to share one pass between
        lenses at several layers; by default it is read from the cache or encoded."""
        super().__init__(model, tokenizer, layer)
        self.query_layer = self.layer if query_layer is None else int(query_layer)
        if not 0 <= self.query_layer <= self.num_layers:
            raise ValueError(f"query_layer must be in 0..{self.num_layers} for this LM, got {query_layer}")
        self.sentences = list(sentences) if sentences is not None else default_corpus()
        if not self.sentences:
            raise ValueError("the contextual lens needs at least one corpus sentence")
        corpus = corpus if corpus is not None else corpus_states(model, tokenizer, self.sentences, [self.layer],
                                                                 cache_id)
        self.table, self.strings, self.owner = corpus[self.layer], corpus["strings"], corpus["sentence"]
        self.build_seconds = corpus["seconds"]
        self.norms = self.table.norm(dim=-1).clamp_min(1e-12)  # (C,)

    @property
    def size(self) -> int:
        return len(self.strings)

    def scores(self, vectors: torch.Tensor, states: dict | None = None) -> torch.Tensor:
        """(M, D) -> cosine (M, C) of each visual token's state at query_layer with every corpus token; `states`
        from self.states(...) when several lenses share one LM pass."""
        states = states if states is not None else self.states(vectors, [self.query_layer])
        q = states[self.query_layer].cpu()  # (M, D)
        return (F.normalize(q, dim=-1) @ self.table.T) / self.norms  # (M, C)

    def neighbours(self, vectors: torch.Tensor, k: int = 5) -> list[list[tuple[str, str]]]:
        """Per token the k nearest corpus tokens as (token, its sentence), best first."""
        idx = self.scores(vectors).topk(min(k, self.size), dim=-1).indices  # (M, K)
        return [[(self.strings[j], self.sentences[int(self.owner[j])]) for j in row] for row in idx.tolist()]

    def read(self, vectors: torch.Tensor, k: int = 5, states: dict | None = None) -> list[list[str]]:
        return top_strings(self.scores(vectors, states), self.strings, k, pool=64)


def build_lens(kind: str, text_space=None, model=None, tokenizer=None, layer: int = 0, **kw):
    """A lens by name; 'embedding' needs a text space, the other two the frozen LM and its tokenizer."""
    if kind == "embedding":
        return EmbeddingLens(text_space)
    if kind not in LENSES:
        raise ValueError(f"unknown lens {kind!r}; expected one of {', '.join(LENSES)}")
    if model is None or tokenizer is None:
        raise ValueError(f"the {kind} lens needs the frozen LM and its tokenizer (a causal LM text space)")
    return (LogitLens if kind == "logit" else ContextualLens)(model, tokenizer, layer, **kw)


# ---- a lens over a text space (what the app and Pipeline.nearest_words ask for) ----------------------------------
def language_model(text_space):
    """(model, tokenizer) of the causal LM behind a text space: the contextual space holds it, SmolLM2's token-mean
    space and any Hugging Face causal LM token-mean space load it (once per process)."""
    if getattr(text_space, "model", None) is not None and hasattr(text_space.model, "base_model"):
        return text_space.model, text_space.tokenizer
    cache_id = getattr(text_space, "cache_id", "")
    if cache_id.startswith("smollm2-135m"):
        from .text import load_smollm2_lm

        return load_smollm2_lm(str(text_space.device))
    if cache_id.startswith("hf-causal:"):
        return _hf_lm(cache_id[len("hf-causal:"):].rsplit("@", 1)[0], str(text_space.device))
    raise ValueError(f"the logit and contextual lenses need the causal LM behind the text space; "
                     f"{text_space.name!r} ({text_space.kind}) has none: use the embedding lens or an LM text space")


@functools.cache
def _hf_lm(name_or_path: str, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import MODEL_LOAD, offline
    from .text.hf_causal import freeze

    kw = {"local_files_only": offline()}
    with MODEL_LOAD:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kw).to(device)
    return freeze(model), AutoTokenizer.from_pretrained(name_or_path, **kw)


_BUILT: dict = {}


def lens_for(text_space, kind: str = "embedding", layer: int = 0):
    """The lens `kind` at `layer` over a text space, built once per process (the contextual corpus is the default
    one, cached on disk under the text space's cache_id)."""
    if kind == "embedding":
        return EmbeddingLens(text_space)
    key = (getattr(text_space, "cache_id", id(text_space)), kind, int(layer))
    with _BUILDING:
        if key in _BUILT:
            return _BUILT[key]
        model, tokenizer = language_model(text_space)
        lm_id = re.sub(r"^smollm2-135m-ctx@", "smollm2-135m@", text_space.cache_id) + "-lm"  # both share one LM
        kw = {"cache_id": lm_id} if kind == "contextual" else {}
        _BUILT[key] = build_lens(kind, model=model, tokenizer=tokenizer, layer=layer, **kw)
    return _BUILT[key]
