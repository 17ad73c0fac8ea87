"""Turn whatever a user hands us into a clean RGB PIL image, or a clear error.

Uploads arrive as paths, bytes, numpy arrays or PIL images, in modes PIL keeps as they are (L, LA, P, RGBA,
I;16, CMYK) and with EXIF orientation flags that cameras set instead of rotating pixels. Encoders want RGB
pixels the right way up. A file that is not an image, a truncated JPEG or a 20000 x 20000 decompression bomb
must become an `ImageLoadError` naming what was expected, never a crash of the app.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # ~7000 x 7000; far above any encoder's input, far below a decompression bomb
ImageLike = Union[str, Path, bytes, np.ndarray, Image.Image]


class ImageLoadError(ValueError):
    """An input could not be read as an image; the message says what was expected."""


def _open(src: ImageLike, name: str) -> Image.Image:
    if src is None or not isinstance(src, (Image.Image, np.ndarray, bytes, bytearray, str, Path)):
        raise ImageLoadError(f"{name}: got {type(src).__name__}; expected an image: a file path, PIL image, numpy "
                             "array or encoded bytes")
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return Image.fromarray(_array_to_uint8(src))
    if isinstance(src, (bytes, bytearray)):
        return Image.open(io.BytesIO(src))
    path = Path(src)
    if not path.is_file():
        raise ImageLoadError(f"{name}: no such file (expected an image file such as PNG or JPEG)")
    return Image.open(path)


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ImageLoadError("image array contains NaN or infinity; expected finite pixel values")
    hi = 1.0 if arr.max(initial=0) <= 1.0 else (255.0 if arr.max() <= 255 else 65535.0)
    return np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float grayscale: PIL's convert("RGB") clips instead of scaling, so scale by hand
        return Image.fromarray(_array_to_uint8(np.asarray(img))).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # transparent regions become white, as a browser would show them on a page
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(src: ImageLike, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Return an upright RGB image; raise ImageLoadError with a readable reason otherwise."""
    name = name or (str(src) if isinstance(src, (str, Path)) else "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(src, name)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageLoadError(
                    f"{name}: {w} x {h} pixels is too large (at most {max_pixels:,} pixels); "
                    "downscale it before uploading"
                )
            if w == 0 or h == 0:
                raise ImageLoadError(f"{name}: image has zero size ({w} x {h})")
            img.load()  # decode now so a truncated file fails here, not inside the encoder
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{name}: image is too large to decode safely ({err})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"{name}: not a readable image (expected PNG, JPEG, WebP, BMP, GIF or TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}: image file is damaged or truncated ({err})") from None
