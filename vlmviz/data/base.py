"""Image-caption pairs and the report of rows that could not be used."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..images import load_image


@dataclass
class Sample:
    """One image-caption pair; `image` is a PIL image or a path loaded on demand."""

    image: Image.Image | Path
    caption: str
    meta: dict = field(default_factory=dict)
    id: str = ""

    def load(self) -> Image.Image:
        return self.image if isinstance(self.image, Image.Image) else load_image(self.image)


@dataclass
class Problem:
    line: int | None
    file: str | None
    message: str

    def __str__(self) -> str:
        where = " ".join(p for p in (f"line {self.line}" if self.line is not None else "",
                                     f"({self.file})" if self.file else "") if p)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class LoadResult:
    samples: list[Sample]
    problems: list[Problem] = field(default_factory=list)
