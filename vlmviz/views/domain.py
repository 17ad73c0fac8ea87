"""Says, in one sentence, whether a connector's ranking means anything on the image it is shown.

A connector learns one kind of image: the built-in scenes connector ranks a photo of an astronaut as "a red car"
with 87 % confidence, and nothing on the screen said it never saw a photo (issue 14). `domain_note` reads what the
checkpoint recorded (its `domain`, or the dataset it trained on) and compares it with where the image came from.
No model is loaded, so the app can call it on every ranking.

    domain_note(scenes_pipe, "photo")  # "this connector was trained on synthetic shapes; on a photo its ranking ..."
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

# where the app's image came from -> how a sentence names it
SOURCES = {"photo": "a photo", "scene": "a synthetic scene", "digit": "a digit", "upload": "your own image"}
# what a connector was trained on -> (how to say it, the image source it fits); the photo connector was never
# trained on image-caption pairs (vlmviz.runs.concepts), so it is "made for" photos
DOMAINS = {"photos": ("made for natural photos (ImageNet's 1000 concepts)", "photo"),
           "scenes": ("trained on synthetic shapes", "scene"),
           "digits": ("trained on 8x8 handwritten digits", "digit")}


def _config(pipeline_or_config) -> dict | None:
    """The checkpoint config of a Pipeline, a config dict as is, None for an untrained projector."""
    if pipeline_or_config is None or isinstance(pipeline_or_config, dict):
        return pipeline_or_config or None
    return getattr(pipeline_or_config, "info", None) or None


def connector_domain(config: dict | None) -> str | None:
    """'photos', 'scenes', 'digits', another dataset's name (a user folder), or None when it is not recorded."""
    if not config:
        return None
    if config.get("domain"):
        return config["domain"]
    dataset = str(config.get("dataset") or (config.get("split") or {}).get("dataset") or "")
    if dataset.startswith("scenes"):
        return "scenes"
    if dataset == "gallery":
        return "photos"
    return dataset or None


def held_out_figure(config: dict) -> str:
    """The held-out figure the checkpoint recorded, for the sentence that says a connector fits."""
    metrics = config.get("metrics") or {}
    if "i2t_R@1" in metrics:
        return f" (held-out R@1 {metrics['i2t_R@1']:.2f} against {metrics.get('candidates', '?')} captions)"
    if "all4" in metrics:  # a captioner (caption_builtin.py): what its greedy captions get right
        return (f" (held-out scenes: color, shape, size and position all right in {metrics['all4']:.0%} of its "
                f"captions)")
    if "gallery_top1" in metrics:
        return f" (true caption first for {metrics['gallery_top1']} of {metrics['gallery_photos']} gallery photos)"
    return ""


def domain_note(pipeline_or_config, image_source: str = "upload") -> str:
    """A short sentence for beside the ranking. image_source: 'photo' (the gallery), 'scene' (the scenes gallery),
    'digit', or 'upload' (anything else: we cannot tell what it shows)."""
    if image_source not in SOURCES:
        raise ValueError(f"image_source must be one of {', '.join(SOURCES)}; got {image_source!r}")
    config = _config(pipeline_or_config)
    if config is None:
        return "untrained connector: its rankings are chance (a random map); pick a built-in or trained one"
    domain = connector_domain(config)
    if domain is None:
        return "what this connector was trained on is not recorded: read its ranking with care"
    said, fits = DOMAINS.get(domain, (f"trained on '{Path(domain).name}'", None))  # a folder: its name, not a path
    image = SOURCES[image_source]
    if image_source == fits:
        return f"{said}, and this is {image} of that kind{held_out_figure(config)}"
    if image_source == "upload":
        return f"{said}: its ranking means something only if your image is of that kind"
    return f"this connector was {said}; on {image} its ranking means little"


def _digest(path) -> str | None:
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except (OSError, TypeError):
        return None


@functools.lru_cache(maxsize=1)
def _known() -> dict[str, str]:
    """sha1 of each gallery photo and scenes-gallery image -> its source. By content, not by path, because the
    web app hands handlers a copy of the file in its own temp folder."""
    from ..data import load_gallery
    from ..runs.scene_connector import scenes_gallery

    known = {_digest(item.path): "photo" for item in load_gallery()}
    known.update({_digest(item.path): "scene" for item in scenes_gallery()})
    return known


def remember_source(path, source: str) -> None:
    """Another image of a known kind (a scene sent from the Map tab): its notes then say so, as for the galleries."""
    if source not in SOURCES:
        raise ValueError(f"image source must be one of {', '.join(SOURCES)}; got {source!r}")
    digest = _digest(path)
    if digest is not None:
        _known()[digest] = source


def image_source(image) -> str:
    """'photo' for a gallery photo, 'scene' for a scenes-gallery image, 'upload' for anything else. `image`: a path,
    or the web app's file data (a dict with a 'path'); an image object's kind cannot be told: 'upload'."""
    if isinstance(image, dict):
        image = image.get("path")
    if not isinstance(image, (str, Path)):
        return "upload"
    return _known().get(_digest(image), "upload")


def choice_note(choice: str, checkpoints: dict, image) -> str:
    """domain_note for the app's Connector choice (one of the session's checkpoints, a built-in, or 'untrained
    <family>') and the image it ranked; reads only checkpoint headers."""
    from ..builtins import BUILT_IN, built_in_checkpoint
    from ..checkpoints import read_config

    from .pipeline import vlm_source

    if vlm := vlm_source(choice):
        if vlm[1] == "context":
            return ("a real VLM's own connector, read against its LM's contextual space: a caption is the mean of the "
                    "LM's last hidden states over it (word order counts), the projected image tokens are not run "
                    "through the LM")
        return ("a real VLM's own connector, read against its LM's input-embedding table: a caption is the mean of "
                "its tokens' rows there, a bag of words, not what the VLM's LM would make of it")
    path = checkpoints.get(choice) or (built_in_checkpoint(choice) if choice in BUILT_IN else None)
    return domain_note(read_config(path) if path else None, image_source(image))
