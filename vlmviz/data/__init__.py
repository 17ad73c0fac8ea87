"""Datasets of image-caption pairs: the captioned gallery, synthetic scenes, digits, and the user's own folders.

    from vlmviz.data import load_dataset
    result = load_dataset("scenes-1obj", n=100)        # or "gallery", "digits", a folder, a COCO .json
    result.samples, result.problems
"""
from __future__ import annotations

from pathlib import Path

from .base import LoadResult, Problem, Sample
from .digits import load_digits_dataset
from .folders import load_coco_captions, load_imagefolder
from .gallery import GalleryItem, load_gallery
from .scenes import make_scenes, scene_split

__all__ = ["Sample", "LoadResult", "Problem", "GalleryItem", "load_gallery", "make_scenes", "scene_split",
           "load_digits_dataset", "load_imagefolder", "load_coco_captions", "load_dataset", "list_datasets"]

# synthetic scene sets: name -> scene_split / make_scenes keywords
SCENES = {"scenes-1obj": {"objects": 1}, "scenes-2obj": {"objects": 2}, "scenes-3obj": {"objects": 3},
          "scenes-count": {"objects": 1, "counts": True},
          "scenes-2obj-rel": {"objects": 2, "holdout": "relation"},
          "scenes-3obj-rel": {"objects": 3, "holdout": "relation"}}
DATASETS = ("gallery", *SCENES, "digits")


def list_datasets() -> list[str]:
    return list(DATASETS)


def load_dataset(name_or_path: str, n: int | None = None, seed: int = 0) -> LoadResult:
    """A bundled dataset by name, an imagefolder by path, or a COCO captions .json."""
    if name_or_path == "gallery":
        return LoadResult([item.sample() for item in load_gallery()][:n])
    if name_or_path in SCENES:
        kw = {k: v for k, v in SCENES[name_or_path].items() if k != "holdout"}
        return LoadResult(make_scenes(n or 200, seed=seed, **kw))
    if name_or_path == "digits":
        return LoadResult(load_digits_dataset(n or 200, seed=seed))
    path = Path(name_or_path)
    if path.suffix.lower() == ".json" and path.is_file():
        result = load_coco_captions(path)
    elif path.is_dir():
        result = load_imagefolder(path)
    else:
        raise ValueError(f"unknown dataset {name_or_path!r}: expected one of {', '.join(DATASETS)}, a folder with "
                         "metadata.jsonl / metadata.csv, or a COCO captions .json file")
    result.samples = result.samples[:n]
    return result
