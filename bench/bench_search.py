"""Library search (issue 16), measured side by side in one run. Results go in BENCHMARKS.md.

    .venv/bin/python bench/bench_search.py                  # every part
    .venv/bin/python bench/bench_search.py --part query     # one of: throughput query incremental quality lance

throughput   indexing a folder (hash, decode in a thread, encode, project, write) versus the encoder's own batched
             encode of the same files: the ratio of images per second, target >= 0.9
query        exact top-10 over 10k / 100k / 1M x 384 vectors in shards on disk (warm page cache), the float32 scan
             and the int8-prefiltered query side by side: ms per query, target <= 100 ms at 1M
incremental  one new file after a full index: the update's time versus a full rebuild, and the two indexes equal
quality      text -> image recall@1/5/10 and mAP on held-out synthetic scenes (query "a red circle": relevant to
             every red circle) and on digits, through a trained connector, the least-squares map at its best
             (standardised, ridge chosen on held-out pairs) and an untrained one of the same shape
lance        LanceDB's IVF-PQ recall@10 against the exact index on the same vectors (when lancedb is installed)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _write_images(folder: Path, samples) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(samples):
        path = folder / f"{i:05d}.png"
        s.load().save(path)
        paths.append(path)
    return paths


def part_throughput(tmp: Path, n: int = 192, batch: int = 16) -> None:
    from vlmviz.data import scene_split
    from vlmviz.search import SearchIndex, resolve_connector
    from vlmviz.search.index import embed_pixels

    _, scenes = scene_split(1, n, seed=3)
    paths = _write_images(tmp / "thru", scenes)
    pipe, _ = resolve_connector("photo")
    pipe.encoder.encode(paths[:batch], batch_size=batch)  # warm
    results = []
    for rep in range(2):
        t = time.perf_counter()
        for start in range(0, n, batch):  # the encoder alone, batched, plus the same projection
            embed_pixels(pipe, pipe.encoder.preprocess(paths[start:start + batch]))
        plain = time.perf_counter() - t
        shutil.rmtree(tmp / f"ix{rep}", ignore_errors=True)
        index = SearchIndex.create(tmp / "thru", tmp / f"ix{rep}", connector="photo")
        t = time.perf_counter()
        report = index.update(batch_size=batch)
        indexed = time.perf_counter() - t
        assert report["embedded"] == n
        results.append((n / plain, n / indexed))
        print(f"throughput rep {rep}: encoder+connector {n / plain:.1f} img/s, index {n / indexed:.1f} img/s, "
              f"ratio {plain / indexed:.2f}")
    best_plain, best_index = max(r[0] for r in results), max(r[1] for r in results)
    print(f"THROUGHPUT {n} scenes 224px, {pipe.encoder.name}, batch {batch}: encoder {best_plain:.1f} img/s, "
          f"index {best_index:.1f} img/s, ratio {best_index / best_plain:.2f} (target >= 0.9)")


def part_query(tmp: Path, sizes=(10_000, 100_000, 1_000_000), dim: int = 384, queries: int = 21) -> None:
    """Per size, side by side on the same shards and queries (alternating which goes first): the float32 scan
    (BLAS over the float32 shards, then its candidates rescored exactly) and the int8-prefiltered exact query
    (the int8 copies, then candidates rescored from float32); both must return the same hits and scores. Also
    one numpy matmul + argpartition over the same vectors in RAM, and clustered vectors at 100k (near-ties: more
    candidates to rescore)."""
    from vlmviz.search import ShardStore

    rng = np.random.default_rng(0)
    cases = [(n, "uniform") for n in sizes] + [(100_000, "clustered")] * (100_000 in sizes)
    for n, kind in cases:
        folder = tmp / f"q{n}{kind}"
        shutil.rmtree(folder, ignore_errors=True)
        store = ShardStore(folder, create=True)
        centres = rng.standard_normal((200, dim), dtype=np.float32)
        t = time.perf_counter()
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            vec = rng.standard_normal((m, dim), dtype=np.float32)
            if kind == "clustered":  # 200 centres, as embeddings of a photo library bunch up
                vec = centres[rng.integers(0, 200, m)] + 0.6 * vec
            vec /= np.linalg.norm(vec, axis=1, keepdims=True)
            names = [f"{start + i:x}" for i in range(m)]
            store.append(names, vec, [(f"{h}.jpg", 1, 1, h) for h in names])
        build = time.perf_counter() - t
        q = rng.standard_normal((queries, dim), dtype=np.float32)
        if kind == "clustered":
            q = vec[:queries] + 0.3 * q
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        store = ShardStore(folder)  # a fresh process's view: nothing loaded
        t = time.perf_counter()
        store.top_k(q[0], 10, prefilter=False)  # loads the live-row table from SQLite once
        first = time.perf_counter() - t
        t = time.perf_counter()
        store.top_k(q[0], 10)  # reads the int8 copies into memory, checks their crc32s; compiles (or loads) numba
        first_lowp = time.perf_counter() - t
        f32, lowp, rescored, same = [], [], [], True
        for i, row in enumerate(q[1:]):
            stats = {}
            for prefilter in ((False, True) if i % 2 else (True, False)):
                t = time.perf_counter()
                got = store.top_k(row, 10, prefilter=prefilter, stats=stats if prefilter else None)
                (lowp if prefilter else f32).append(time.perf_counter() - t)
                if prefilter:
                    hits = got
                else:
                    want = got
            same &= hits == want
            rescored.append(stats["rescored"])
        data = np.concatenate([np.asarray(store._memmap(s, r)) for s, r in store._shard_rows().items()])
        ref = []
        for row in q[1:8]:
            t = time.perf_counter()
            np.argpartition(-(data @ row), 9)[:10]
            ref.append(time.perf_counter() - t)
        ms = lambda xs: f"{statistics.median(xs) * 1e3:.1f} ms [{min(xs) * 1e3:.1f}-{max(xs) * 1e3:.1f}]"  # noqa: E731
        size = lambda ext: sum(p.stat().st_size for p in (folder / "shards").glob(f"*.{ext}")) / 2**20  # noqa: E731
        print(f"QUERY n={n:>9,} x {dim} {kind}: float32 scan {ms(f32)}, int8-prefiltered {ms(lowp)}, ratio "
              f"{statistics.median(f32) / statistics.median(lowp):.2f}x; rescored {statistics.median(rescored):.0f} "
              f"rows [{min(rescored)}-{max(rescored)}]; same hits and scores: {same}; numpy matmul in RAM "
              f"{ms(ref)}; first query {first * 1e3:.0f} ms (row table) + {first_lowp * 1e3:.0f} ms (int8 copies); "
              f"built in {build:.1f} s; {size('f32'):.0f} MiB float32 + {size('i8') + size('i8s'):.0f} MiB int8")
        store.close()
        del data
        shutil.rmtree(folder, ignore_errors=True)


def part_incremental(tmp: Path, n: int = 96) -> None:
    from vlmviz.data import scene_split
    from vlmviz.search import SearchIndex

    _, scenes = scene_split(1, n + 1, seed=5)
    _write_images(tmp / "inc", scenes[:n])
    index = SearchIndex.create(tmp / "inc", tmp / "inc-ix", connector="photo")
    index.update()
    scenes[n].load().save(tmp / "inc" / "new.png")
    t = time.perf_counter()
    report = index.update()
    one = time.perf_counter() - t
    t = time.perf_counter()
    fresh = SearchIndex.create(tmp / "inc", tmp / "inc-fresh", connector="photo")
    fresh.update()
    full = time.perf_counter() - t
    a, b = dict(zip(*index.store.vectors())), dict(zip(*fresh.store.vectors()))
    same = a.keys() == b.keys() and all(np.allclose(a[h], b[h], atol=1e-5) for h in a)
    print(f"INCREMENTAL one new file into {n}: update {one:.2f} s (embedded {report['embedded']}), full rebuild "
          f"{full:.2f} s, ratio {full / one:.1f}x; indexes equal: {same}")


def _checkpoint(tmp, name, proj, **meta):
    from vlmviz.checkpoints import save_checkpoint

    return save_checkpoint(tmp / f"{name}.safetensors", proj.eval(), pooling="mean", label=name, **meta)


def _connectors(tmp, tag, x_train, y_train, d_txt, meta, trained=None):
    """{name: checkpoint}: the trained one (given or trained here), least squares at its best, untrained."""
    from vlmviz.config import TrainConfig
    from vlmviz.projectors import build_projector
    from vlmviz.train import fit_least_squares, train_projector

    out = {}
    if trained is None:
        torch.manual_seed(0)
        proj = build_projector("lowrank", x_train.shape[-1], d_txt, rank=64)
        train_projector(proj, x_train, y_train, TrainConfig(loss="infonce", steps=600, batch_size=256, lr=1e-2,
                                                             weight_decay=0.5, eval_every=0))
        trained = _checkpoint(tmp, f"{tag}-lowrank", proj, **meta)
    out["trained low-rank (InfoNCE)"] = trained
    w, b = fit_least_squares(x_train[:, 0], y_train)
    lin = build_projector("linear", x_train.shape[-1], d_txt)
    with torch.no_grad():
        lin.linear.weight.copy_(w.T)
        lin.linear.bias.copy_(b)
    out["least squares (ridge chosen on held-out)"] = _checkpoint(tmp, f"{tag}-lsq", lin, **meta)
    torch.manual_seed(1)
    out["untrained low-rank"] = _checkpoint(tmp, f"{tag}-random",
                                            build_projector("lowrank", x_train.shape[-1], d_txt, rank=64), **meta)
    return out


def part_quality(tmp: Path, n_train: int = 600, n_test: int = 300) -> None:
    from vlmviz.builtins import SCENES_LOWRANK, built_in_checkpoint
    from vlmviz.data import scene_split
    from vlmviz.data.digits import NAMES, load_digits_dataset
    from vlmviz.encoders import load_vision_encoder
    from vlmviz.runs.scene_connector import ENCODER, TEXT, TOKENS, pooled_features
    from vlmviz.search import SearchIndex
    from vlmviz.search.evaluate import index_scores
    from vlmviz.text import load_text_space

    encoder, text = load_vision_encoder(ENCODER), load_text_space(TEXT)
    meta = {"encoder": ENCODER, "tokens": TOKENS, "text": TEXT}
    # scenes: the test split holds only (color, shape) pairs no connector here was trained on
    train, test = scene_split(n_train, n_test, seed=0)
    _write_images(tmp / "scenes", test)
    x = pooled_features(encoder, train)
    conns = _connectors(tmp, "scenes", x, text.encode([s.caption for s in train]), text.dim, meta,
                        trained=built_in_checkpoint(SCENES_LOWRANK))
    pair: dict[str, set[str]] = {}
    sized: dict[str, set[str]] = {}
    for i, s in enumerate(test):
        pair.setdefault(f"a {s.meta['color']} {s.meta['shape']}", set()).add(f"{i:05d}.png")
        sized.setdefault(f"a {s.meta['size']} {s.meta['color']} {s.meta['shape']}", set()).add(f"{i:05d}.png")
    for name, ck in conns.items():
        index = SearchIndex.create(tmp / "scenes", tmp / f"scenes-{name[:5]}", connector=str(ck))
        index.update()
        for what, queries in (("color+shape", pair), ("size+color+shape", sized)):
            r = index_scores(index, queries)
            print(f"QUALITY scenes ({what} queries, held-out pairs) {name}: R@1 {r['R@1']:.3f} R@5 {r['R@5']:.3f} "
                  f"R@10 {r['R@10']:.3f} mAP {r['mAP']:.3f} ({r['queries']} queries over {r['images']} images)")
    # digits: the first 1200 train the connectors, the other 597 are searched
    digits = load_digits_dataset()
    d_train, d_test = digits[:1200], digits[1200:]
    _write_images(tmp / "digits", d_test)
    x = pooled_features(encoder, d_train)
    conns = _connectors(tmp, "digits", x, text.encode([s.caption for s in d_train]), text.dim,
                        {**meta, "dataset": "digits"})
    queries = {}
    for i, s in enumerate(d_test):
        queries.setdefault(f"a handwritten digit {NAMES[s.meta['label']]}", set()).add(f"{i:05d}.png")
    for name, ck in conns.items():
        index = SearchIndex.create(tmp / "digits", tmp / f"digits-{name[:5]}", connector=str(ck))
        index.update()
        r = index_scores(index, queries)
        print(f"QUALITY digits (held-out images) {name}: R@1 {r['R@1']:.3f} R@5 {r['R@5']:.3f} R@10 {r['R@10']:.3f} "
              f"mAP {r['mAP']:.3f} ({r['queries']} queries over {r['images']} images)")


def part_lance(tmp: Path, n: int = 100_000, dim: int = 384, queries: int = 50) -> None:
    try:
        from vlmviz.search.lance import LanceStore
    except ImportError as err:
        print(f"LANCE skipped: {err}")
        return
    from vlmviz.search import ShardStore

    rng = np.random.default_rng(0)
    # clustered vectors, as embeddings are; uniform random ones have no neighbours for an index to find
    centres = rng.standard_normal((200, dim), dtype=np.float32)
    vec = centres[rng.integers(0, 200, n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    names = [f"{i:x}" for i in range(n)]
    exact = ShardStore(tmp / "exact", create=True)
    exact.append(names, vec, [(f"{h}.jpg", 1, 1, h) for h in names])
    t = time.perf_counter()
    lance = LanceStore(tmp / "lance")
    lance.add(names, vec)
    lance.build_ann()
    build = time.perf_counter() - t
    q = vec[rng.integers(0, n, queries)] + 0.3 * rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    recall, t_exact, t_lance = [], [], []
    for row in q:
        t = time.perf_counter()
        want = {h for h, _ in exact.top_k(row, 10)}
        t_exact.append(time.perf_counter() - t)
        t = time.perf_counter()
        got = {h for h, _ in lance.top_k(row, 10)}
        t_lance.append(time.perf_counter() - t)
        recall.append(len(want & got) / 10)
    print(f"LANCE n={n:,} x {dim} IVF-PQ: recall@10 {np.mean(recall):.3f} against exact; "
          f"{statistics.median(t_lance) * 1e3:.1f} ms per query vs exact {statistics.median(t_exact) * 1e3:.1f} ms; "
          f"index built in {build:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["throughput", "query", "incremental", "quality", "lance"])
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="numpy's BLAS threads (the float32 scan's matmul); the int8 kernel runs on one. With "
                             "2 on this shared 2-core VM, OpenBLAS's spinning threads made a 10k scan 20x slower")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.blas_threads, user_api="blas")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"BLAS threads {args.blas_threads}, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="vlmviz-bench-search-") as tmp:
        for part in args.part:
            globals()[f"part_{part}"](Path(tmp))


if __name__ == "__main__":
    main()
