"""A user's own image-caption folder, drawn on the fly: one coloured shape per image, captions that repeat
("a red circle" on many images, as class-style data has), metadata columns naming each image's colour and shape."""
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 30)}
SHAPES = ("circle", "square")


def make_shape_folder(folder: Path, n: int, seed: int = 0, size: int = 96) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        img = Image.new("RGB", (size, size), (245, 245, 245))
        r = rng.randint(size // 5, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        box = (cx - r, cy - r, cx + r, cy + r)
        (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=COLORS[color])
        name = f"{i:04d}.png"
        img.save(folder / name)
        rows.append({"file_name": name, "text": f"a {color} {shape}", "color": color, "shape": shape})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder
