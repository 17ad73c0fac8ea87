"""UI-agnostic facade: what the web app and the notebooks both call.

A `Pipeline` holds one frozen encoder, one frozen text space and one projector, and answers the questions the app
asks: how does this image rank these captions, which patches match a caption, which vocabulary words sit nearest
to each projected token, what shapes pass along the way. Shape legend: B images, N encoder tokens, M projector
tokens, T captions, D_vis encoder width, D_txt text width, h x w token grid.
"""
from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..encoders import load_vision_encoder, select_tokens, token_dim
from ..features import FeatureCache, image_hash
from ..images import load_image
from ..projectors import Projector, build_projector
from ..text import load_text_space
from ..tokens import pool_tokens

MAX_CAPTIONS = 10_000


def clean_captions(captions: Sequence[str] | str) -> list[str]:
    """Captions from a list or from text with one caption per line; blank lines are dropped."""
    if isinstance(captions, str):
        captions = captions.splitlines()
    if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"captions must be text (one caption per line) or a list of strings, got {captions!r:.80}")
    cleaned = [c.strip() for c in captions if c.strip()]
    if not cleaned:
        raise ValueError("no captions given; expected at least one non-empty caption (one per line)")
    if len(cleaned) > MAX_CAPTIONS:
        raise ValueError(f"{len(cleaned)} captions is too many; at most {MAX_CAPTIONS:,} at once")
    return cleaned


class _TokenLRU:
    """Encoder tokens of recently seen images, so re-ranking the same image with new captions skips the encoder."""

    def __init__(self, size: int = 64):
        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key, compute):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = compute()
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return value


_TOKENS = _TokenLRU()


POOLED_VIEWS = ("cls", "mean", "cls+mean", "mean+max", "cls+mean+max")  # one pooled token: no spatial grid


