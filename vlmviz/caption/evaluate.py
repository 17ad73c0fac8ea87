"""Do the captions ground? Connectors trained with the caption objective through the frozen LM, scored on the
held-out color+shape pairs of the one-object scenes by what their greedy captions say.

Per connector family and objective (prefix | xattn) it reports the share of held-out captions whose color, shape,
size and position are right (the true word said and no rival word, captioning.attribute_hits), all four at once,
and whether exactly one object is named (the scenes' captions never state a count). Baselines on the same scenes:
the text-only LM (no image), each untrained connector (prefix; an untrained xattn model IS the text-only LM, its
gates start at zero), and the best constant caption, the most frequent test value of each attribute, which is what
a model that ignores the image can at best reach.

With --objects 2 the scenes hold two objects in a relation, every test object a held-out pair, and the scores are
both colors, both shapes, the relation (captioning.relation_hits) and all five facts at once (all5). A caption
preset (--preset caption-describe or caption-relations, config.PRESETS) is scored with its own encoder and training settings; its
trainer, train_caption_connector, is the one the built-in Describe captioner is made with (caption_builtin.py).

    python -m vlmviz caption-eval --steps 200 --threads 1
    python -m vlmviz caption-eval --preset caption-describe --threads 1      # all four right 0.85 (BENCHMARKS.md)
    python -m vlmviz caption-eval --preset caption-relations --threads 1     # two objects: all five right 0.53
    python -m vlmviz caption-eval --encoder vit-s14@2 --connector wordslots-echo --mode prefix --objects 2 \
        --n-train 2000 --lr 2e-3 --steps 300 --warmup 30 --echo-steps 1500 --echo 3   # two objects, echo first

Checkpoints land in out_dir and are reused when their recipe matches (--retrain to train again).
Shape legend: N images, T selected encoder tokens, D_vis encoder width, M visual tokens, D LM width.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch

from .train import held_out_loss
from .captioner import build_vlm, lm_name, load_captioner, save_captioner
from .model import CaptionHead, EchoWords, attribute_hits, content_words, names_one_object, relation_hits
from ..config import CaptionConfig, TrainConfig
from ..encoders import load_vision_encoder, select_tokens, token_dim
from ..features import FeatureCache
from ..projectors import build_projector
from ..train import train_projector

# name: (family, token selection, options); 8, 16 and 1 visual tokens (9 for the C-Abstractor)
CONNECTORS = {
    "resampler": ("resampler", "patch", {"num_queries": 8}),
    # as resampler over the 2 x 2 block means of the patch grid (64 keys for ViT-S/14's 256 patches): a step 4x cheaper
    "resampler-pool2": ("resampler", "patch", {"num_queries": 8, "pool": 2}),
    # 5 queries: exactly the five facts of a two-object statement for --echo-steps (a query past the statement's
    # words is free to grow, and a token 20x a word's norm swamps the frozen LM)
    "resampler5-pool2": ("resampler", "patch", {"num_queries": 5, "pool": 2}),
    # 5 word slots read per patch (an MLP of each 2 x 2-pooled patch, averaged where each slot looks) + 4 learned
    # prompt tokens; for --echo-steps at vit-s14@2, whose patches name the color without the shape
    "wordslots-echo": ("wordslots", "patch", {"num_queries": 5, "pool": 2, "prompt": 4}),
    "pixel_shuffle": ("pixel_shuffle", "patch", {"scale": 4}),
    "cabstractor": ("cabstractor", "patch", {"output_side": 3}),
    # the 3 x 3 average pool alone (no conv blocks), then the MLP: one token per place of a scene's 3 x 3 layout
    "pool3": ("cabstractor", "patch", {"output_side": 3, "depth": 0}),
    # as pool3, two tokens in a row per place: a frozen LM's copying (after "red", the token after the red one)
    "pool3-pairs": ("cabstractor", "patch", {"output_side": 3, "depth": 0, "tokens_per_cell": 2}),
    "linear-pooled": ("linear", "cls+mean", {}),
    # two encoder depths as separate token groups (projectors/multidepth.py); needs --encoder vit-s14@4+12
    "pixel_shuffle-2depth": ("multidepth", "patch", {"groups": 2, "scale": 4}),  # 16 + 16 tokens
    "pixel_shuffle-2depth-8": ("multidepth", "patch", {"groups": 2, "scale": 4, "last_scale": 8}),  # 16 + 4
    # 16 + 16 tokens ordered by place: block 4's token of a cell, then block 12's of the same cell
    "pixel_shuffle-2depth-interleaved": ("multidepth", "patch", {"groups": 2, "scale": 4, "interleave": True}),
    # + 4 object slots (learned queries over every patch, positions on the keys): one token per object, both depths
    "pixel_shuffle-2depth-8-slots": ("multidepth", "patch", {"groups": 2, "scale": 4, "last_scale": 8, "slots": 4}),
    # the first depth average-pooled per 4 x 4 cell (color without the outline, 16 tokens), the second pixel-shuffled
    # 8 x 8 (4 tokens): read at vit-s14@2+6 (color from block 2, shape from block 6)
    "pool-color+shuffle-8": ("multidepth", "patch", {"groups": 2, "scale": 4, "last_scale": 8, "pool_groups": 1}),
    "pool-color+shuffle": ("multidepth", "patch", {"groups": 2, "scale": 4, "pool_groups": 1}),  # 16 + 16
    # as pool-color+shuffle, ordered by place (a cell's color token, then its shape token): 16 + 16
    "pool-color+shuffle-interleaved": ("multidepth", "patch", {"groups": 2, "scale": 4, "pool_groups": 1,
                                                               "interleave": True}),
    # as pool-color+shuffle, a cell's two tokens added into one: 16 tokens, color and shape bound in each
    "pool-color+shuffle-fused": ("multidepth", "patch", {"groups": 2, "scale": 4, "pool_groups": 1, "fuse": True}),
}
# pixel_shuffle-2depth-interleaved read at the same depth twice (--encoder vit-s14@6+6): two tokens in a row per cell
# from two linear maps, so the frozen LM can read a place as a phrase and copy the shape token after the color one
# (pool3-pairs without the pooling); a name of its own for its checkpoints and rows
CONNECTORS["pixel_shuffle-pairs"] = CONNECTORS["pixel_shuffle-2depth-interleaved"]
DEFAULT = ("resampler", "pixel_shuffle", "linear-pooled")
ATTRS = ("color", "shape", "size", "position")
RELATION_ATTRS = ("color", "shape", "relation")  # two-object scenes: both objects' color, both shapes, the relation


def score(captions: list[str], samples: list) -> dict:
    """Shares of captions with each attribute right, all four right, exactly one object named; distinct share.
    Two-object scenes: both colors, both shapes, the relation, all five facts right (all5), two objects named."""
    if samples and "relation" in samples[0].meta:
        hits = [relation_hits(c, s.meta) for c, s in zip(captions, samples)]
        out = {a: sum(h[a] for h in hits) / len(hits) for a in RELATION_ATTRS}
        out["all5"] = sum(h["all"] for h in hits) / len(hits)
        out["two_objects"] = sum(h["two_objects"] for h in hits) / len(hits)
        out["distinct"] = len(set(captions)) / len(captions)
        return out
    hits = [attribute_hits(c, s.meta) for c, s in zip(captions, samples)]
    out = {a: sum(h[a] for h in hits) / len(hits) for a in ATTRS}
    out["all4"] = sum(all(h[a] for a in ATTRS) for h in hits) / len(hits)
    out["one_object"] = sum(map(names_one_object, captions)) / len(captions)
    out["distinct"] = len(set(captions)) / len(captions)
    return out


def best_constant(samples: list) -> dict:
    """What one fixed caption scores at best: the most frequent value of each attribute (and of all four)."""
    if samples and "relation" in samples[0].meta:
        facts = {"color": ("color", "color2"), "shape": ("shape", "shape2"), "relation": ("relation",),
                 "all5": ("color", "shape", "relation", "color2", "shape2")}
        out = {k: Counter(tuple(s.meta[f] for f in fields) for s in samples).most_common(1)[0][1] / len(samples)
               for k, fields in facts.items()}
        return {**out, "two_objects": 1.0, "distinct": 1 / len(samples)}
    out = {a: Counter(s.meta[a] for s in samples).most_common(1)[0][1] / len(samples) for a in ATTRS}
    out["all4"] = Counter(tuple(s.meta[a] for a in ATTRS) for s in samples).most_common(1)[0][1] / len(samples)
    return {**out, "one_object": 1.0, "distinct": 1 / len(samples)}


def _recipe(name, mode, steps, batch_size, lr, n_train, seed, lm, encoder, warmup=None, objects=1,
            swap_weight=0.0, swappable=False, word_weight=0.0, echo_weight=0.0, echo_steps=0) -> dict:
    recipe = {"connector": name, "mode": mode, "steps": steps, "batch_size": batch_size, "lr": lr,
              "n_train": n_train, "seed": seed, "lm": lm_name(lm), "encoder": encoder}
    # only stated when not the default, so checkpoints trained before these options existed are still reused
    return (recipe | ({"warmup": warmup} if warmup is not None else {}) | ({"objects": objects} if objects != 1 else {})
            | ({"swap_weight": swap_weight} if swap_weight else {}) | ({"swappable": True} if swappable else {})
            | ({"word_weight": word_weight} if word_weight else {})
            | ({"echo_weight": echo_weight} if echo_weight else {}) | ({"echo_steps": echo_steps} if echo_steps else {}))


def caption_preset(name: str):
    """A preset of config.PRESETS that trains with the caption loss (caption-stage1, caption-describe,
    caption-relations)."""
    from ..config import preset

    cfg = preset(name)
    if cfg.train.loss != "caption":
        raise ValueError(f"preset {name!r} trains with loss {cfg.train.loss!r}; caption-eval needs a caption preset "
                         f"({', '.join(caption_presets())})")
    return cfg


def caption_presets() -> list[str]:
    from ..config import PRESETS

    return [name for name, cfg in PRESETS.items() if cfg.train.loss == "caption"]


def warmup_steps(steps: int, warmup: int | None = None) -> int:
    """Linear warmup before the cosine decay (train.py): `warmup` steps, by default a tenth of the run up to 10."""
    return min(10, steps // 10) if warmup is None else warmup


def check_encoder(name: str, encoder: str, spec: tuple | None = None) -> None:
    """A depth-group connector needs the encoder read at as many depths as it has groups (vit-s14@4+12 for 2):
    at one depth it would cut each token's features in halves and say nothing."""
    from ..encoders.layer import split_layer

    family, _, options = spec or CONNECTORS[name]
    if family == "multidepth":
        layers = split_layer(encoder)[1] or ()
        if len(layers) != options["groups"]:
            raise ValueError(f"connector {name} reads {options['groups']} encoder depths as separate token groups: "
                             f"use --encoder with {options['groups']} layers, e.g. vit-s14@4+12; got {encoder}")


