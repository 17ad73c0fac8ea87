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

import math
import re
import threading
import weakref
from collections import Counter
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
    """A frozen causal LM that reads projected visual tokens, as a prefix or through gated cross-attention.

    The chat text before the image is the same for every image, so its keys and values are computed once per call
    (batch 1, no gradient) and shared: each training sequence then runs only from the image on, which halves a
    step through SmolLM2, whose template starts with a 24-token system prompt. In 'xattn' mode the blocks therefore
    act on the positions after the image only, as in Flamingo, where text attends to the image before it."""

    def __init__(self, lm, tokenizer, mode: str = "prefix", every: int = 4, prompt: str = PROMPT):
        super().__init__()
        if mode not in ("prefix", "xattn"):
            raise ValueError(f"mode must be 'prefix' or 'xattn', got {mode!r}")
        if every < 1:
            raise ValueError(f"every must be >= 1 (a cross-attention block before every k-th layer), got {every}")
        self.lm, self.tokenizer, self.mode = lm.requires_grad_(False).eval(), tokenizer, mode
        self.every, self.prompt = every, prompt
        self.dim = lm.get_input_embeddings().weight.shape[1]
        self.heads = 8 if self.dim % 8 == 0 else 1
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if not isinstance(self.end, int) or self.end == tokenizer.unk_token_id:
            self.end = tokenizer.eos_token_id
        before, after = self._chat(prompt)
        self.register_buffer("ids_before", torch.tensor(before), persistent=False)
        self.register_buffer("ids_after", torch.tensor(after), persistent=False)
        # the visual tokens the hooks read, per thread: the frozen LM is shared by every VisualLM of a process
        self._local = threading.local()
        self._hooks: list = []
        self.xattn = nn.ModuleList()
        if mode == "xattn":
            layers = lm.model.layers
            me = weakref.ref(self)  # a hook must not keep a discarded VisualLM (and its blocks) alive
            for k, i in enumerate(range(0, len(layers), every)):
                self.xattn.append(GatedCrossAttention(self.dim, self.heads))
                self._hooks.append(layers[i].register_forward_pre_hook(_hook(me, k), with_kwargs=True))

    @property
    def _visual(self) -> torch.Tensor | None:
        return getattr(self._local, "visual", None)

    @_visual.setter
    def _visual(self, value: torch.Tensor | None) -> None:
        self._local.visual = value

    def close(self) -> None:
        """Take the cross-attention hooks off the shared LM (the LM is then exactly the text-only LM again)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

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

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def _before(self, b: int):
        """KV cache of the chat text before the image, computed once at batch 1 and repeated for b sequences."""
        if not len(self.ids_before):
            from transformers import DynamicCache

            return DynamicCache(), 0
        with torch.no_grad():
            self._visual = None  # the text before the image sees no image
            past = self.lm(inputs_embeds=self._embed(self.ids_before)[None], use_cache=True).past_key_values
        past.batch_repeat_interleave(b)
        return past, len(self.ids_before)

    def _from_image(self, visual: torch.Tensor | None, b: int) -> torch.Tensor:
        """Embeddings from the image on: prefix (B, M + P2, D), xattn or text-only (B, P2, D)."""
        after = self._embed(self.ids_after).expand(b, -1, -1)  # (B, P2, D)
        if visual is None or self.mode == "xattn":
            return after
        return torch.cat([visual, after], dim=1)

    def _check(self, visual: torch.Tensor) -> torch.Tensor:
        if visual.ndim != 3 or visual.shape[-1] != self.dim:
            raise ValueError(f"visual tokens must be (B, M, {self.dim}) (the LM width), got {tuple(visual.shape)}")
        return visual.to(self.lm.dtype)

    def caption_loss(self, visual: torch.Tensor, captions: Sequence[str], per_caption: bool = False) -> torch.Tensor:
        """Mean next-token cross-entropy over caption tokens (+ the closing end token) given the visual tokens;
        per_caption: (B,) each caption's summed negative log-likelihood instead."""
        visual = self._check(visual)
        b, device = len(visual), visual.device
        past, p1 = self._before(b)
        cap = [self.tokenizer(c.strip(), add_special_tokens=False)["input_ids"] + [self.end] for c in captions]
        length = max(map(len, cap))
        ids = torch.full((b, length), self.end, dtype=torch.long, device=device)
        mask = torch.zeros(b, length, dtype=torch.long, device=device)
        for i, c in enumerate(cap):  # right padding; padded positions are masked and ignored by the loss
            ids[i, :len(c)] = torch.tensor(c)
            mask[i, :len(c)] = 1
        self._visual = visual if self.mode == "xattn" else None
        try:
            embeds = torch.cat([self._from_image(visual, b), self._embed(ids)], dim=1)  # (B, P + L, D)
            attention = torch.cat([torch.ones(b, p1 + embeds.shape[1] - length, dtype=torch.long, device=device),
                                   mask], dim=1)  # (B, P1 + P + L)
            # logits only where they are scored: position t predicts token t + 1, so the last L + 1 positions but
            # the very last; the LM head (49152 x 576 for SmolLM2) on prompt positions would be wasted work
            logits = self.lm(inputs_embeds=embeds, attention_mask=attention, past_key_values=past,
                             logits_to_keep=length + 1).logits[:, :-1]  # (B, L, V)
        finally:
            self._visual = None
        labels = ids.masked_fill(mask == 0, -100)
        if per_caption:
            nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
            return nll.sum(1)  # (B,)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def generate(self, visual: torch.Tensor | None, max_new_tokens: int = 24, sample: bool = False,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, contrast: torch.Tensor | None = None,
                 alpha: float = 1.0, beta: float = 0.1) -> list[str]:
        """Describe each image, greedily or by nucleus sampling, reusing the LM's KV cache step to step;
        visual None = the text-only LM. Sampling is reproducible through `seed` (its own generator).

        contrast (visual tokens of an image that says nothing, (1 or B, M, D)): visual contrastive decoding (VCD,
        Leng et al. CVPR 2024): each next token is scored (1 + alpha) log p(t | image) - alpha log p(t | contrast),
        among the tokens with p(t | image) >= beta * the most likely one's. What the connector and LM would say of
        any image (the training captions' prior, e.g. which shape follows "red") is taken out of the choice; the
        plausibility cut keeps the choice among what this image supports."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if contrast is not None and (visual is None or self.mode != "prefix"):
            raise ValueError("contrastive decoding needs visual tokens and the prefix mode")
        if contrast is not None and not (alpha >= 0 and 0 < beta <= 1):
            raise ValueError(f"contrastive decoding needs alpha >= 0 and 0 < beta <= 1, got {alpha} and {beta}")
        if sample and not (temperature > 0 and 0 < top_p <= 1):
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
        visual = None if visual is None else self._check(visual)
        b = 1 if visual is None else len(visual)
        rows = b if contrast is None else 2 * b  # LM batch rows
        if contrast is not None:  # one batch of 2B: the images, then the contrast image B times
            visual = torch.cat([visual, self._check(contrast).expand(b, *visual.shape[1:])], dim=0)
        device = self.ids_before.device
        past, length = self._before(rows)
        generator = torch.Generator(device).manual_seed(seed) if sample else None
        self._visual = visual if self.mode == "xattn" else None
        try:
            step = self._from_image(visual, rows)  # (B, P, D), then (B, 1, D) per new token
            done = torch.zeros(b, dtype=torch.bool, device=device)
            out: list[torch.Tensor] = []
            for _ in range(max_new_tokens):
                length += step.shape[1]
                result = self.lm(inputs_embeds=step, attention_mask=torch.ones(rows, length, dtype=torch.long,
                                                                               device=device),
                                 past_key_values=past, use_cache=True, logits_to_keep=1)
                past = result.past_key_values
                logits = result.logits[:, -1].float()  # (B or 2B, V)
                if contrast is not None:
                    logits = _contrastive(logits[:b], logits[b:], alpha, beta)  # (B, V)
                token = _nucleus(logits, temperature, top_p, generator) if sample else logits.argmax(-1)
                token = token.masked_fill(done, self.end)  # finished rows only repeat the end token
                out.append(token)
                done |= token == self.end
                if bool(done.all()):
                    break
                step = self._embed(token if contrast is None else token.repeat(2))[:, None]  # (rows, 1, D)
        finally:
            self._visual = None
        rows = torch.stack(out, dim=1).tolist()  # (B, new tokens)
        texts = [self.tokenizer.decode(r[:r.index(self.end)] if self.end in r else r, skip_special_tokens=True)
                 for r in rows]
        return [t.strip() for t in texts]


def _hook(vlm_ref, index: int):
    """Forward pre-hook of a decoder layer: run cross-attention block `index` of the VisualLM first, when that
    VisualLM has visual tokens set in this thread (otherwise the layer sees exactly the text-only input)."""

    def hook(module, args, kwargs):
        vlm = vlm_ref()
        visual = None if vlm is None else vlm._visual
        if visual is None:
            return None
        block = vlm.xattn[index]
        if args:
            return (block(args[0], visual),) + tuple(args[1:]), kwargs
        kwargs["hidden_states"] = block(kwargs["hidden_states"], visual)
        return args, kwargs

    return hook


def _contrastive(image: torch.Tensor, contrast: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """VCD scores (B, V): (1 + alpha) log p(image) - alpha log p(contrast) where p(image) >= beta * its maximum,
    -inf elsewhere (so the image's own top token always stays a candidate)."""
    log_p, log_q = image.log_softmax(-1), contrast.log_softmax(-1)
    plausible = log_p >= log_p.max(-1, keepdim=True).values + math.log(beta)
    return ((1 + alpha) * log_p - alpha * log_q).masked_fill(~plausible, float("-inf"))


def _nucleus(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """Top-p sampling (Holtzman et al. 2020): the smallest set of tokens whose probability reaches top_p."""
    probs = (logits / temperature).softmax(-1)  # (B, V)
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
    sorted_p = sorted_p * keep
    pick = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)  # (B, 1)
    return order.gather(-1, pick)[:, 0]


class CaptionHead(nn.Module):
    """The trainer's loss for objective 'caption': visual tokens (b, M, D) and caption indices (b,).

    swap_weight w > 0 (two-object captions): add w * softplus(NLL(caption) - NLL(its color-swapped twin)) over the
    first `swap_share` of each batch, the twin being the same sentence with the two objects' colors exchanged
    ("a purple diamond left of a blue triangle" -> "a blue diamond left of a purple triangle"). Cross-entropy alone
    lets the LM name two objects' words and still bind them wrongly; the ranking term is paid only when the image
    does not tell the two bindings apart (unlikelihood of the wrong binding, as NegCLIP's swapped negatives do for
    contrastive training)."""

    def __init__(self, vlm: VisualLM, captions: Sequence[str], swap_weight: float = 0.0, swap_share: float = 0.5,
                 word_weight: float = 0.0, echo: "EchoWords | None" = None, echo_weight: float = 0.0):
        super().__init__()
        self.echo, self.echo_weight = (echo, float(echo_weight)) if echo_weight else (None, 0.0)
        self.vlm, self.captions, self.kind = vlm, list(captions), "caption"
        self.swap_weight, self.swap_share = float(swap_weight), float(swap_share)
        self.twins = [swap_colors(c) for c in self.captions] if self.swap_weight else []
        self.word_weight = float(word_weight)
        self.words = WordGrounding(vlm, self.captions) if self.word_weight else None

    def forward(self, visual: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        loss = self._caption(visual, index)
        if self.words is not None:
            loss = loss + self.word_weight * self.words(visual, index)
        if self.echo is not None:
            loss = loss + self.echo_weight * self.echo(visual, index)
        return loss

    def _caption(self, visual: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        captions = [self.captions[int(i)] for i in index]
        if not self.swap_weight:
            return self.vlm.caption_loss(visual, captions)
        k = max(1, round(len(captions) * self.swap_share))
        pairs = [(j, self.twins[int(i)]) for j, i in enumerate(index[:k]) if self.twins[int(i)]]
        if not pairs:
            return self.vlm.caption_loss(visual, captions)
        rows = [j for j, _ in pairs]
        nll = self.vlm.caption_loss(torch.cat([visual, visual[rows]]), captions + [t for _, t in pairs],
                                    per_caption=True)  # (B + P,): every caption, then the twins
        lengths = torch.tensor([len(self.vlm.tokenizer(c.strip(), add_special_tokens=False)["input_ids"]) + 1
                                for c in captions], dtype=nll.dtype, device=nll.device)
        ce = nll[:len(captions)].sum() / lengths.sum()  # the mean per-token cross-entropy, as without twins
        rank = F.softplus(nll[rows] - nll[len(captions):]).mean()
        return ce + self.swap_weight * rank

    @property
    def temperature(self):
        return None


class WordGrounding(nn.Module):
    """Each word of a caption should be the nearest reading of some visual token: the embedding lens as a training
    signal, from the captions alone (no boxes or masks). The vocabulary is every word of the training captions
    that occurs at least `min_count` times and in at most `max_share` of them (so "a", "photo", "of" drop out);
    a word's target is the frozen LM's input embedding of " word" (its sub-word rows averaged). Per image and word,
    s = max over the M visual tokens of cos(token, word); the loss is the binary cross-entropy of
    scale * s + bias_word against whether the caption contains the word, summed over words and divided by the
    number of words present (a learned scale, shared, and a learned bias per word, which absorbs words that no
    token can show). FILIP's token-wise max similarity (Yao et al. 2022), against the LM's word embeddings.

    It asks the connector to put, for a held-out yellow diamond, a token near "yellow" and one near "diamond",
    whatever pairs the training captions held; the frozen LM copies words from its context well."""

    def __init__(self, vlm: VisualLM, captions: Sequence[str], min_count: int = 5, max_share: float = 0.5):
        super().__init__()
        docs = [set(re.findall(r"[a-z]+", c.lower())) for c in captions]
        count = Counter(w for d in docs for w in d)
        self.vocab = sorted(w for w, n in count.items() if n >= min_count and n <= max_share * len(docs))
        if not self.vocab:
            raise ValueError("word grounding needs words that recur in the training captions (at least "
                             f"{min_count} times, in at most {max_share:.0%} of them); these captions have none")
        self.register_buffer("targets", F.normalize(word_vectors(vlm, self.vocab), dim=-1), persistent=False)  # (V, D)
        where = {w: j for j, w in enumerate(self.vocab)}
        present = torch.zeros(len(docs), len(self.vocab))
        for i, d in enumerate(docs):
            present[i, [where[w] for w in d if w in where]] = 1.0
        self.register_buffer("present", present, persistent=False)  # (N, V)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.full((len(self.vocab),), -5.0))

    def similarity(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, V): each word's best cosine over the B images' M tokens."""
        sim = F.normalize(visual.float(), dim=-1) @ self.targets.to(visual.device).T  # (B, M, V)
        return sim.max(dim=1).values

    def forward(self, visual: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logits = self.log_scale.exp() * self.similarity(visual) + self.bias
        target = self.present.to(visual.device)[index.to(visual.device)]
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        return bce / target.sum().clamp(min=1.0)


STOP_WORDS = frozenset({"a", "an", "the", "of", "photo", "there", "is"})


def content_words(statement: str) -> list[str]:
    """The words of a statement that carry its facts, in order: 'a red circle left of a blue square' ->
    [red, circle, left, blue, square]."""
    return [w for w in re.findall(r"[a-z]+", statement.lower()) if w not in STOP_WORDS]


def word_vectors(vlm: VisualLM, words: Sequence[str]) -> torch.Tensor:
    """(len(words), D): the frozen LM's input embedding of " word" (its sub-word rows averaged)."""
    table = vlm.lm.get_input_embeddings().weight.detach()
    return torch.stack([table[vlm.tokenizer(" " + w, add_special_tokens=False)["input_ids"]].float().mean(0)
                        for w in words])


class EchoWords(nn.Module):
    """Visual token k should BE the k-th content word of the image's statement: the squared distance of the first K
    visual tokens to the frozen LM's input embeddings of those words, over their mean squared norm (so 1 is as far
    as zero is). The LM then reads the image as the words it would copy, and copying from context is what a frozen
    LM does best; the caption loss only has to teach it to phrase them.

    statements: one per training image, its facts in one fixed order ("a red circle left of a blue square" for
    either phrasing: the scenes' canonical caption), so slot k means the same thing in every image. No LM forward:
    thousands of steps cost what a few hundred caption steps do, so it also runs alone, before the caption loss
    (train_caption_connector's echo_steps). While it runs alone, tokens past the words are held at the LM's mean input
    embedding, a word's scale; the caption loss is then free to make them a prompt (how to phrase the words).
    """

    kind = "caption"
    temperature = None
    hold_free = True  # train_caption_connector lets go of the tokens past the words once the caption loss runs

    def __init__(self, vlm: VisualLM, statements: Sequence[str]):
        super().__init__()
        words = [content_words(s) for s in statements]
        if not any(words):
            raise ValueError("echo needs statements with content words (e.g. 'a red circle left of a blue square')")
        self.slots = max(map(len, words))
        vocab = sorted({w for ws in words for w in ws})
        vectors = word_vectors(vlm, vocab)  # (V, D)
        where = {w: j for j, w in enumerate(vocab)}
        ids = torch.zeros(len(words), self.slots, dtype=torch.long)
        mask = torch.zeros(len(words), self.slots)
        for i, ws in enumerate(words):
            ids[i, :len(ws)] = torch.tensor([where[w] for w in ws], dtype=torch.long)
            mask[i, :len(ws)] = 1.0
        self.vocab = vocab
        self.register_buffer("vectors", vectors, persistent=False)
        self.register_buffer("ids", ids, persistent=False)  # (N, K)
        self.register_buffer("mask", mask, persistent=False)  # (N, K)
        self.scale = float(vectors.pow(2).sum(-1).mean())
        # tokens past the statement's words: pulled to the LM's mean input embedding, a neutral word's scale (left
        # alone they keep the projector's initial scale, tens of times a word's norm, and swamp the frozen LM)
        self.register_buffer("neutral", vlm.lm.get_input_embeddings().weight.detach().float().mean(0),
                             persistent=False)

    def forward(self, visual: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if visual.shape[1] < self.slots:
            raise ValueError(f"echo needs at least {self.slots} visual tokens (one per content word), the connector "
                             f"gives {visual.shape[1]}")
        index = index.to(self.ids.device)
        target = self.vectors[self.ids[index]].to(visual.device)  # (B, K, D)
        mask = self.mask[index].to(visual.device)
        err = (visual[:, :self.slots].float() - target).pow(2).sum(-1) / self.scale  # (B, K)
        loss = (err * mask).sum() / mask.sum().clamp(min=1.0)
        if self.hold_free and visual.shape[1] > self.slots:
            free = visual[:, self.slots:].float() - self.neutral.to(visual.device)
            loss = loss + free.pow(2).sum(-1).mean() / self.scale
        return loss

    @torch.no_grad()
    def read(self, visual: torch.Tensor) -> list[list[str]]:
        """The nearest statement word of each echo slot, per image: what the slots say, before any LM reads them."""
        dist = torch.cdist(visual[:, :self.slots].float(), self.vectors.to(visual.device)[None].expand(
            len(visual), -1, -1))
        return [[self.vocab[j] for j in row] for row in dist.argmin(-1).tolist()]


def swap_colors(caption: str) -> str | None:
    """The caption with its two color words exchanged, or None when it has not exactly two different colors."""
    found = list(re.finditer(rf"\b({'|'.join(COLORS)})\b", caption))
    if len(found) != 2 or found[0].group(1) == found[1].group(1):
        return None
    (a, b) = found
    swapped = caption[:a.start()] + b.group(1) + caption[a.end():b.start()] + a.group(1) + caption[b.end():]
    return _article_fix(swapped)


def _article_fix(text: str) -> str:
    """'a'/'an' before each word as English (and the scene captions) write it, so a twin differs only in binding."""
    return re.sub(r"\b(a|an) (\w)", lambda m: ("an " if m.group(2) in "aeiou" else "a ") + m.group(2), text)


COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "gray", "cyan")
SHAPES = ("circle", "square", "triangle", "star", "rectangle", "diamond", "hexagon", "cross", "heart", "ellipse")
POSITIONS = ("left", "right", "top", "bottom", "center", "middle", "above", "below")
SIZES = ("small", "large", "big", "tiny", "little", "huge", "medium")
COUNTS = ("one", "two", "three", "four", "single", "a pair")


def mentioned(text: str, words: Sequence[str]) -> list[str]:
    return [w for w in words if re.search(rf"\b{w}s?\b", text.lower())]


def attribute_hits(generated: str, meta: dict) -> dict[str, bool]:
    """Which stated attributes a generated caption gets right: the true value is mentioned and no rival value."""
    out = {}
    for attr, vocab in (("color", COLORS), ("shape", SHAPES), ("size", SIZES), ("position", POSITIONS),
                        ("count", COUNTS)):
        truth = meta.get(attr)
        if truth is None:
            continue
        said = mentioned(generated, vocab)
        out[attr] = str(truth).lower() in said and len(said) == 1
    return out


RELATIONS = ("left of", "right of", "above", "below")
_CANONICAL = {"left of": (False, "left of"), "right of": (True, "left of"), "above": (False, "above"),
              "below": (True, "above")}  # phrasing -> (objects reversed?, canonical relation), as data.scenes


def parse_relation(generated: str) -> tuple[list[str], list[str], str] | None:
    """A two-object caption's two colors, two shapes and canonical relation, the objects in canonical order (the
    converse phrasing "a blue square right of a red circle" reversed); None unless it names exactly two colors,
    two shapes and one relation word."""
    text = generated.lower()
    colors = re.findall(rf"\b({'|'.join(COLORS)})\b", text)
    shapes = [s for s, _ in re.findall(rf"\b({'|'.join(SHAPES)})(s?)\b", text)]
    said = re.findall(rf"\b({'|'.join(RELATIONS)})\b", text)
    if len(colors) != 2 or len(shapes) != 2 or len(said) != 1:
        return None
    reverse, relation = _CANONICAL[said[0]]
    return (colors[::-1], shapes[::-1], relation) if reverse else (colors, shapes, relation)


def relation_hits(generated: str, meta: dict) -> dict[str, bool]:
    """A two-object caption against the scene's canonical facts (meta color, shape, relation, color2, shape2):
    it must name two colors, two shapes and one relation word, in the order "C S REL C2 S2"; the converse phrasing
    ("a blue square right of a red circle") is put in canonical order first. color / shape: both objects' values
    right in their roles; relation: the relation word right with each named object where the true one is (matching
    it by color or by shape: "a purple diamond right of a blue triangle" for a diamond left of a triangle is wrong,
    whatever the colors); all: the whole fact; two_objects: it parsed."""
    parsed = parse_relation(generated)
    if parsed is None:
        return {"color": False, "shape": False, "relation": False, "all": False, "two_objects": False}
    colors, shapes, relation = parsed
    hits = {"color": colors == [meta["color"], meta["color2"]], "shape": shapes == [meta["shape"], meta["shape2"]],
            "relation": relation == meta["relation"] and all(
                c == meta[f"color{k}"] or sh == meta[f"shape{k}"] for c, sh, k in zip(colors, shapes, ("", "2")))}
    return {**hits, "all": all(hits.values()), "two_objects": True}


def names_one_object(generated: str) -> bool:
    """The caption names exactly one object: one shape noun, said once and not in the plural. The one-object scenes'
    captions never state a count ("a small red circle ..."), so this is the count check that fits them."""
    said = re.findall(rf"\b({'|'.join(SHAPES)})(s?)\b", generated.lower())
    return len(said) == 1 and said[0][1] == ""
