"""The gallery: real, license-clear images from installed packages with captions written by us (assets/)."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from ..paths import ASSETS
from .base import Sample


@dataclass
class GalleryItem:
    name: str
    path: Path
    caption: str
    distractors: list[str]
    source: str
    license: str

    def sample(self) -> Sample:
        return Sample(self.path, self.caption, {"source": self.source, "license": self.license}, self.name)


@functools.cache
def load_gallery() -> list[GalleryItem]:
    items = []
    for line in (ASSETS / "gallery.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            items.append(GalleryItem(row["name"], ASSETS / row["file"], row["caption"], row["distractors"],
                                     row["source"], row["license"]))
    return items