@dataclass
class Pipeline:
    encoder: object  # VisionEncoder
    text: object  # TextSpace
    projector: Projector
    tokens: str = "all"
    pooling: str = "mean"
    label: str = ""
    info: dict = field(default_factory=dict)  # checkpoint config, when it came from one

    @classmethod
    def build(cls, encoder: str = "vit-s14", text: str = "smollm2-135m", projector: str = "linear",
              tokens: str = "all", pooling: str = "mean", seed: int = 0, **options) -> "Pipeline":
        """Load the frozen sides (cached per process) and build an untrained projector between them."""
        enc, txt = load_vision_encoder(encoder), load_text_space(text)
        torch.manual_seed(seed)  # an untrained projector is still reproducible
        proj = build_projector(projector, token_dim(enc.hidden_size, tokens), txt.dim, **options)
        return cls(enc, txt, proj.eval(), tokens, pooling, f"untrained {projector}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, encoder: str | None = None, text: str | None = None) -> "Pipeline":
        """A trained or imported projector between the encoder and text space its checkpoint names (or the ones
        given); every dimension is checked and a mismatch says what was expected versus found."""
        from ..checkpoints import load_checkpoint, read_config

        config = read_config(path)
        encoder, text = encoder or config.get("encoder") or "vit-s14", text or config.get("text") or "smollm2-135m"
        tokens = config.get("tokens") or "all"
        enc, txt = load_vision_encoder(encoder), load_text_space(text)
        proj, config = load_checkpoint(path, token_dim(enc.hidden_size, tokens), txt.dim, encoder, text)
        return cls(enc, txt, proj, tokens, config.get("pooling") or "mean", Path(path).stem, config)

    @classmethod
    def from_vlm(cls, path: str | Path, image_size: int | None = None, text: str = "embed") -> "Pipeline":
        """A real VLM's own tower, connector and LM embedding table (vlmviz/vlms), composed as the model composes
        them: every token the tower hands the connector ("all"), the connector's tokens as the LM would get them.
        text="context": captions in the LM's contextual space (mean of its last hidden states) instead."""
        from ..vlms import open_vlm

        vlm = open_vlm(path, image_size=image_size, text=text)
        info = {"vlm": vlm.summary(), "source": vlm.source}
        return cls(vlm.encoder, vlm.text, vlm.projector, "all", "mean", f"{vlm.family}: {Path(str(path)).name}",
                   info)

    # ---- the forward path ---------------------------------------------------------------------------------
    def image_tokens(self, image) -> torch.Tensor:
        """Encoder tokens (1, N, D_vis) of one image, remembered for the next request about the same image."""
        img = load_image(image)
        key = (self.encoder.cache_id, image_hash(img))
        return _TOKENS.get(key, lambda: self.encoder.encode([img]))

    def project(self, vis_tokens: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (B, N, D_vis) -> projected tokens (B, M, D_txt)."""
        selected = select_tokens(vis_tokens, self.encoder.has_cls, self.tokens)  # (B, N', D_vis')
        device = next(self.projector.parameters(), selected).device
        with torch.no_grad():
            return self.projector(selected.float().to(device)).cpu()

    def embed_images(self, images: Sequence, progress=None) -> torch.Tensor:
        """Images -> pooled projected vectors (B, D_txt); token-level (pooling none) outputs are mean-pooled."""
        tokens = FeatureCache().tokens(self.encoder, list(images), progress=progress)  # (B, N, D_vis)
        return pool_tokens(self.project(tokens), self._vector_pooling)

    @property
    def _vector_pooling(self) -> str:
        return "mean" if self.pooling == "none" else self.pooling

    def rank_captions(self, image, captions: Sequence[str] | str, temperature: float = 0.07) -> list[dict]:
        """Captions sorted by cosine similarity with the image's pooled projected vector, with the softmax
        probability at `temperature` (CLIP learns about 0.01; 0.07 is its initialisation)."""
        captions = clean_captions(captions)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        img = pool_tokens(self.project(self.image_tokens(image)), self._vector_pooling)  # (1, D_txt)
        txt = self.text.encode(captions)  # (T, D_txt)
        sims = F.cosine_similarity(img, txt, dim=-1)  # (T,)
        probs = (sims / temperature).softmax(0)
        order = sims.argsort(descending=True).tolist()
        # captions the text space cannot tell apart (cosine > 0.999, e.g. word-order swaps in a bag of words)
        unit = F.normalize(txt.double(), dim=-1)
        same = (unit @ unit.T) > 1 - 1e-3  # (T, T)
        rank_of = {i: r for r, i in enumerate(order)}
        return [{"caption": captions[i], "cosine": float(sims[i]), "prob": float(probs[i]),
                 "collides_with": sorted(rank_of[j] + 1 for j in same[i].nonzero().flatten().tolist() if j != i)}
                for i in order]

    # ---- looking inside -----------------------------------------------------------------------------------
    def output_grid(self, num_selected: int) -> tuple[int, int, int] | None:
        """(h, w, offset) when projected tokens keep a spatial grid (offset 1 skips a CLS token); None for
        learned-query connectors, whose outputs are not tied to places."""
        if hasattr(self.projector, "queries") or self.tokens in POOLED_VIEWS:
            return None
        m = self.projector.num_output_tokens(num_selected)
        for offset in (0, 1):
            side = math.isqrt(m - offset)
            if m - offset > 0 and side * side == m - offset:
                return side, side, offset
        return None

    def patch_similarity(self, image, caption: str) -> tuple[np.ndarray | None, str]:
        """Cosine of each projected token with the caption on the token grid (h, w), and a note for the UI."""
        caption = clean_captions([caption])[0]
        vis = self.image_tokens(image)
        selected = select_tokens(vis, self.encoder.has_cls, self.tokens)
        projected = self.project(vis)[0]  # (M, D_txt)
        txt = self.text.encode([caption])  # (1, D_txt)
        sims = F.cosine_similarity(projected, txt, dim=-1)  # (M,)
        grid = self.output_grid(selected.shape[1])
        if grid is not None:
            h, w, offset = grid
            return sims[offset:].reshape(h, w).numpy(), f"cosine of each of the {h}x{w} projected patch tokens"
        weights = getattr(self.projector, "attn_weights", None)  # (1, Q, N) of the resampler's last forward
        n = selected.shape[1]
        side = math.isqrt(n - int(self.encoder.has_cls and self.tokens == "all"))
        if weights is not None and side * side in (n, n - 1):
            q = int(sims.argmax())
            attn = weights[0, q, n - side * side:]  # skip CLS if present
            return attn.reshape(side, side).numpy(), (f"no patch grid after a resampler: attention of query {q}, the "
                                                     "query closest to the caption, over the patches")
        if self.tokens in POOLED_VIEWS or self.tokens.startswith("cls+"):
            return None, (f"this connector reads '{self.tokens}': pooled vectors, not one token per patch, so there is "
                          "no patch map to draw. A connector trained on 'patch' or 'all' tokens (linear, mlp2x_gelu, "
                          "pixel_shuffle) draws one")
        return None, (f"{self.projector.family} mixes the patches into learned queries: its outputs are not tied to "
                      "places, so there is no patch map to draw")

    def nearest_words(self, image, k: int = 3, lens: str = "embedding",
                      layer: int = 0) -> tuple[list[list[str]], str]:
        """What each projected token reads as through a lens (vlmviz.lenses: 'embedding', nearest vocabulary words;
        'logit', the LM's next-token top-k at `layer`; 'contextual', nearest corpus words in context at `layer`),
        laid out on the grid when there is one: rows of cells, each cell 'word1 / word2 / ...'."""
        if lens == "embedding" and not getattr(self.text, "has_vocab", False):
            raise ValueError(f"text space {self.text.name} has no vocabulary to read tokens against")
        vis = self.image_tokens(image)
        n = select_tokens(vis, self.encoder.has_cls, self.tokens).shape[1]
        projected = self.project(vis)[0]  # (M, D_txt)
        if lens == "embedding":
            rows = self.text.nearest_tokens(projected, k)
            words = [" / ".join(w.strip() or repr(w) for w, _ in near) for near in rows]
        else:
            from ..lenses import lens_for

            words = [" / ".join(row) for row in lens_for(self.text, lens, layer).read(projected, k)]
        through = f"; {lens} lens at layer {layer}" if lens != "embedding" else ""  # the default note unchanged
        grid = self.output_grid(n)
        if grid is None:
            return [[f"#{i}: {w}"] for i, w in enumerate(words)], f"{len(words)} projected tokens (no grid){through}"
        h, w, offset = grid
        cells = words[offset:]
        rows = [cells[r * w:(r + 1) * w] for r in range(h)]
        note = f"{h}x{w} grid of projected tokens" + (f"; CLS token: {words[0]}" if offset else "") + through
        return rows, note

    def describe(self) -> dict:
        """Shapes along the way, for the UI's 'what happened' panel."""
        n = self.encoder.num_tokens
        selected = {"all": n, "patch": n - int(self.encoder.has_cls)}.get(self.tokens, 1)
        m = self.projector.num_output_tokens(selected)
        d_in = token_dim(self.encoder.hidden_size, self.tokens)
        return {
            "encoder": self.encoder.name,
            "encoder_tokens": [n, self.encoder.hidden_size],
            "token_selection": self.tokens,
            "selected_tokens": [selected, d_in],
            "projector": self.label or self.projector.family,
            "projector_params": self.projector.num_params,
            "projected_tokens": [m, self.text.dim],
            "pooling": self.pooling,
            "text_space": self.text.name,
            "output_tokens": m,
        }


_PIPELINES: "OrderedDict[tuple, Pipeline]" = OrderedDict()
_PIPELINES_LOCK = threading.Lock()


def get_pipeline(encoder: str = "vit-s14", text: str = "smollm2-135m", projector: str = "linear",
                 tokens: str = "all", pooling: str = "mean", seed: int = 0) -> Pipeline:
    """A shared, cached pipeline per choice of untrained projector; frozen models are loaded once per process."""
    key = (encoder, text, projector, tokens, pooling, seed)
    with _PIPELINES_LOCK:
        if key not in _PIPELINES:
            _PIPELINES[key] = Pipeline.build(encoder, text, projector, tokens, pooling, seed)
            while len(_PIPELINES) > 32:
                _PIPELINES.popitem(last=False)
        return _PIPELINES[key]


def warm_up_in_background(encoder: str = "vit-s14", text: str = "smollm2-135m") -> threading.Thread:
    """Load the default models in a thread so the app serves at once and the first request is fast."""

    def work():
        try:
            get_pipeline(encoder, text)
        except Exception as err:  # noqa: BLE001 - a failed warm-up must not kill the app; requests will report it
            print(f"[vlmviz] warm-up failed: {err}")

    thread = threading.Thread(target=work, name="vlmviz-warmup", daemon=True)
    thread.start()
    return thread


# pooled vectors, caption vectors and metrics of recent maps, per projector object (weakly held: a pipeline
# evicted from the cache takes its entries with it, and a later projector can never inherit them)
_MAPPED: "weakref.WeakKeyDictionary[Projector, OrderedDict]" = weakref.WeakKeyDictionary()


@dataclass
class MapResult:
    frame: "object"  # pandas DataFrame: x, y, kind, pair, caption
    metrics: dict  # alignment_report on the pooled vectors, with N and k
    thumbnails: list  # PIL images of the image points, in frame order
    note: str


def build_map(pipeline: Pipeline, samples: Sequence, method: str = "pca", per_token: bool = False,
              max_tokens_per_image: int = 16, progress=None, cache: FeatureCache | None = None) -> MapResult:
    """Projected visual vectors next to caption vectors in one 2-D map (both unit-normalised first, so the modality
    gap shows as distance), plus the metrics of the pooled pairs. per_token=True plots up to
    `max_tokens_per_image` projected tokens per image instead of one pooled point."""
    import pandas as pd

    from ..eval.metrics import alignment_report
    from .reduce import reduce_2d

    if len(samples) < 3:
        raise ValueError(f"a map needs at least 3 image-caption pairs, got {len(samples)}")
    images = [s.load() for s in samples]
    captions = [s.caption for s in samples]
    keys = [image_hash(im) for im in images]
    memo = _MAPPED.setdefault(pipeline.projector, OrderedDict())
    key = (pipeline.encoder.cache_id, pipeline.tokens, pipeline._vector_pooling, pipeline.text.cache_id,
           tuple(keys), tuple(captions))
    if key in memo and not per_token:  # the same pairs through the same connector: only reduce and draw
        memo.move_to_end(key)
        projected, (pooled, txt, metrics) = None, memo[key]
    else:
        # through the disk cache: a second map (or Compare, or training) of the same images skips the encoder
        vis = (cache or FeatureCache()).tokens(pipeline.encoder, images, progress=progress, keys=keys)
        projected = pipeline.project(vis)  # (B, M, D_txt)
        pooled = pool_tokens(projected, pipeline._vector_pooling)  # (B, D_txt)
        txt = pipeline.text.encode(captions)  # (B, D_txt)
        metrics = alignment_report(pooled, txt, k=10)
        # per-token maps need every projected token, too large to keep; the pooled side is small
        memo[key] = (pooled, txt, metrics)
        while len(memo) > 4:
            memo.popitem(last=False)
    if per_token:
        m = projected.shape[1]
        pick = torch.linspace(0, m - 1, min(m, max_tokens_per_image)).round().long()
        points = projected[:, pick].reshape(-1, projected.shape[-1])  # (B * m', D_txt)
        pairs = np.repeat(np.arange(len(samples)), len(pick))
    else:
        points, pairs = pooled, np.arange(len(samples))
    xy = reduce_2d(torch.cat([F.normalize(points, dim=-1), F.normalize(txt, dim=-1)]).numpy(), method)
    n_img = len(points)
    frame = pd.DataFrame({
        "x": xy[:, 0], "y": xy[:, 1],
        "kind": ["image"] * n_img + ["caption"] * len(captions),
        "pair": np.concatenate([pairs, np.arange(len(captions))]),
        "caption": [captions[p] for p in pairs] + captions,
    })
    note = (f"{method.upper()} of {n_img} projected {'tokens' if per_token else 'images'} and {len(captions)} "
            f"captions in {pipeline.text.name}; metrics on N={metrics['N']} pooled pairs, k={metrics['k']}")
    thumbs = [images[p] for p in pairs] if not per_token else images
    return MapResult(frame, metrics, thumbs, note)


def sample_for_inspect(samples: Sequence, index: int, n_captions: int = 6) -> tuple[str, list[str]]:
    """One map sample as Inspect takes it: an image file (the sample's own file, or a PNG of a generated image in
    the system temp folder, where the web app may hand files out) and candidate captions with the true one first,
    then its attribute-swapped twin (scenes), the gallery's written distractors (photos) or other captions of the
    same map."""
    import tempfile

    from ..data import load_gallery

    if not 0 <= index < len(samples):
        raise ValueError(f"sample #{index} is not on this map; it has #0 to #{len(samples) - 1}")
    sample = samples[index]
    if isinstance(sample.image, (str, Path)):
        path = str(sample.image)
    else:
        image = sample.load()
        folder = Path(tempfile.gettempdir()) / "vlmviz-map-samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = str(folder / f"{image_hash(image)[:20]}.png")
        if not Path(path).exists():
            from ..checkpoints import atomic_write

            atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))
    written = next((g.distractors for g in load_gallery() if g.name == sample.id and g.caption == sample.caption), [])
    others = [samples[(index + k) % len(samples)].caption for k in range(1, len(samples))]
    captions = []
    for c in [sample.caption, sample.meta.get("swapped"), *written, *others]:
        if c and c not in captions:
            captions.append(c)
    return path, captions[:n_captions]


def get_checkpoint_pipeline(path: str | Path) -> Pipeline:
    """A pipeline around a saved checkpoint, cached by path and modification time."""
    path = Path(path)
    return _cached(("checkpoint", str(path), path.stat().st_mtime_ns), lambda: Pipeline.from_checkpoint(path))


def _cached(key: tuple, build) -> Pipeline:
    """_PIPELINES[key], built outside the lock on a miss (loading weights must not block other requests)."""
    with _PIPELINES_LOCK:
        if key in _PIPELINES:
            return _PIPELINES[key]
    pipe = build()
    with _PIPELINES_LOCK:
        _PIPELINES[key] = pipe
        while len(_PIPELINES) > 32:
            _PIPELINES.popitem(last=False)
    return pipe


VLM_PREFIX = "vlm: "  # the app's connector choice for a real VLM: 'vlm: <folder or hub id>'
# the same VLM with captions read in its LM's contextual space (Pipeline.from_vlm(text="context"))
VLM_CONTEXT_PREFIX = "vlm (contextual text): "


def vlm_source(choice) -> tuple[str, str] | None:
    """(source, text mode) of a VLM connector choice, None for any other choice."""
    if not isinstance(choice, str):
        return None
    for prefix, text in ((VLM_PREFIX, "embed"), (VLM_CONTEXT_PREFIX, "context")):
        if choice.startswith(prefix):
            return choice.removeprefix(prefix), text
    return None


def get_vlm_pipeline(source: str, text: str = "embed") -> Pipeline:
    """A real VLM's pipeline (Pipeline.from_vlm), cached by its folder or hub id and text mode; the model itself is
    loaded once per process and mode (vlmviz.vlms.open_vlm)."""
    return _cached(("vlm", str(source), text), lambda: Pipeline.from_vlm(source, text=text))


def resolve_pipeline(choice: str, checkpoints: dict, encoder: str, text: str, tokens: str) -> Pipeline:
    """The app's projector choice: 'untrained <family>', a built-in connector (vlmviz.builtins.BUILT_IN, which
    brings its own encoder and text space), the label of one of this session's checkpoints, or 'vlm: <source>'
    (a real VLM's own tower, connector and LM table; encoder, text and tokens are then the VLM's)."""
    if choice in checkpoints:
        return get_checkpoint_pipeline(checkpoints[choice])
    if vlm := vlm_source(choice):
        return get_vlm_pipeline(*vlm)
    from ..builtins import BUILT_IN, built_in_checkpoint  # lazily: the builders make their pipelines with this module

    if choice in BUILT_IN:
        return get_checkpoint_pipeline(built_in_checkpoint(choice))
    family = choice.removeprefix("untrained ").strip()
    return get_pipeline(encoder, text, family, tokens)
