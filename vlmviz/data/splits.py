"""Train/test splits and what a checkpoint records of them: synthetic scenes split by held-out attribute
combinations, any other dataset by a seeded random split; the digests let eval tell when the data changed."""
from __future__ import annotations

import hashlib
import random


def load_split(dataset: str, n_train: int = 600, n_test: int = 200, seed: int = 0, log=print) -> tuple[list, list]:
    """Synthetic scenes split by held-out attribute combinations; any other dataset by a seeded random split.
    A folder's test split is at most a fifth of it (at least 2 pairs), and a cut is said, never silent."""
    from . import SCENES, load_dataset, scene_split

    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive number of image-caption pairs, got {value!r}")
    if dataset in SCENES:
        return scene_split(n_train, n_test, seed=seed, **SCENES[dataset])
    loaded = load_dataset(dataset, n=None if dataset != "digits" else n_train + n_test, seed=seed)
    if loaded.problems:
        log(f"[vlmviz] {len(loaded.problems)} rows of {dataset} skipped, first: {loaded.problems[0]}")
    samples = list(loaded.samples)
    random.Random(seed).shuffle(samples)
    cut = min(n_test, max(2, len(samples) // 5))
    if cut < n_test:
        log(f"[vlmviz] {dataset}: test split of {cut} pairs, not {n_test} (a fifth of its {len(samples)} usable pairs "
            "stays for testing; to score every row of another folder, use eval --split all)")
    if len(samples) - cut < 2:
        raise ValueError(f"{dataset} has {len(samples)} usable pairs; training needs at least 4")
    return samples[cut:cut + n_train], samples[:cut]


def split_digest(samples) -> str:
    """sha1 of the (id, caption) pairs on one side of a split: checkpoints record it, so eval can tell when the data
    changed since training."""
    return hashlib.sha1("\n".join(f"{s.id}|{s.caption}" for s in samples).encode()).hexdigest()[:16]


def split_record(dataset: str, n_train: int, n_test: int, seed: int, train: list, test: list) -> dict:
    """What a checkpoint records of its split, so that eval scores the same held-out pairs and can tell when the
    data changed: the load_split arguments and a digest of the pairs on each side."""
    return {"dataset": dataset, "n_train": n_train, "n_test": n_test, "seed": seed,
            "train_digest": split_digest(train), "test_digest": split_digest(test), "train_size": len(train),
            "test_size": len(test)}
