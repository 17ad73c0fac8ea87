"""LLaVA stage 1 for real: train the connector through a frozen causal LM's own next-token loss, then let the
small VLM describe images.

Prefix connectors (LLaVA, nanoVLM, MiniGPT-4): the projected visual tokens are input embeddings of the LM,
    <|im_start|>user\n [M visual tokens] Describe the image.<|im_end|>\n<|im_start|>assistant\n caption <|im_end|>
and the loss falls on the caption tokens and the closing <|im_end|> only (prompt and image positions get -100).
Cross-attention connectors (Flamingo): gated cross-attention layers are hooked in front of every k-th decoder layer
and read the projected visual tokens; their tanh gates start at zero, so the untrained model is exactly the
text-only LM. Shape legend: B images, M visual tokens, L text length, D LM width (576 for SmolLM2-135M).
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PROMPT = "Describe the image."


class GatedCrossAttention(nn.Module):
    """Flamingo's GATED XATTN-DENSE block (Alayrac et al. 2022, Fig. 4): y = x + tanh(a) * xattn(x, v), then
    y + tanh(b) * ffw(y), with a = b = 0 at initialisation."""

    def __init__(self, dim: int, num_heads: int = 8):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.attn_gate = nn.Parameter(torch.zeros(()))
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ff_gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_gate.tanh() * self.attn(self.norm(x), visual, visual, need_weights=False)[0]  # (B, L, D)
        return x + self.ff_gate.tanh() * self.ff(self.ff_norm(x))


class VisualLM(nn.Module):
    """A frozen causal LM that reads projected visual tokens, as a prefix or through gated cross-attention."""

    def __init__(self, lm, tokenizer, mode: str = "prefix", every: int = 4, prompt: str = PROMPT):
        super().__init__()
        if mode not in ("prefix", "xattn"):
            raise ValueError(f"mode must be 'prefix' or 'xattn', got {mode!r}")
        self.lm, self.tokenizer, self.mode = lm.requires_grad_(False).eval(), tokenizer, mode
        self.dim = lm.get_input_embeddings().weight.shape[1]
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if not isinstance(self.end, int) or self.end == tokenizer.unk_token_id:
            self.end = tokenizer.eos_token_id
        before, after = self._chat(prompt)
        self.register_buffer("ids_before", torch.tensor(before), persistent=False)
        self.register_buffer("ids_after", torch.tensor(after), persistent=False)
        self._visual: torch.Tensor | None = None
        self.xattn = nn.ModuleList()
        if mode == "xattn":
            layers = lm.model.layers
            heads = 8 if self.dim % 8 == 0 else 1
            for i in range(0, len(layers), every):
                block = GatedCrossAttention(self.dim, heads)
                self.xattn.append(block)
                layers[i].register_forward_pre_hook(self._hook(block), with_kwargs=True)

    def _chat(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the image in the chat template (plain 'Image:' text when there is none)."""
        marker = "<image>"
        try:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": f"{marker}{prompt}"}],
                                                      tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - tokenizers without a chat template
            text = f"Image: {marker}\n{prompt}\nCaption:"
        head, tail = text.split(marker)
        enc = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        return enc(head), enc(tail)

    def _hook(self, block: GatedCrossAttention):
        def hook(module, args, kwargs):
            if self._visual is None:
                return None
            if args:
                return (block(args[0], self._visual),) + tuple(args[1:]), kwargs
            kwargs["hidden_states"] = block(kwargs["hidden_states"], self._visual)
            return args, kwargs

        return hook

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def _prefix(self, visual: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Embeddings of the prompt around the image: (B, P, D) and the number of positions before the caption."""
        b = len(visual)
        before = self._embed(self.ids_before).expand(b, -1, -1)  # (B, P1, D)
        after = self._embed(self.ids_after).expand(b, -1, -1)  # (B, P2, D)
        parts = [before, visual, after] if self.mode == "prefix" else [before, after]
        prefix = torch.cat(parts, dim=1)
        return prefix, prefix.shape[1]

    def caption_loss(self, visual: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Mean next-token cross-entropy over caption tokens (+ the closing end token) given the visual tokens."""
        if visual.shape[-1] != self.dim:
            raise ValueError(f"visual tokens must be {self.dim}-d (the LM width), got {visual.shape[-1]}")
        visual = visual.to(self.lm.dtype)
        self._visual = visual if self.mode == "xattn" else None
        try:
            prefix, p = self._prefix(visual)  # (B, P, D)
            cap = [self.tokenizer(c.strip(), add_special_tokens=False)["input_ids"]
                   + [self.end] for c in captions]
            length = max(map(len, cap))
            ids = torch.full((len(cap), length), self.end, dtype=torch.long, device=visual.device)
            mask = torch.zeros(len(cap), length, dtype=torch.long, device=visual.device)
            for i, c in enumerate(cap):  # right padding; padded positions are masked and ignored by the loss
                ids[i, :len(c)] = torch.tensor(c)
                mask[i, :len(c)] = 1
            embeds = torch.cat([prefix, self._embed(ids)], dim=1)  # (B, P + L, D)
            attention = torch.cat([torch.ones(len(cap), p, dtype=torch.long, device=visual.device), mask], dim=1)
            logits = self.lm(inputs_embeds=embeds, attention_mask=attention).logits  # (B, P + L, V)
            pred = logits[:, p - 1:-1]  # position t predicts token t + 1: (B, L, V)
            labels = ids.masked_fill(mask == 0, -100)
            return F.cross_entropy(pred.float().reshape(-1, pred.shape[-1]), labels.reshape(-1), ignore_index=-100)
        finally:
            self._visual = None

    @torch.no_grad()
    def generate(self, visual: torch.Tensor | None, max_new_tokens: int = 24, sample: bool = False,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int = 0) -> list[str]:
        """Describe each image (greedy or nucleus sampling) with the LM's KV cache; visual None = text-only LM."""
        b = 1 if visual is None else len(visual)
        if visual is None:
            prefix = torch.cat([self._embed(self.ids_before), self._embed(self.ids_after)])[None]
        else:
            visual = visual.to(self.lm.dtype)
            self._visual = visual if self.mode == "xattn" else None
            prefix, _ = self._prefix(visual)
        try:
            if sample:
                torch.manual_seed(seed)
            out = self.lm.generate(
                inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long,
                                                                device=prefix.device),
                max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
                top_p=top_p if sample else None, top_k=None, eos_token_id=self.end, pad_token_id=self.end,
                use_cache=True)
        finally:
            self._visual = None
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts] * (b if visual is None and b > 1 else 1)


