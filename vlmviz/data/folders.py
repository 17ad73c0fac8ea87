"""User data: a Hugging Face imagefolder (metadata.jsonl or metadata.csv with file_name and text) and COCO
captions JSON. Bad rows are reported with their line and the rest load; nothing is silently dropped."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ..images import ImageLoadError, load_image
from .base import LoadResult, Problem, Sample

TEXT_KEYS = ("text", "caption")


def _check_image(path: Path) -> str | None:
    if not path.is_file():
        return "image file not found"
    try:
        load_image(path)
    except ImageLoadError as err:
        return str(err).split(": ", 1)[-1]
    return None


def _rows(folder: Path):
    jsonl, csv_path = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.exists():
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield number, row if isinstance(row, dict) else None, None if isinstance(row, dict) else \
                    "expected a JSON object per line"
            except json.JSONDecodeError as err:
                yield number, None, f"not valid JSON ({err.msg})"
    elif csv_path.exists():
        with open(csv_path, newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.DictReader(f), start=2):  # line 1 is the header
                yield number, row, None
    else:
        raise ValueError(f"{folder}: no metadata.jsonl or metadata.csv; expected a Hugging Face imagefolder whose "
                         "metadata has one row per image with 'file_name' and 'text' (or 'caption')")


def load_imagefolder(folder: str | Path) -> LoadResult:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    result = LoadResult([])
    for number, row, error in _rows(folder):
        if error:
            result.problems.append(Problem(number, None, error))
            continue
        name, text = row.get("file_name"), next((row[k] for k in TEXT_KEYS if row.get(k)), "")
        if name is not None and not isinstance(name, str):
            result.problems.append(Problem(number, None, f"file_name must be a string, got {name!r}"))
            continue
        if not isinstance(text, str):
            result.problems.append(Problem(number, name, f"caption must be a string, got {type(text).__name__}"))
            continue
        name, text = (name or "").strip(), text.strip()
        if not name:
            result.problems.append(Problem(number, None, "no file_name"))
            continue
        if not text:
            result.problems.append(Problem(number, name, "empty caption"))
            continue
        bad = _check_image(folder / name)
        if bad:
            result.problems.append(Problem(number, name, bad))
            continue
        result.samples.append(Sample(folder / name, text, {k: v for k, v in row.items()
                                                            if k not in ("file_name", *TEXT_KEYS)}, name))
    return result


def load_coco_captions(json_path: str | Path, image_dir: str | Path | None = None) -> LoadResult:
    """COCO captions ({"images": [{id, file_name}], "annotations": [{image_id, caption}]}); one Sample per caption.
    Problems name the annotation's index in the annotations list (as 'line')."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{json_path.name}: not a readable COCO captions JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{json_path.name}: expected COCO captions JSON with 'images' and 'annotations' lists")
    if image_dir is None:
        image_dir = json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
    image_dir = Path(image_dir)
    files = {img.get("id"): img.get("file_name") for img in data["images"] if isinstance(img, dict)}
    checked: dict[str, str | None] = {}
    result = LoadResult([])
    for index, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        name = files.get(image_id)
        if name is None:
            result.problems.append(Problem(index, None, f"annotation refers to unknown image id {image_id!r}"))
            continue
        caption = ann.get("caption") or ""
        if not isinstance(caption, str):
            result.problems.append(Problem(index, name, f"caption must be a string, got {type(caption).__name__}"))
            continue
        caption = caption.strip()
        if not caption:
            result.problems.append(Problem(index, name, "empty caption"))
            continue
        if name not in checked:
            checked[name] = _check_image(image_dir / name)
        if checked[name]:
            result.problems.append(Problem(index, name, checked[name]))
            continue
        result.samples.append(Sample(image_dir / name, caption, {"image_id": image_id}, f"{name}#{index}"))
    return result
