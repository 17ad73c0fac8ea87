"""Feature cache: a second run makes no encoder calls; changes invalidate only their own entries; damage heals."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmviz.features import FeatureCache


class CountingEncoder:
    """A deterministic stand-in encoder: tokens are the mean colour of 4 image quadrants, scaled."""

    def __init__(self, cache_id="fake@1"):
        self.cache_id, self.images_encoded = cache_id, 0

    def encode(self, images, batch_size=32, progress=None):
        self.images_encoded += len(images)
        out = []
        for im in images:
            a = np.asarray(im.resize((8, 8)), dtype=np.float32) / 255.0
            quads = [a[:4, :4], a[:4, 4:], a[4:, :4], a[4:, 4:]]
            out.append(torch.tensor(np.stack([q.mean((0, 1)) for q in quads])) * (2 if "2" in self.cache_id else 1))
        return torch.stack(out)  # (B, 4, 3)


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    return paths


def test_second_run_makes_no_encoder_calls(tmp_path, images):
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache")
    first = cache.tokens(enc, images, batch_size=2)
    assert cache.encoder_calls == 3 and enc.images_encoded == 5
    again = FeatureCache(tmp_path / "cache").tokens(enc, images)  # a new process would see the same
    assert enc.images_encoded == 5
    assert torch.allclose(first, again) and first.shape == (5, 4, 3)


def test_changes_invalidate_only_their_own_entries(tmp_path, images):
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache")
    cache.tokens(enc, images)
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(images[0])  # edit one image
    out = cache.tokens(enc, images)
    assert enc.images_encoded == 6  # only the edited one
    assert torch.allclose(out[0], torch.ones(4, 3), atol=1e-3)
    other = CountingEncoder("fake@2")  # another encoder: its own entries
    cache.tokens(other, images)
    assert other.images_encoded == 5 and enc.images_encoded == 6


def test_damaged_shard_or_manifest_heals(tmp_path, images):
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache")
    ref = cache.tokens(enc, images)
    folder = tmp_path / "cache" / "fake@1"
    shard = json.loads((folder / "manifest.json").read_text()).popitem()[1][0]
    (folder / shard).write_bytes(b"half-written")
    assert torch.allclose(cache.tokens(enc, images), ref)
    assert enc.images_encoded == 10  # the shard held all five; all re-encoded, none poisoned
    (folder / "manifest.json").write_text("{not json")
    assert torch.allclose(cache.tokens(enc, images), ref)
    assert not list(folder.glob("*.tmp"))


def test_pil_images_and_duplicates(tmp_path):
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path)
    im = Image.new("RGB", (16, 16), (10, 200, 30))
    out = cache.tokens(enc, [im, im.copy(), Image.new("RGB", (16, 16), (0, 0, 0))])
    assert out.shape == (3, 4, 3) and torch.equal(out[0], out[1])
    assert cache.hits == 0 and cache.misses == 3
    cache.tokens(enc, [im])
    assert cache.hits == 1


def test_two_writers_keep_each_others_entries(tmp_path, images):
    """A writer that read the manifest before another one wrote must merge, not overwrite (the app re-encoded
    every run when a Map or a CLI run wrote the same folder meanwhile)."""
    enc = CountingEncoder()
    root = tmp_path / "cache"
    other = FeatureCache(root)

    def meanwhile(done, total):  # after the first writer's first shard, a second writer caches two more images
        if done == 2 and not other.misses:
            other.tokens(enc, images[3:])

    FeatureCache(root).tokens(enc, images[:3], batch_size=2, progress=meanwhile)
    encoded = enc.images_encoded
    fresh = FeatureCache(root)
    fresh.tokens(enc, images)
    assert fresh.misses == 0 and enc.images_encoded == encoded


def test_cache_is_bounded_and_evicts_least_recently_used(tmp_path, images):
    import os

    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache", max_bytes=10**9)
    cache.tokens(enc, images[:2], batch_size=1)
    shard_size = max(p.stat().st_size for p in (tmp_path / "cache").glob("*/*.safetensors"))
    folder = tmp_path / "cache" / "fake@1"
    for i, p in enumerate(sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)):
        os.utime(p, (1000 + i, 1000 + i))  # deterministic ages: images[0]'s shard is the oldest
    cache.tokens(enc, images[1:2])  # a read makes images[1] recently used
    small = FeatureCache(tmp_path / "cache", max_bytes=int(2.5 * shard_size))
    small.tokens(enc, images[2:4], batch_size=1)  # 4 shards > 2.5: the two least recently used go
    assert small.evicted == 2 and small.size_bytes() <= 2.5 * shard_size
    check = FeatureCache(tmp_path / "cache")
    check.tokens(enc, images[2:4])
    assert check.misses == 0  # the newest survived; their manifest entries too
    check.tokens(enc, images[:1])
    assert check.misses == 1  # the oldest was evicted and is encoded again


def test_a_progress_callback_cancels_encoding_and_keeps_what_was_done(tmp_path, images):
    from vlmviz.features import EncodingCancelled

    enc = CountingEncoder()

    def stop(done, total):
        if done >= 2:
            raise EncodingCancelled

    with pytest.raises(EncodingCancelled):
        FeatureCache(tmp_path).tokens(enc, images, batch_size=2, progress=stop)
    again = FeatureCache(tmp_path)
    again.tokens(enc, images)
    assert again.hits == 2 and again.misses == 3