class CaptionHead(nn.Module):
    """The trainer's loss for objective 'caption': visual tokens (b, M, D) and caption indices (b,)."""

    def __init__(self, vlm: VisualLM, captions: Sequence[str]):
        super().__init__()
        self.vlm, self.captions, self.kind = vlm, list(captions), "caption"

    def forward(self, visual: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.vlm.caption_loss(visual, [self.captions[int(i)] for i in index])

    @property
    def temperature(self):
        return None


COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "gray", "cyan")
SHAPES = ("circle", "square", "triangle", "star", "rectangle", "diamond", "hexagon", "cross", "heart", "ellipse")
POSITIONS = ("left", "right", "top", "bottom", "center", "middle", "above", "below")
COUNTS = ("one", "two", "three", "four", "single", "a pair")


def mentioned(text: str, words: Sequence[str]) -> list[str]:
    return [w for w in words if re.search(rf"\b{w}s?\b", text.lower())]


def attribute_hits(generated: str, meta: dict) -> dict[str, bool]:
    """Which stated attributes a generated caption gets right: the true value is mentioned and no rival value."""
    out = {}
    for attr, vocab in (("color", COLORS), ("shape", SHAPES), ("position", POSITIONS), ("count", COUNTS)):
        truth = meta.get(attr)
        if truth is None:
            continue
        said = mentioned(generated, vocab)
        out[attr] = str(truth).lower() in said and len(said) == 1
    return out
