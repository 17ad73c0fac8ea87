"""Text spaces from a causal language model: the mean of its input embeddings, or of its last hidden states.

Token-mean is the space a LLaVA-style connector writes into: the LM reads projected visual tokens exactly where it
reads word embeddings, so a caption's mean input embedding is the classic target. It is a bag of words, though:
a caption and its attribute swap have the same tokens and so the same vector. The contextual space runs the
frozen LM over the caption and averages its final-norm hidden states, which depend on word order.

Captions are tokenized without special tokens (no BOS): a BOS row would be the same in every caption vector, a
constant offset that only pulls all captions together. Shape legend: T captions, L tokens, V vocab, D width.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..hub import MODEL_LOAD, offline
from .base import TextSpace, masked_mean, vocab_strings


def tokenize(tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> ids (T, L) right-padded with 0, mask (T, L); no special tokens, no reliance on a pad token."""
    rows = tokenizer(captions, add_special_tokens=False)["input_ids"]
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"caption {i} ({captions[i]!r}) gives no tokens; expected text the tokenizer knows")
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)  # (T, L)
    mask = torch.zeros(len(rows), length, dtype=torch.long)  # (T, L)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return ids, mask


class TokenMeanSpace(TextSpace):
    """Caption vector = mean of its tokens' rows in the LM's input-embedding table (padding ignored, no BOS)."""

    kind = "token-mean"

    def __init__(self, name: str, table: torch.Tensor, tokenizer, description: str, cache_id: str,
                 device: str | torch.device = "cpu"):
        self.name, self.description, self.cache_id = name, description, cache_id
        self.device = torch.device(device)
        self.table = table.detach().float().to(self.device).requires_grad_(False)  # (V, D)
        self.tokenizer = tokenizer
        self.dim = int(self.table.shape[1])
        self._words: list[str] | None = None

    def _encode_batch(self, captions: list[str]) -> torch.Tensor:
        ids, mask = tokenize(self.tokenizer, captions)
        if int(ids.max()) >= len(self.table):
            raise ValueError(f"tokenizer gives id {int(ids.max())}, table has only {len(self.table)} rows")
        rows = self.table[ids.to(self.device)]  # (T, L, D)
        return masked_mean(rows, mask.to(self.device))  # (T, D)

    def _vocab(self) -> tuple[list[str], torch.Tensor]:
        size = min(len(self.table), len(self.tokenizer))  # some tables pad the vocab with unused rows
        if self._words is None:
            self._words = vocab_strings(self.tokenizer, size)
        return self._words, self.table[:size].cpu()  # (V, D)


class ContextualLMSpace(TextSpace):
    """Caption vector = mean over caption tokens of the frozen LM's last hidden state (after its final norm).

    Order-aware: "red circle left of blue square" and its swap differ (cosine 0.991 in SmolLM2-135M, where
    unrelated captions sit near 0.83: late-layer states share a large common direction). Post-norm states of the
    last layer are used because middle layers are dominated by a few massive activations (measured: all captions
    at cosine 1.000 there); a BOS prefix was tried and made captions more alike (0.83 -> 0.88).
    The vocabulary readout compares with the output embeddings, which in tied-embedding LMs (SmolLM2) are the
    input table too: a logit-lens-style reading of what the averaged state would predict next, not a claim that
    hidden states live in the input space.
    """

    kind = "contextual"

    def __init__(self, name: str, model, tokenizer, description: str, cache_id: str,
                 device: str | torch.device = "cpu"):
        self.name, self.description, self.cache_id = name, description, cache_id
        self.device = torch.device(device)
        self.model, self.tokenizer = model, tokenizer
        self.dim = int(model.config.hidden_size)
        self._words: list[str] | None = None

    def _encode_batch(self, captions: list[str]) -> torch.Tensor:
        ids, mask = tokenize(self.tokenizer, captions)
        ids, mask = ids.to(self.device), mask.to(self.device)
        # Right padding is safe for a causal LM: real tokens never attend to the pad positions after them.
        hidden = self.model.base_model(input_ids=ids, attention_mask=self._lm_mask(mask)).last_hidden_state
        return masked_mean(hidden.float(), mask)  # (T, D) from (T, L, D)

    def _lm_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The attention mask the LM gets for a right-padded batch (T, L); a 2-D padding mask for a causal LM."""
        return mask

    def _vocab(self) -> tuple[list[str], torch.Tensor]:
        table = self.model.get_output_embeddings().weight  # (V, D); tied to the input table in SmolLM2
        size = min(len(table), len(self.tokenizer))
        if self._words is None:
            self._words = vocab_strings(self.tokenizer, size)
        return self._words, table[:size].detach().float().cpu()  # (V, D)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Frozen side: no gradients, eval mode (no dropout), so encode() is deterministic."""
    return model.requires_grad_(False).eval()


def source_id(name_or_path: str, config=None) -> str:
    """Stable id of a model source: its Hub commit, or for a local folder the names, sizes and mtimes of its
    files (cheap, and changes when the weights are replaced)."""
    path = Path(name_or_path)
    if path.is_dir():
        stats = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file())
        return hashlib.sha1(repr(stats).encode()).hexdigest()[:12]
    commit = getattr(config, "_commit_hash", None)
    return (commit or "unknown")[:12]


def load_causal_token_mean(name_or_path: str, device: str = "cpu") -> TokenMeanSpace:
    """Any Hugging Face causal LM (Hub id or local folder) -> its input-embedding table + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"local_files_only": offline()}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kw)
    with MODEL_LOAD:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kw)
    table = model.get_input_embeddings().weight.detach().clone()  # (V, D); the rest of the LM is dropped
    label = Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path
    description = (f"Mean of the input-embedding rows of {label} ({type(model).__name__}) over a caption's tokens: "
                   f"the space a LLaVA-style connector writes into; a bag of words (word order is lost).")
    cache_id = f"hf-causal:{name_or_path}@{source_id(name_or_path, model.config)}"
    del model
    return TokenMeanSpace(label, table, tokenizer, description, cache_id, device)
