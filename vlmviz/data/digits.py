"""scikit-learn's 1797 handwritten digits (8 x 8, 16 gray levels), upscaled, with captions from templates."""
from __future__ import annotations

import random

import numpy as np
from PIL import Image

from .base import Sample

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten digit {name}", "the number {name}, written by hand", "a blurry handwritten {name}")


def load_digits_dataset(n: int | None = None, image_size: int = 224, seed: int = 0) -> list[Sample]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(seed)
    order = list(range(len(digits.images)))
    rng.shuffle(order)
    out = []
    for i in order[:n]:
        pixels = (16 - digits.images[i]) / 16 * 255  # dark ink on a light page
        img = Image.fromarray(pixels.astype(np.uint8)).resize((image_size, image_size), Image.BILINEAR).convert("RGB")
        label = int(digits.target[i])
        caption = rng.choice(TEMPLATES).format(name=NAMES[label])
        out.append(Sample(img, caption, {"label": label}, f"digit-{i}"))
    return out
