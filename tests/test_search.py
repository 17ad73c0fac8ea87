"""Library search (vlmviz.search): the store against a brute-force reference, then a real index of gallery photos
through the built-in photo connector: queries of each kind, incremental updates, bad files, a damaged shard, a
kill mid-way and resume, and the CLI."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shapes_folder import make_shape_folder
from vlmviz.search import IndexStoreError, SearchIndex, ShardStore, parse_query
from vlmviz.search import store as store_mod

GALLERY = Path(__file__).resolve().parent.parent / "assets" / "gallery"
ROOT = Path(__file__).resolve().parent.parent


# ---- pure parts -------------------------------------------------------------------------------------------
def test_parse_query_terms():
    assert parse_query("a red car") == [(1.0, "text", "a red car")]
    assert parse_query("well-lit room") == [(1.0, "text", "well-lit room")]
    assert parse_query('"red car" - "night" + 0.5 * ./ref.jpg') == [
        (1.0, "text", "red car"), (-1.0, "text", "night"), (0.5, "image", "./ref.jpg")]
    assert parse_query("photo.PNG") == [(1.0, "image", "photo.PNG")]
    for bad in ("", "   ", '""', 'x * "cat"'):
        with pytest.raises(ValueError):
            parse_query(bad)


def test_top_k_matches_brute_force_across_shards_and_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "SHARD_ROWS", 37)
    monkeypatch.setattr(store_mod, "CHUNK_ROWS", 10)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(150, 8)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    names = [f"h{i}" for i in range(150)]
    store = ShardStore(tmp_path / "ix", create=True)
    for start in range(0, 150, 23):  # appends that straddle shard boundaries
        rows = [(f"{n}.png", 1, 1, n) for n in names[start:start + 23]]
        store.append(names[start:start + 23], vec[start:start + 23], rows)
    assert store.counts()["shards"] == 5
    store.remove_files([f"h{i}.png" for i in range(0, 150, 3)])  # dead rows
    live = [i for i in range(150) if i % 3]
    allowed = {f"h{i}" for i in live if i % 2}
    q = rng.normal(size=8).astype(np.float32)
    for k, subset in ((5, None), (40, None), (7, allowed), (500, allowed)):
        pool = [i for i in live if subset is None or names[i] in subset]
        want = sorted(pool, key=lambda i: -float(vec[i] @ q))[:k]
        got = store.top_k(q, k, subset)
        assert [h for h, _ in got] == [names[i] for i in want]
        np.testing.assert_allclose([s for _, s in got], [vec[i] @ q for i in want], rtol=1e-5)
    assert store.compact() == 50
    assert store.counts()["dead_rows"] == 0 and store.verify() == []  # the int8 copies were written too
    assert [h for h, _ in store.top_k(q, 5)] == [h for h, _ in ShardStore(tmp_path / "ix").top_k(q, 5)]
    hashes, kept = store.vectors()
    np.testing.assert_array_equal(kept, vec[[int(h[1:]) for h in hashes]])
    with pytest.raises(ValueError, match="non-finite"):
        store.append(["x"], np.full((1, 8), np.nan, np.float32), [("x.png", 1, 1, "x")])


def _canonical_top_k(vec, q, pool, k):
    """Brute force: every row's exact score (float64 sum of exact products, rounded once to float32), best first,
    ties to the earlier row."""
    scores = (vec[pool].astype(np.float64) * q.astype(np.float64)).sum(axis=1).astype(np.float32)
    order = np.lexsort((np.asarray(pool), -scores))[:k]
    return [(f"h{pool[i]}", float(scores[i])) for i in order]


def _random_store(folder, vec, step=23):
    store = ShardStore(folder, create=True)
    names = [f"h{i}" for i in range(len(vec))]
    for start in range(0, len(vec), step):  # appends that straddle shard boundaries
        store.append(names[start:start + step], vec[start:start + step],
                     [(f"{n}.png", 1, 1, n) for n in names[start:start + step]])
    return store


@pytest.mark.parametrize("data", ["random", "clustered"])
def test_prefiltered_top_k_is_the_exact_top_k(tmp_path, monkeypatch, data):
    """The int8 scan plus float32 rescoring returns what scoring every row exactly returns (hits, scores, order),
    and so does the float32 scan: on random vectors, and on clusters of near-ties and exact duplicates, across
    shard and chunk boundaries, with dead rows and filters."""
    monkeypatch.setattr(store_mod, "SHARD_ROWS", 97)
    monkeypatch.setattr(store_mod, "CHUNK_ROWS", 16)
    rng = np.random.default_rng(1)
    n, d = 700, 24
    if data == "random":
        vec = rng.normal(size=(n, d)).astype(np.float32)
    else:  # 5 centres, rows 1e-4 apart: the int8 error (~1e-2) is far larger than the gaps it must not blur
        centres = rng.normal(size=(5, d))
        vec = (centres[rng.integers(0, 5, n)] + 1e-4 * rng.normal(size=(n, d))).astype(np.float32)
        vec[::7] = vec[3]  # exact duplicates: ties broken by position
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    store = _random_store(tmp_path / "ix", vec)
    assert store.counts()["shards"] == 8
    store.remove_files([f"h{i}.png" for i in range(0, n, 5)])  # dead rows
    live = [i for i in range(n) if i % 5]
    allowed_few = {f"h{i}" for i in live[::40]}  # a filter that leaves a few rows per chunk (gathered)
    allowed_half = {f"h{i}" for i in live if i % 2}
    queries = [vec[3], -vec[10], rng.normal(size=d).astype(np.float32)]
    for q in queries:
        q = q / np.linalg.norm(q)
        for k, subset in ((1, None), (10, None), (60, None), (7, allowed_half), (5, allowed_few), (900, allowed_few)):
            pool = [i for i in live if subset is None or f"h{i}" in subset]
            want = _canonical_top_k(vec, q, pool, k)
            stats = {}
            assert store.top_k(q, k, subset, stats=stats) == want
            assert store.top_k(q, k, subset, prefilter=False) == want
            if data == "random" and subset is None and k <= 10:
                assert stats["rescored"] < len(pool) // 4  # the prefilter prunes: few rows are rescored
            floats = vec[[int(h[1:]) for h, _ in want]] @ q  # within float32 rounding of a plain dot
            np.testing.assert_allclose([s for _, s in want], floats, rtol=1e-5, atol=1e-6)
    if data == "clustered":  # here the margin matters: without it the int8 scan alone would pick other rows
        from vlmviz.search import lowp

        with monkeypatch.context() as m:
            m.setattr(lowp.QuantQuery, "bound", lambda self, max_resid: 0.0)
            m.setattr(store_mod, "float32_bound", lambda query: 0.0)
            wrong = [store.top_k(q / np.linalg.norm(q), 10) != _canonical_top_k(vec, q / np.linalg.norm(q), live, 10)
                     for q in queries]
        assert sum(wrong) >= 2
    ties = store.top_k(vec[3], 80)  # clustered: float32 rounds many near-ties to the same score as the duplicates
    dup = [h for h, s in ties if s == ties[0][1]]
    assert dup == sorted(dup, key=lambda h: int(h[1:]))
    assert len(dup) >= (1 if data == "random" else 30) and len(dup) < 80


def test_int8_bound_holds_and_exact_scores_do_not_depend_on_the_block():
    from vlmviz.search.lowp import QuantQuery, exact_scores, quantize_rows

    rng = np.random.default_rng(2)
    d = 384
    x = rng.normal(size=(3000, d)).astype(np.float32)
    x[0] = 0  # a zero row
    x[1] = np.eye(d, dtype=np.float32)[5]  # one large component: a coarse scale
    x[2, :] = 1e-6
    x[2, 0] = 1  # tiny components under a large one
    x[1:] /= np.linalg.norm(x[1:], axis=1, keepdims=True)
    codes, aux = quantize_rows(x)
    recon = codes.astype(np.float64) * aux[:, :1].astype(np.float64)
    true_resid = np.linalg.norm(x - recon, axis=1)
    assert (aux[:, 1] >= true_resid).all() and np.allclose(aux[:, 1], true_resid, rtol=1e-6, atol=1e-12)
    for q in (x[7], rng.normal(size=d).astype(np.float32), x[1]):
        q = (q / np.linalg.norm(q)).astype(np.float32)
        quant = QuantQuery(q)
        approx = quant.scores(codes, aux[:, 0], np.arange(len(x)), (0, len(x)))
        np.testing.assert_array_equal(approx, quant.scores(codes, aux[:, 0], np.arange(len(x))))
        exact = exact_scores(x, q)
        err = np.abs(exact.astype(np.float64) - approx)
        bound = quant.bound(aux[:, 1].max())
        assert err.max() <= bound and bound < 0.05  # holds, and tight enough to prune
        idx = np.sort(rng.choice(len(x), 17, replace=False))
        np.testing.assert_array_equal(exact_scores(x[idx], q), exact[idx])  # no dependence on the other rows
        np.testing.assert_array_equal(exact_scores(x[idx[:1]], q), exact[idx[:1]])


def test_int8_dots_are_exact_for_wide_vectors_and_without_numba(monkeypatch):
    """Sums past 2^24 (wider than BLOCK columns) stay exact, and numpy's int32 fallback gives the same scores."""
    from vlmviz.search import lowp

    rng = np.random.default_rng(4)
    for d in (7, 384, 1100, 2100):
        codes = rng.integers(-127, 128, (61, d)).astype(np.int8)
        codes[0] = 127  # 127^2 * d: past 2^24 for d > 1040
        scale = rng.uniform(0.5, 2, 61).astype(np.float32)
        q = np.ones(d, np.float32) / np.sqrt(d)
        quant = lowp.QuantQuery(q)
        assert (quant.codes == 127).all()
        want = (codes.astype(np.int64) @ quant.codes.astype(np.int64)).astype(np.float32) * scale * quant.scale
        rows = np.arange(3, 61, 2)
        got = [quant.scores(codes, scale, np.arange(61), (0, 61)), quant.scores(codes, scale, rows, (0, 61))[:5],
               quant.scores(codes, scale, rows)]
        monkeypatch.setattr(lowp, "_KERNELS", [lowp._by_range_numpy, lowp._by_rows_numpy])
        got += [quant.scores(codes, scale, np.arange(61), (0, 61)), quant.scores(codes, scale, rows)]
        monkeypatch.setattr(lowp, "_KERNELS", [])
        for g, w in zip(got, [want, want[rows][:5], want[rows], want, want[rows]]):
            np.testing.assert_array_equal(g, w)