def train_caption_connector(family: str, options: dict, x_tr: torch.Tensor, captions: list[str], *, mode="prefix",
                            lm: str = "smollm2-135m", steps: int = 200, lr: float = 1e-3, batch_size: int = 8,
                            warmup: int | None = None, seed: int = 0, swap_weight: float = 0.0,
                            word_weight: float = 0.0, statements: list[str] | None = None,
                            echo_weight: float = 0.0, echo_steps: int = 0, echo_batch: int = 32, callback=None,
                            should_stop=None):
    """Train a fresh connector (and xattn blocks) on tokens x_tr (N, T, D_vis) through the frozen LM's caption loss:
    (projector, vlm, TrainResult, stats). Seeded, so the same arguments give the same weights: caption-eval and the
    built-in Describe captioner (caption_builtin.py) both train here.

    echo_steps > 0 first trains the connector alone (no LM forward, batches of echo_batch) to make its first visual
    tokens the content words of each image's statement (model.EchoWords; statements, one per image, default the
    captions); echo_weight > 0 keeps that term beside the caption loss afterwards. Both phases count in the CPU
    seconds."""
    vlm = build_vlm(lm, CaptionConfig(mode))
    torch.manual_seed(seed)
    projector = build_projector(family, x_tr.shape[-1], vlm.dim, **options)
    cfg = TrainConfig(loss="caption", pooling="none", steps=steps, lr=lr, batch_size=batch_size,
                      warmup_steps=warmup_steps(steps, warmup), eval_every=0, seed=seed, device="cpu")
    cpu = time.process_time()  # CPU seconds of this process (all its threads): a figure the shared machine spares
    try:
        echo = EchoWords(vlm, statements or captions) if (echo_steps or echo_weight) else None
        if echo_steps:
            first = TrainConfig(loss="caption", pooling="none", steps=echo_steps, lr=lr, batch_size=echo_batch,
                                warmup_steps=warmup_steps(echo_steps), eval_every=0, seed=seed, device="cpu")
            train_projector(projector, x_tr, torch.arange(len(x_tr)), first, head=echo, callback=callback,
                            should_stop=should_stop)
        if echo is not None:
            echo.hold_free = False  # the tokens past the words are the caption loss's to shape from here on
        head = CaptionHead(vlm, captions, swap_weight, word_weight=word_weight, echo=echo, echo_weight=echo_weight)
        result = train_projector(projector, x_tr, torch.arange(len(x_tr)), cfg, head=head,
                                 callback=callback, should_stop=should_stop)
    except BaseException:
        vlm.close()
        raise
    losses = [h["loss"] for h in result.history] or [float("nan")]
    k = max(1, min(10, len(losses) // 4))
    trainable = projector.num_params + sum(p.numel() for p in vlm.xattn.parameters())
    stats = {"train_s": result.seconds, "train_cpu_s": time.process_time() - cpu,
             "steps_per_s": result.steps_done / max(result.seconds, 1e-9),
             "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k, "trainable": trainable}
    return projector.eval(), vlm, result, stats


def _train_or_load(path: Path, recipe: dict, spec: tuple, x_tr, captions, retrain: bool, log, statements=None):
    """(projector, vlm, stats): a matching checkpoint is loaded, anything else trained and saved."""
    family, tokens, options = spec
    if path.exists() and not retrain:
        try:
            captioner = load_captioner(path)
            if captioner.config.get("recipe") == recipe:
                log(f"  loaded {path.name} (same recipe)")
                return captioner.projector, captioner.vlm, captioner.config["stats"]
            captioner.close()
        except ValueError as err:
            log(f"  {path.name} not reusable ({err}); training")
    every = max(1, recipe["steps"] // 10)
    projector, vlm, result, stats = train_caption_connector(
        family, options, x_tr, captions, mode=recipe["mode"], lm=recipe["lm"], steps=recipe["steps"], lr=recipe["lr"],
        batch_size=recipe["batch_size"], warmup=recipe.get("warmup"), seed=recipe["seed"],
        swap_weight=recipe.get("swap_weight", 0.0), word_weight=recipe.get("word_weight", 0.0),
        statements=statements, echo_weight=recipe.get("echo_weight", 0.0), echo_steps=recipe.get("echo_steps", 0),
        callback=lambda r: r["step"] % every == 0 and log(
            f"  step {r['step']}/{r['steps']} loss {r['loss']:.3f} ({r['elapsed']:.0f} s)"))
    save_captioner(path, projector, vlm, recipe["lm"], encoder=recipe["encoder"], tokens=tokens, text=recipe["lm"],
                   dataset=f"scenes-{recipe.get('objects', 1)}obj", steps=result.steps_done, recipe=recipe,
                   stats=stats)
    return projector, vlm, stats


def run_caption_eval(connectors=None, modes=("prefix", "xattn"), steps: int = 200, batch_size: int = 8,
                     lr: float = 1e-3, n_train: int = 600, n_test: int = 100, lm: str = "smollm2-135m",
                     encoder: str = "vit-s14", max_new_tokens: int = 20, seed: int = 0,
                     out_dir: str | Path = "artifacts/caption_eval", threads: int | None = None, retrain: bool = False,
                     warmup: int | None = None, objects: int = 1, preset: str | None = None, swap_weight: float = 0.0,
                     swappable: bool = False, contrast: float = 0.0, word_weight: float = 0.0,
                     echo_weight: float = 0.0, echo_steps: int = 0, log=print):
    """Train (or load) every connector x mode, caption the held-out scenes greedily, score; returns a DataFrame
    and writes caption_eval.csv / .md and examples.jsonl to out_dir. objects 2: two-object relation scenes
    ("a red circle left of a blue square"), every test object a held-out (color, shape) pair. preset: a caption
    preset of config.PRESETS is the one connector, with its encoder, mode and training settings (the other
    arguments still choose the data, decoding and where the checkpoint goes). swap_weight > 0 adds the ranking of
    each two-object caption over its color-swapped twin to the caption loss (model.CaptionHead). swappable: train
    on two-object scenes whose color-swapped twin names seen pairs only (data.scenes.scene_split). contrast alpha > 0
    adds a row per trained connector decoded contrastively (model.VisualLM.generate, VCD) against the mean
    training image's tokens, with the same checkpoint: decoding only, training is unchanged. word_weight > 0 adds
    the word-grounding loss (model.WordGrounding): each caption word near some visual token, in the LM's embedding
    space. echo_steps > 0 trains the connector first, with no LM, to make its first visual tokens the content words
    of each scene's canonical statement (model.EchoWords), and echo_weight > 0 keeps that term beside the caption
    loss; the row then also reports `echo_read`, the share of held-out scenes whose echo slots read exactly their
    statement's words (nearest statement word per slot, before the LM)."""
    import pandas as pd

    from ..data import scene_split

    if not contrast >= 0:  # NaN too
        raise ValueError(f"contrast (VCD alpha) must be >= 0, got {contrast}")
    if not word_weight >= 0:
        raise ValueError(f"word_weight (--ground-words) must be >= 0, got {word_weight}")
    if not echo_weight >= 0 or echo_steps < 0:
        raise ValueError(f"echo weight and steps must be >= 0, got {echo_weight} and {echo_steps}")
    if threads:
        torch.set_num_threads(threads)
    specs = dict(CONNECTORS)
    if preset is not None:
        cfg = caption_preset(preset)
        specs[preset] = (cfg.projector.family, cfg.encoder.tokens, cfg.projector.options)
        connectors, modes, encoder = [preset], [cfg.caption.mode], cfg.encoder.name
        steps, lr, batch_size, warmup = cfg.train.steps, cfg.train.lr, cfg.train.batch_size, cfg.train.warmup_steps
    connectors = list(connectors or DEFAULT)
    unknown = [c for c in connectors if c not in specs]
    if unknown:
        raise ValueError(f"unknown connectors {unknown}; valid: {', '.join(CONNECTORS)}")
    for name in connectors:
        check_encoder(name, encoder, specs[name])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = scene_split(n_train, n_test, seed=seed, objects=objects, swappable=swappable)
    enc = load_vision_encoder(encoder)
    cache = FeatureCache()
    log(f"encoding {len(train)} + {len(test)} scenes with {encoder} (cached after the first run)")
    raw_tr = cache.tokens(enc, [s.load() for s in train])  # (N, T, D_vis)
    raw_te = cache.tokens(enc, [s.load() for s in test])
    captions, truth = [s.caption for s in train], [s.caption for s in test]
    statements = [s.meta.get("canonical", s.caption) for s in train]  # facts in one order, for echo
    gen = {"max_new_tokens": max_new_tokens}
    rows, examples = [], []

    def add(row: dict, said: list[str] | None, loss: float | None = None):
        scores = score(said, test) if said is not None else best_constant(test)
        rows.append({**row, "heldout_loss": loss, **scores})
        if said is not None:
            examples.append({"row": f"{row['connector']} / {row['mode']}",
                             "captions": [{"truth": t, "generated": g} for t, g in zip(truth[:6], said[:6])]})
        log(f"{row['connector']:>28} {row['mode']:>7}: " + " ".join(f"{k} {v:.2f}" for k, v in scores.items()))

    base = build_vlm(lm)  # prefix mode: text-only generation and the untrained connectors
    try:
        add({"connector": "best constant caption (prior)", "mode": "-"}, None)
        with torch.no_grad():
            add({"connector": "text-only LM", "mode": "-", "tokens": 0}, base.generate(None, **gen) * len(test))
        for name in connectors:
            family, tokens, options = specs[name]
            x_tr, x_te = (select_tokens(x, enc.has_cls, tokens) for x in (raw_tr, raw_te))
            torch.manual_seed(seed)
            untrained = build_projector(family, token_dim(enc.hidden_size, tokens), base.dim, **options).eval()
            with torch.no_grad():
                said = base.generate(untrained(x_te.float()), **gen)
            add({"connector": f"untrained {name}", "mode": "prefix", "tokens": untrained.num_output_tokens(
                x_te.shape[1])}, said, held_out_loss(untrained, base, x_te, truth))
            for mode in modes:
                log(f"== {name} ({family} {options}, {tokens} tokens), {mode}")
                recipe = _recipe(name, mode, steps, batch_size, lr, n_train, seed, lm, encoder, warmup, objects,
                                 swap_weight, swappable, word_weight, echo_weight, echo_steps)
                projector, vlm, stats = _train_or_load(out / f"{name}-{mode}.safetensors", recipe, specs[name], x_tr,
                                                       captions, retrain, log, statements)
                try:
                    with torch.no_grad():
                        visual = projector(x_te.float())
                        said = vlm.generate(visual, **gen)
                    row = {"connector": name, "mode": mode, "tokens": projector.num_output_tokens(x_te.shape[1]),
                           "steps": steps, **stats}
                    if echo_steps or echo_weight:
                        test_statements = [s.meta.get("canonical", s.caption) for s in test]
                        reader = EchoWords(vlm, statements + test_statements)
                        row["echo_read"] = sum(r[:len(w)] == w for r, w in zip(
                            reader.read(visual), map(content_words, test_statements))) / len(test)
                    loss = held_out_loss(projector, vlm, x_te, truth)
                    add(row, said, loss)
                    if contrast > 0 and mode == "prefix":
                        with torch.no_grad():  # what the connector makes of an image with nothing in particular
                            blank = projector(x_tr.float().mean(0, keepdim=True))  # (1, M, D)
                            said = vlm.generate(visual, contrast=blank, alpha=contrast, **gen)
                        add({**row, "mode": f"prefix, VCD alpha {contrast:g}"}, said, loss)
                finally:
                    vlm.close()
    finally:
        base.close()
    table = pd.DataFrame(rows)
    first = ["connector", "mode", "tokens", "trainable", "steps", "steps_per_s", "loss_first", "loss_last",
             "heldout_loss", *ATTRS, "relation", "all4", "all5", "one_object", "two_objects", "distinct"]
    table = table[[c for c in first if c in table] + [c for c in table if c not in first]]
    table.to_csv(out / "caption_eval.csv", index=False)
    (out / "caption_eval.md").write_text(table.to_markdown(index=False, floatfmt=".3f"))
    (out / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    log(f"held-out N={len(test)} {objects}-object scenes (color+shape pairs never seen in training), "
        f"{len(train)} training scenes; wrote {out / 'caption_eval.md'}")
    return table
