"""Whatever users upload becomes an upright RGB image or a clear ImageLoadError."""
import io

import numpy as np
import pytest
from PIL import Image

from vlmviz.images import ImageLoadError, load_image


def test_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (10, 6), (255, 0, 0, 0))  # fully transparent red -> white
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("L", (4, 4), 128)).getpixel((0, 0)) == (128, 128, 128)
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 255] * 256)
    assert load_image(pal).getpixel((0, 0)) == (0, 0, 255)
    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(sixteen)
    assert load_image(sixteen).getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped
    assert load_image(np.zeros((3, 5, 3), np.float32)).size == (5, 3)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_bad_files_say_what_was_expected(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("I am a text file posing as an image")
    with pytest.raises(ImageLoadError, match="not a readable image .*PNG, JPEG"):
        load_image(text)
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), (10, 20, 30)).save(buf, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageLoadError, match="damaged or truncated"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)  # 1-bit: a small file that decodes to 400 M pixels
    with pytest.raises(ImageLoadError, match="too large .*400000000 pixels"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(Image.new("L", (300, 300)), max_pixels=1000)