def test_missing_stale_or_damaged_int8_copy_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "SHARD_ROWS", 64)
    rng = np.random.default_rng(3)
    vec = rng.normal(size=(150, 16)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    _random_store(tmp_path / "ix", vec).close()
    shards = tmp_path / "ix" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == [f"0000{i}.{ext}" for i in range(3)
                                                        for ext in ("f32", "i8", "i8s")]
    q = vec[40] / np.linalg.norm(vec[40])
    want = _canonical_top_k(vec, q, list(range(150)), 8)
    good = (shards / "00000.i8").read_bytes()

    def damage():
        data = bytearray(good)
        data[40 * 16:41 * 16] = bytes(16)  # row 40's codes zeroed: its approximate score drops to 0
        (shards / "00000.i8").write_bytes(bytes(data))

    damage()
    assert ShardStore(tmp_path / "ix").top_k(q, 8) == want  # read into memory, crc-checked, rebuilt
    assert (shards / "00000.i8").read_bytes() == good
    damage()
    store = ShardStore(tmp_path / "ix")
    assert store.verify() == ["int8 copy of shard 00000.f32: 00000.i8 fails its checksum; rebuilt from float32"]
    assert (shards / "00000.i8").read_bytes() == good and store.verify() == []
    (shards / "00001.i8").unlink()
    (shards / "00002.i8s").write_bytes(b"")
    store = ShardStore(tmp_path / "ix")
    assert store.top_k(q, 8) == want and (shards / "00001.i8").exists() and store.verify() == []
    with store.db:
        store.db.execute("DELETE FROM lowp")  # an index written before the int8 copies existed
    problems = ShardStore(tmp_path / "ix").verify()
    assert len(problems) == 3 and all("missing; rebuilt" in p for p in problems)
    with store.db:
        store.db.execute("UPDATE lowp SET rows = 3 WHERE shard = 2")  # stale: covers other rows
    store = ShardStore(tmp_path / "ix")
    assert store.top_k(q, 8) == want and store.verify() == []
    store.append(["new"], vec[:1], [("new.png", 1, 1, "new")])  # an append extends the copy and its crc
    assert store.verify() == [] and store.top_k(vec[0], 2) == [("h0", store.top_k(vec[0], 1)[0][1]),
                                                                ("new", store.top_k(vec[0], 1)[0][1])]
    with pytest.raises(ValueError, match="unit vectors"):
        store.append(["big"], 2 * vec[:1], [("big.png", 1, 1, "big")])
    want = store.top_k(q, 8)
    monkeypatch.setattr(store_mod, "LOWP_RAM_BYTES", 0)  # copies past the memory budget stay memory-mapped
    assert ShardStore(tmp_path / "ix").top_k(q, 8) == want
    (shards / "00001.i8").unlink()
    readonly = ShardStore(tmp_path / "ix")  # an index it cannot write to: that shard is scanned in float32

    def refuse(*args):
        raise OSError("read-only file system")

    monkeypatch.setattr(readonly, "_rebuild_lowp", refuse)
    assert readonly.top_k(q, 8) == want and not (shards / "00001.i8").exists()
    assert readonly._lowp(1, 64) is None and readonly._lowp(0, 64) is not None


def test_interrupted_writer_tail_is_overwritten(tmp_path):
    """What a kill between the shard write and the SQLite commit leaves: rows past the committed count."""
    store = ShardStore(tmp_path / "ix", create=True)
    a = np.eye(4, dtype=np.float32)
    store.append(["a", "b"], a[:2], [("a.png", 1, 1, "a"), ("b.png", 1, 1, "b")])
    with open(tmp_path / "ix" / "shards" / "00000.f32", "ab") as f:
        f.write(np.ones((3, 4), np.float32).tobytes())  # the uncommitted tail
    store = ShardStore(tmp_path / "ix")
    assert store.counts()["vectors"] == 2 and store.verify() == []
    store.append(["c"], a[2:3], [("c.png", 1, 1, "c")])
    hashes, vec = store.vectors()
    assert hashes == ["a", "b", "c"]
    np.testing.assert_array_equal(vec, a[:3])
    assert (tmp_path / "ix" / "shards" / "00000.f32").stat().st_size == 3 * 4 * 4


# ---- a real library through the photo connector ---------------------------------------------------------
PHOTOS = ("astronaut", "chelsea", "coffee", "horse", "rocket")


def _library(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    for name in PHOTOS:
        shutil.copy(GALLERY / f"{name}.jpg", folder / f"{name}.jpg")
    for name in ("china", "flower"):
        shutil.copy(GALLERY / f"{name}.jpg", folder / "sub" / f"{name}.jpg")
    (folder / "notes.jpg").write_text("this is a text file posing as an image")
    (folder / "broken.jpg").write_bytes((GALLERY / "clock.jpg").read_bytes()[:300])  # a truncated JPEG
    (folder / "readme.txt").write_text("not an image suffix: not scanned")
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    lib = _library(tmp_path_factory.mktemp("library") / "photos")
    index = SearchIndex.create(lib, tmp_path_factory.mktemp("index") / "ix", connector="photo")
    report = index.update(batch_size=3)
    return lib, index, report


def _names(hits):
    return [Path(h.path).name for h in hits]


def test_index_lists_bad_files_and_finds_photos_by_text(built):
    lib, index, report = built
    assert report["embedded"] == 7 and report["files"] == 7 and report["vectors"] == 7
    assert set(report["bad"]) == {"notes.jpg", "broken.jpg"}
    assert "not a readable image" in report["bad"]["notes.jpg"]
    assert index.store.bad_files().keys() == {"notes.jpg", "broken.jpg"}
    assert _names(index.search("a cat", k=1)) == ["chelsea.jpg"]
    assert _names(index.search("a cup of coffee", k=1)) == ["coffee.jpg"]
    assert _names(index.search("a horse", k=1)) == ["horse.jpg"]
    hits = index.search("a cat", k=3)
    assert len(hits) == 3 and hits[0].score > hits[1].score >= hits[2].score


def test_image_query_combinations_and_filters(built):
    lib, index, _ = built
    similar = index.search(str(lib / "chelsea.jpg"), k=2)
    assert _names(similar)[0] == "chelsea.jpg" and similar[0].score == pytest.approx(1.0, abs=1e-5)
    # an image outside the library is embedded on the fly; the same photo scores 1 against its indexed copy
    outside = index.search(str(GALLERY / "horse.jpg"), k=1)
    assert _names(outside) == ["horse.jpg"] and outside[0].score == pytest.approx(1.0, abs=1e-4)
    mixed = index.search(f'"a cat" + 0.5 * {lib / "coffee.jpg"}', k=2)
    assert set(_names(mixed)) == {"chelsea.jpg", "coffee.jpg"}
    pure, minus = index.query_vector('"a cat"'), index.query_vector('"a cat" - "a cup of coffee"')
    coffee = index.store.vector_of(next(h.hash for h in index.search("a cup of coffee", k=1)))
    assert float(minus @ coffee) < float(pure @ coffee)
    assert set(_names(index.search("a flower", k=10, folder="sub"))) == {"china.jpg", "flower.jpg"}
    assert all(h.score >= 0.3 for h in index.search("a cat", k=10, min_score=0.3))
    assert len(index.search("a cat", k=10, min_score=0.3)) < 7
    old = time.mktime((2001, 5, 1, 12, 0, 0, 0, 0, -1))
    os.utime(lib / "rocket.jpg", (old, old))
    try:
        index.update()
        assert _names(index.search("a rocket", k=10, before="2002-01-01")) == ["rocket.jpg"]
        assert "rocket.jpg" not in _names(index.search("a rocket", k=10, after="2002-01-01"))
    finally:
        os.utime(lib / "rocket.jpg")
        index.update()
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        index.search("a cat", after="yesterday")
    with pytest.raises(ValueError, match="cancel"):
        index.search('"a cat" - "a cat"')


def test_incremental_add_remove_rename_copy_change(tmp_path):
    lib = _library(tmp_path / "photos")
    index = SearchIndex.create(lib, tmp_path / "ix", connector="photo")
    index.update(batch_size=4)
    before = dict(zip(*index.store.vectors()))
    again = index.update()
    assert (again["embedded"], again["unchanged"], again["removed"]) == (0, 7, 0)

    (lib / "sub" / "deeper").mkdir()
    shutil.move(lib / "horse.jpg", lib / "sub" / "deeper" / "pony.jpg")  # moved and renamed
    shutil.copy(lib / "coffee.jpg", lib / "coffee copy.jpg")  # a copy
    moved = index.update()
    assert (moved["embedded"], moved["renamed_or_copied"], moved["removed"]) == (0, 2, 0)
    assert moved["vectors"] == 7 and moved["files"] == 8
    assert set(_names(index.search("a cup of coffee", k=2))) == {"coffee.jpg", "coffee copy.jpg"}
    assert _names(index.search("a horse", k=1)) == ["pony.jpg"]

    shutil.copy(GALLERY / "camera.jpg", lib / "camera.jpg")  # new
    (lib / "astronaut.jpg").unlink()  # removed
    shutil.copy(GALLERY / "coins.jpg", lib / "rocket.jpg")  # same path, new content
    changed = index.update()
    assert (changed["embedded"], changed["removed"]) == (2, 1)
    assert changed["vectors"] == 7 and changed["dead_rows"] == 2
    assert "astronaut.jpg" not in _names(index.search("an astronaut", k=10))
    assert index.store.compact() == 2

    # the same final library indexed from scratch holds the same vectors
    fresh = SearchIndex.create(lib, tmp_path / "fresh", connector="photo")
    fresh.update(batch_size=5)
    a, b = dict(zip(*index.store.vectors())), dict(zip(*fresh.store.vectors()))
    assert a.keys() == b.keys() and index.store.files().keys() == fresh.store.files().keys()
    for h in a:
        np.testing.assert_allclose(a[h], b[h], atol=1e-5)
        if h in before:
            np.testing.assert_allclose(a[h], before[h], atol=1e-5)


def test_damaged_shard_is_found_and_rebuilt(tmp_path):
    lib = _library(tmp_path / "photos")
    index = SearchIndex.create(lib, tmp_path / "ix", connector="photo")
    index.update()
    want = _names(index.search("a cat", k=7))
    shard = tmp_path / "ix" / "shards" / "00000.f32"
    data = bytearray(shard.read_bytes())
    data[100:108] = b"\xff" * 8
    shard.write_bytes(bytes(data))
    report = index.update()
    assert report["repaired"] and "checksum" in report["repaired"][0]
    assert report["embedded"] == 7 and report["vectors"] == 7
    assert _names(index.search("a cat", k=7)) == want
    shard_files = sorted((tmp_path / "ix" / "shards").glob("*.f32"))
    shard_files[-1].write_bytes(shard_files[-1].read_bytes()[:50])  # truncated
    report = index.update()
    assert "bytes, expected" in report["repaired"][0] and report["embedded"] == 7
    assert index.store.verify() == []


def test_connector_is_recorded_and_another_refused(built, tmp_path):
    lib, index, _ = built
    assert index.summary()["encoder"] == "efficientnet-lite0"
    with pytest.raises(IndexStoreError, match="another connector"):
        SearchIndex.open(index.store.root, connector="scenes")
    with pytest.raises(IndexStoreError, match="another connector"):
        SearchIndex.create(lib, index.store.root, connector="scenes")
    with pytest.raises(IndexStoreError, match="not a vlmviz index"):
        SearchIndex.open(tmp_path)
    with pytest.raises(ValueError, match="checkpoint file"):
        SearchIndex.create(lib, tmp_path / "x", connector="no-such.safetensors")


# ---- the CLI: resumable after a kill, pipe-friendly output, one-line errors ------------------------------
def _cli(capsys, *args):
    """The CLI in this process (its models already loaded by the tests above): (exit code, stdout, stderr)."""
    from vlmviz.__main__ import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _vectors(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_cli_index_killed_midway_resumes_to_the_clean_result(tmp_path, capsys):
    lib = make_shape_folder(tmp_path / "shapes", 48, size=64)
    index_dir = tmp_path / "ix"
    proc = subprocess.Popen([sys.executable, "-m", "vlmviz", "index", str(lib), "--index", str(index_dir),
                             "--batch-size", "1", "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _vectors(index_dir / "index.sqlite") < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _vectors(index_dir / "index.sqlite")
    assert 5 <= partial < 48, f"the kill should land mid-way; {partial} of 48 were committed"

    code, out, err = _cli(capsys, "index", lib, "--index", index_dir, "--json", "--quiet")
    assert code == 0, err
    report = json.loads(out)
    assert report["embedded"] == 48 - partial and report["unchanged"] == partial
    assert report["vectors"] == report["files"] == 48 and report["dead_rows"] == 0

    clean = SearchIndex.create(lib, tmp_path / "clean", connector="photo")
    clean.update(batch_size=8)
    resumed = ShardStore(index_dir)
    a, b = dict(zip(*resumed.vectors())), dict(zip(*clean.store.vectors()))
    assert a.keys() == b.keys() and len(a) == 48
    for h in a:
        np.testing.assert_allclose(a[h], b[h], atol=1e-5)

    code, out, err = _cli(capsys, "search", index_dir, "a red circle", "-k", "3", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 3 and all(Path(h["path"]).parent == lib for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    code, out, _ = _cli(capsys, "search", index_dir, "a red circle", "-k", "2")
    assert [line.split("\t")[1] for line in out.splitlines()] == [h["path"] for h in hits[:2]]


def test_cli_errors_are_one_line(tmp_path, capsys, built):
    _, index, _ = built
    for args, expect in ((("search", tmp_path, "a cat"), "not a vlmviz index"),
                         (("search", index.store.root, '"a cat" - "a cat"'), "cancel out"),
                         (("search", index.store.root, "a cat", "-k", "0"), "positive whole number"),
                         (("search", index.store.root, "a cat", "--connector", "scenes"), "another connector"),
                         (("index", tmp_path / "missing"), "expected a folder of images"),
                         (("index", tmp_path, "--connector", "nope"), "checkpoint file")):
        code, out, err = _cli(capsys, *args)
        assert code == 2, err
        assert expect in err and "Traceback" not in err and out == ""
        assert len(err.strip().splitlines()) == 1, err


# ---- optional engines: Ray Data for indexing, LanceDB for approximate search ---------------------------
RAY_WHY = ("Ray Data is an optional extra (requirements-extras.txt; `bash scripts/setup.sh --test` installs it): "
           "without it the Ray indexing path is not exercised")
LANCE_WHY = ("LanceDB is an optional extra (requirements-extras.txt; `bash scripts/setup.sh --test` installs it): "
             "without it the approximate-search mirror is not exercised")


def test_ray_data_index_equals_the_single_process_index(built, tmp_path):
    ray = pytest.importorskip("ray", reason=RAY_WHY)
    pytest.importorskip("ray.data", reason=RAY_WHY)
    lib, single, _ = built
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        index = SearchIndex.create(lib, tmp_path / "ray", connector="photo")
        report = index.update(engine="ray", batch_size=2)
    finally:
        ray.shutdown()
    assert report["embedded"] == 7 and set(report["bad"]) == {"notes.jpg", "broken.jpg"}
    assert index.store.files().keys() == single.store.files().keys()
    a, b = dict(zip(*index.store.vectors())), dict(zip(*single.store.vectors()))
    assert a.keys() == b.keys()
    for h in a:
        np.testing.assert_allclose(a[h], b[h], atol=1e-5)
    assert _names(index.search("a cat", k=1)) == ["chelsea.jpg"]


def test_lance_mirror_follows_the_exact_index_and_finds_its_neighbours(built, tmp_path):
    pytest.importorskip("lancedb", reason=LANCE_WHY)
    from vlmviz.search.lance import LanceStore

    lib, index, _ = built
    assert index.sync_ann()["rows"] == 7
    assert _names(index.search("a cat", k=3, ann=True)) == _names(index.search("a cat", k=3))
    # enough clustered vectors for a real IVF-PQ index, then a deletion that the mirror must follow
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 32)).astype(np.float32)
    vec = centres[rng.integers(0, 20, 2000)] + 0.5 * rng.standard_normal((2000, 32)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    names = [f"v{i}" for i in range(2000)]
    exact = ShardStore(tmp_path / "exact", create=True)
    exact.append(names, vec, [(f"{h}.png", 1, 1, h) for h in names])
    lance = LanceStore(tmp_path / "lance")
    assert lance.sync(exact) == {"added": 2000, "deleted": 0, "rows": 2000}
    lance.build_ann()
    assert lance.table.list_indices()
    recall = [len({h for h, _ in exact.top_k(q, 10)} & {h for h, _ in lance.top_k(q, 10)}) / 10 for q in vec[:30]]
    assert np.mean(recall) >= 0.8, recall
    exact.remove_files([f"v{i}.png" for i in range(0, 2000, 2)])
    assert lance.sync(exact)["deleted"] == 1000 and len(lance) == 1000
    assert all(int(h[1:]) % 2 for q in vec[:10] for h, _ in lance.top_k(q, 10))


def test_retrieval_scores_by_hand():
    from vlmviz.search.evaluate import retrieval_scores

    vec = np.eye(4, dtype=np.float32)  # images a b c d along the axes
    q = np.array([0.1, 0.9, 0.5, 0.0], np.float32)  # ranks b, c, a, d
    s = retrieval_scores(vec, ["a", "b", "c", "d"], {"x": (q, {"c", "a"}), "y": (q, {"b"})}, ks=(1, 2))
    # x: relevant at ranks 2 and 3 -> AP (1/2 + 2/3) / 2; y: rank 1 -> AP 1
    assert s["R@1"] == 0.5 and s["R@2"] == 1.0
    assert s["mAP"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)
    with pytest.raises(ValueError, match="no relevant"):
        retrieval_scores(vec, ["a", "b", "c", "d"], {"z": (q, set())})


def test_readme_search_example_runs(monkeypatch):
    import contextlib
    import io
    import re

    readme = (ROOT / "README.md").read_text()
    code = next(c for c in re.findall(r"```python\n(.*?)```", readme, re.S) if "vlmviz.search" in c)
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert "'files': 14" in lines[0]
    assert lines[1].endswith("coffee.jpg") and len(lines) == 4


def test_index_through_a_real_vlms_own_connector(tmp_path):
    """A saved VLM (a tiny random Qwen2-VL, its own config class) as the connector: vectors are its merger's
    tokens mean-pooled in its LM's embedding space; the index records it and refuses another."""
    from test_vlms import config, SUPPORTED
    import torch
    import transformers as T

    torch.manual_seed(0)
    model = getattr(T, SUPPORTED["qwen2_vl"][0])(config("qwen2_vl")).eval()
    model.save_pretrained(tmp_path / "qwen")
    lib = _library(tmp_path / "photos")
    index = SearchIndex.create(lib, tmp_path / "ix", connector=f"vlm:{tmp_path / 'qwen'}")
    report = index.update(batch_size=4)
    assert report["embedded"] == 7 and index.summary()["connector"] == f"vlm:{(tmp_path / 'qwen').resolve()}"
    assert index.store.dim == model.config.text_config.hidden_size
    hit = index.search(str(lib / "horse.jpg"), k=1)[0]
    assert Path(hit.path).name == "horse.jpg" and hit.score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(IndexStoreError, match="another connector"):
        SearchIndex.open(tmp_path / "ix", connector="photo")
    with pytest.raises(ValueError, match="config.json"):
        SearchIndex.create(lib, tmp_path / "x", connector=f"vlm:{tmp_path}")
