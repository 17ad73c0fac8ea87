"""Regenerate assets/gallery/*.jpg from images that ship inside installed packages (no network).

    .venv/bin/python scripts/make_gallery.py

Captions, distractors and licenses live in assets/gallery.jsonl (written by hand, by looking at each image);
this script only (re)writes the pixels, longest side 384 px, JPEG quality 90.
"""
from pathlib import Path

import numpy as np
import skimage.data as sk
from PIL import Image
from sklearn.datasets import load_sample_images

OUT = Path(__file__).resolve().parent.parent / "assets" / "gallery"
SKIMAGE = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "horse", "hubble_deep_field",
           "immunohistochemistry", "clock", "retina", "brick"]


def save(name: str, array: np.ndarray) -> None:
    if array.dtype == bool:
        array = np.where(array, 0, 255).astype(np.uint8)  # skimage's horse: True is the silhouette
    img = Image.fromarray(array).convert("RGB")
    img.thumbnail((384, 384), Image.LANCZOS)
    img.save(OUT / f"{name}.jpg", quality=90)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE:
        save(name, getattr(sk, name)())
    images = load_sample_images()
    for path, array in zip(images.filenames, images.images):
        save(Path(path).stem, array)
    print(f"wrote {len(list(OUT.glob('*.jpg')))} images to {OUT}")


if __name__ == "__main__":
    main()
