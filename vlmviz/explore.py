"""UI-agnostic facade: what the web app and the notebooks both call.

A `Pipeline` holds one frozen encoder, one frozen text space and one projector, and answers the questions the
app asks: how does this image rank these captions, which patches match a caption, which vocabulary words sit
nearest to each projected token. Shape legend: B images, N encoder tokens, M projector tokens, T captions,
D_vis encoder width, D_txt text width.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .encoders import load_vision_encoder, select_tokens, token_dim
from .images import load_image
from .projectors import Projector, build_projector
from .text import load_text_space
from .tokens import pool_tokens

MAX_CAPTIONS = 10_000


def clean_captions(captions: Sequence[str] | str) -> list[str]:
    """Captions from a list or from text with one caption per line; blank lines are dropped."""
    if isinstance(captions, str):
        captions = captions.splitlines()
    cleaned = [c.strip() for c in captions if c and c.strip()]
    if not cleaned:
        raise ValueError("no captions given; expected at least one non-empty caption (one per line)")
    if len(cleaned) > MAX_CAPTIONS:
        raise ValueError(f"{len(cleaned)} captions is too many; at most {MAX_CAPTIONS:,} at once")
    return cleaned


@dataclass
class Pipeline:
    encoder: object  # VisionEncoder
    text: object  # TextSpace
    projector: Projector
    tokens: str = "all"
    pooling: str = "mean"

    @classmethod
    def build(cls, encoder: str = "vit-s14", text: str = "smollm2-135m", projector: str = "linear",
              tokens: str = "all", pooling: str = "mean", seed: int = 0, **options) -> "Pipeline":
        """Load the frozen sides (cached per process) and build an untrained projector between them."""
        enc, txt = load_vision_encoder(encoder), load_text_space(text)
        torch.manual_seed(seed)  # an untrained projector is still reproducible
        proj = build_projector(projector, token_dim(enc.hidden_size, tokens), txt.dim, **options)
        return cls(enc, txt, proj.eval(), tokens, pooling)

    def project(self, vis_tokens: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (B, N, D_vis) -> projected tokens (B, M, D_txt)."""
        selected = select_tokens(vis_tokens, self.encoder.has_cls, self.tokens)  # (B, N', D_vis')
        with torch.no_grad():
            return self.projector(selected.to(next(self.projector.parameters(), selected).dtype))

    def embed_images(self, images: Sequence, progress=None) -> torch.Tensor:
        """Images -> pooled projected vectors (B, D_txt), or token sets (B, M, D_txt) when pooling is none."""
        return pool_tokens(self.project(self.encoder.encode(list(images), progress=progress)), self.pooling)

    def rank_captions(self, image, captions: Sequence[str] | str, temperature: float = 0.07) -> list[dict]:
        """Captions sorted by cosine similarity with the image's pooled projected vector, with the softmax
        probability at `temperature` (CLIP's learned value is about 0.01; 0.07 is its initialisation)."""
        captions = clean_captions(captions)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        img = pool_tokens(self.project(self.encoder.encode([load_image(image)])), "mean" if self.pooling == "none"
                          else self.pooling)  # (1, D_txt)
        sims = F.cosine_similarity(img, self.text.encode(captions), dim=-1)  # (T,)
        probs = (sims / temperature).softmax(0)
        order = sims.argsort(descending=True).tolist()
        return [{"caption": captions[i], "cosine": float(sims[i]), "prob": float(probs[i])} for i in order]

    def describe(self) -> dict:
        """Shapes along the way, for the UI's 'what happened' panel."""
        n = self.encoder.num_tokens
        selected = {"all": n, "patch": n - int(self.encoder.has_cls)}.get(self.tokens, 1)
        m = self.projector.num_output_tokens(selected)
        d_in = token_dim(self.encoder.hidden_size, self.tokens)
        return {
            "encoder_tokens": f"({n}, {self.encoder.hidden_size})",
            "selected_tokens": f"({selected}, {d_in})",
            "projected_tokens": f"({m}, {self.text.dim})",
            "pooled": f"({self.text.dim},)" if self.pooling != "none" else f"({m}, {self.text.dim})",
            "projector": self.projector.family,
            "projector_params": self.projector.num_params,
            "output_tokens": m,
        }


_PIPELINES: dict[tuple, Pipeline] = {}
_PIPELINES_LOCK = threading.Lock()


def get_pipeline(encoder: str = "vit-s14", text: str = "smollm2-135m", projector: str = "linear",
                 tokens: str = "all", pooling: str = "mean", seed: int = 0) -> Pipeline:
    """A shared, cached pipeline per choice; the frozen models behind it are loaded once per process."""
    key = (encoder, text, projector, tokens, pooling, seed)
    with _PIPELINES_LOCK:
        if key not in _PIPELINES:
            _PIPELINES[key] = Pipeline.build(encoder, text, projector, tokens, pooling, seed)
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
