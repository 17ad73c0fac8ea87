"""The built-in Describe captioner (issue 14 item 1, issue 18 item 3): the best captioner `caption-eval` measured,
made from the bundled models by the named preset `caption-describe` and cached like the other built-ins.

Recipe (config.PRESETS["caption-describe"], BENCHMARKS.md "Captions right on every attribute"): ViT-S/14 read after
blocks 4 and 12, each depth's 256 patch tokens through its own pixel shuffle (projectors/multidepth.py: 16 block-4
tokens and 4 block-12 tokens in the prefix of the frozen SmolLM2-135M), trained through the LM's caption loss on
config.PRESET_DATA's one-object scenes. Training runs caption_eval.train_caption_connector, the code and seed
`caption-eval --preset caption-describe` runs, so the built-in's weights are the ones that command measures; its
held-out captions are scored the same way (caption_eval.score) and recorded in the checkpoint with the recipe, the
split and the training time.

    from vlmviz.builtins import build_describe
    path = build_describe(progress=lambda stage, done, total: print(stage, done, total))

progress(stage, done, total): stage "encoding" (images), "training" (steps) or "captioning" (held-out scenes).
should_stop() is polled between encoder batches and between training steps; a cancelled build raises
BuildCancelled and writes nothing, since a half-trained captioner must never be cached as the built-in.
Shape legend: N scenes, T = 257 encoder tokens, D_vis = 2 x 384 (two depths side by side), M visual tokens.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..features import EncodingCancelled

PRESET = "caption-describe"
N_TEST, SEED, MAX_NEW_TOKENS = 100, 0, 20
TRAINED_ON = ("{n_train} synthetic one-object scenes (vlmviz.data.scenes: a colored circle, square, triangle, star or "
              "diamond, small or large, at one of five places, on a plain background) and their generated captions; "
              "scored on {n_test} scenes of the (color, shape) pairs it never saw. Made for those scenes: on a photo "
              "it describes a colored shape all the same.")


class BuildCancelled(EncodingCancelled):
    """The build was stopped by should_stop(); nothing was saved."""


def recipe(n_train: int | None = None, n_test: int = N_TEST, steps: int | None = None,
           lm: str = "smollm2-135m") -> dict:
    """Everything the captioner is made from (hashed into the built-in's file name by vlmviz.builtins)."""
    from .captioner import lm_name
    from ..config import PRESET_DATA, preset

    cfg, data = preset(PRESET), PRESET_DATA[PRESET]
    t = cfg.train
    return {"preset": PRESET, "encoder": cfg.encoder.name, "tokens": cfg.encoder.tokens,
            "family": cfg.projector.family, "options": cfg.projector.options, "mode": cfg.caption.mode,
            "steps": steps or t.steps, "lr": t.lr, "batch_size": t.batch_size, "warmup": t.warmup_steps,
            "lm": lm_name(lm), "dataset": data["dataset"], "n_train": n_train or data["n_train"], "n_test": n_test,
            "seed": SEED, "max_new_tokens": MAX_NEW_TOKENS}


def build_key(**settings) -> list:
    """The recipe and both frozen models' identities."""
    from .captioner import BUNDLED_LM
    from ..encoders import load_vision_encoder
    from ..text import load_text_space

    r = recipe(**settings)
    lm = load_text_space(BUNDLED_LM).cache_id if r["lm"] == BUNDLED_LM else r["lm"]
    return [r, load_vision_encoder(r["encoder"]).cache_id, lm]


def build_checkpoint(path: str | Path, label: str, progress=None, should_stop=None, log=None, **settings) -> Path:
    """Train the Describe captioner by its recipe, score it on held-out scenes and write it at `path`.
    settings: n_train, n_test, steps, lm (smaller ones for tests; the built-in uses the preset's)."""
    from .evaluate import best_constant, score, train_caption_connector
    from .train import held_out_loss
    from .captioner import save_captioner
    from ..data import scene_split
    from ..encoders import load_vision_encoder, select_tokens
    from ..data.splits import split_record
    from ..features import FeatureCache

    r = recipe(**settings)
    say = log or (lambda message: None)
    report = progress or (lambda stage, done, total: None)
    stop = should_stop or (lambda: False)
    train, test = scene_split(r["n_train"], r["n_test"], seed=r["seed"], objects=1)
    encoder, cache = load_vision_encoder(r["encoder"]), FeatureCache()

    def encoding(done, total):
        report("encoding", done, total)
        if stop():
            raise BuildCancelled(f"cancelled while encoding ({done} of {total} scenes); nothing saved")

    say(f"[vlmviz] describe captioner: encoding {len(train) + len(test)} scenes with {r['encoder']}")
    if stop():
        raise BuildCancelled("cancelled before encoding; nothing saved")
    tokens = cache.tokens(encoder, [s.load() for s in train + test], progress=encoding)  # (N, T, D_vis)
    tokens = select_tokens(tokens, encoder.has_cls, r["tokens"])  # (N, T', D_vis)
    x_tr, x_te = tokens[:len(train)], tokens[len(train):]
    say(f"[vlmviz] describe captioner: {r['steps']} steps through {r['lm']}")
    projector, vlm, result, stats = train_caption_connector(
        r["family"], r["options"], x_tr, [s.caption for s in train], mode=r["mode"], lm=r["lm"], steps=r["steps"],
        lr=r["lr"], batch_size=r["batch_size"], warmup=r["warmup"], seed=r["seed"],
        callback=lambda row: report("training", row["step"], row["steps"]), should_stop=stop)
    try:
        if result.cancelled:
            raise BuildCancelled(f"cancelled after {result.steps_done} of {r['steps']} training steps; nothing saved")
        said = []
        for start in range(0, len(test), 25):  # greedy, as caption-eval decodes
            with torch.no_grad():
                said += vlm.generate(projector(x_te[start:start + 25]), max_new_tokens=r["max_new_tokens"])
            report("captioning", len(said), len(test))
        truth = [s.caption for s in test]
        scores = score(said, test)
        metrics = {**{k: round(v, 4) for k, v in scores.items()},
                   "heldout_loss": round(held_out_loss(projector, vlm, x_te, truth), 4), "N_test": len(test),
                   "prior_all4": round(best_constant(test)["all4"], 4)}
        examples = [{"truth": t, "generated": g} for t, g in zip(truth[:6], said[:6])]
        split = split_record(r["dataset"], r["n_train"], r["n_test"], r["seed"], train, test)
        say(f"[vlmviz] describe captioner: held-out all four right {metrics['all4']:.2f} "
            f"(color {metrics['color']:.2f}, shape {metrics['shape']:.2f}) on {len(test)} scenes")
        stats = {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}
        return save_captioner(path, projector, vlm, r["lm"], encoder=r["encoder"], tokens=r["tokens"], text=r["lm"],
                              label=label, domain="scenes", dataset=r["dataset"], split=split,
                              trained_on=TRAINED_ON.format(**r), recipe=r, metrics=metrics, stats=stats,
                              examples=examples, steps=result.steps_done)
    finally:
        vlm.close()  # the LM is shared per process: leave it as it was
