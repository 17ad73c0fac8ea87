"""vlmviz command line: python -m vlmviz {embed,train,eval,export,import,ablate,lesson,describe,caption-eval,index,search,map} --help

Multi-process / multi-GPU training runs on Hugging Face accelerate:
    accelerate launch -m vlmviz train ...      or      torchrun --nproc_per_node 2 -m vlmviz train ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .config import (CAPTION_MODES, CAPTION_TRAIN, POOLINGS, TOKEN_MODES, CaptionConfig, EncoderConfig,
                     ExperimentConfig, ProjectorConfig, TextConfig, TrainConfig)
from .losses import LOSSES


def _tqdm_progress(desc):
    from tqdm.auto import tqdm

    bar = {}

    def progress(done, total):
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=desc, unit="img")
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar.pop("bar").close()

    return progress


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"error: --option expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_embed(args):
    from .data import SCENES, load_dataset
    from .encoders import load_vision_encoder
    from .data.splits import load_split
    from .features import FeatureCache

    encoder = load_vision_encoder(args.encoder)
    if args.dataset in SCENES or args.dataset == "digits" or args.n_train is not None or args.n_test is not None:
        train, test = load_split(args.dataset, _or(args.n_train, 600), _or(args.n_test, 200), args.seed, log=_warn)
        samples = train + test
    else:  # a folder, COCO json or the gallery: every usable row
        loaded = load_dataset(args.dataset)
        if loaded.problems:
            _warn(f"[vlmviz] {len(loaded.problems)} rows of {args.dataset} skipped, first: {loaded.problems[0]}")
        samples = loaded.samples
    cache = FeatureCache(args.cache)
    tokens = cache.tokens(encoder, [s.load() for s in samples],
                          progress=_tqdm_progress(f"encoding with {args.encoder}"))
    print(f"{len(samples)} images -> tokens {tuple(tokens.shape)}; {cache.hits} cache hits, {cache.misses} encoded")


def _or(value, default):
    return default if value is None else value


def _check_writable(path: str) -> None:
    """Refuse an --out that cannot be written before any training time is spent."""
    import tempfile

    folder = Path(path).resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vlmviz-write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write the checkpoint {path}: {err.strerror or err} in {folder}") from None


def _experiment(args) -> ExperimentConfig:
    from .config import preset

    cfg = preset(args.preset) if args.preset else ExperimentConfig()
    if args.encoder: cfg.encoder.name = args.encoder  # noqa: E701
    if args.tokens: cfg.encoder = EncoderConfig(cfg.encoder.name, args.tokens)  # noqa: E701
    if args.text: cfg.text = TextConfig(args.text)  # noqa: E701
    if args.option and not args.projector:
        raise ValueError("--option sets an option of the connector named by --projector; give --projector too")
    if args.projector: cfg.projector = ProjectorConfig(args.projector, _options(args.option))  # noqa: E701
    overrides = {k: getattr(args, k) for k in ("loss", "pooling", "steps", "lr", "batch_size", "seed", "device",
                                                "eval_every", "warmup_steps", "weight_decay")
                 if getattr(args, k) is not None}
    if args.hard_negatives:
        overrides["hard_negatives"] = True
    base = cfg.train.__dict__
    if overrides.get("loss") == "caption" and base["loss"] != "caption":  # retrieval defaults would crawl
        base = {**base, **CAPTION_TRAIN}
    cfg.train = TrainConfig(**{**base, **overrides})
    caption = {k: v for k, v in (("mode", args.caption_mode), ("every", args.caption_every),
                                 ("prompt", args.prompt)) if v is not None}
    cfg.caption = CaptionConfig(**{**cfg.caption.__dict__, **caption})
    return cfg


def cmd_train(args):
    from tqdm.auto import tqdm

    from .runs.experiment import check_training_set, run

    cfg = _experiment(args)
    check_training_set(cfg, args.dataset)
    _check_writable(args.out)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or args.accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=cfg.train.device == "cpu")
    main = accelerator is None or accelerator.is_main_process
    bar = {}  # made at the first step, so a data error is never preceded by an empty "training 0%" bar

    def on_step(event):
        if "bar" not in bar:
            bar["bar"] = tqdm(total=cfg.train.steps, desc="training", disable=not main)
        bar["bar"].update(1)
        bar["bar"].set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2e}")
        if event["metrics"] and main and "i2t_R@1" in event["metrics"]:
            m = event["metrics"]
            tqdm.write(f"step {event['step']}: i2t R@1 {m['i2t_R@1']:.3f}  t2i R@1 {m['t2i_R@1']:.3f}  "
                       f"gap {m['modality_gap']:.3f}  (held-out N={m['N']}, {m['candidates']} distinct captions)")

    out = run(cfg, args.dataset, _or(args.n_train, 600), _or(args.n_test, 200), out=args.out, callback=on_step,
              accelerator=accelerator, progress=_tqdm_progress("encoding") if main else None)
    if "bar" in bar:
        bar["bar"].close()
    if main:
        first, last = out.result.history[0]["loss"], out.result.history[-1]["loss"]
        print(f"loss {first:.4f} -> {last:.4f} in {out.result.steps_done} steps ({out.result.seconds:.1f}s on "
              f"{out.result.device})")
        if out.before and out.after:
            where = f"held-out N={out.after['N']}"
            if "candidates" in out.after:
                where += f", ranked against {out.after['candidates']} distinct captions"
            for key in ("i2t_R@1", "t2i_R@1", "modality_gap", "caption_loss"):
                if key in out.after:
                    print(f"{key:>14}: {out.before[key]:.3f} -> {out.after[key]:.3f} ({where})")
        for ex in out.examples or []:
            print(f"  held-out truth: {ex['truth']!r}\n       generated: {ex['generated']!r}")
        if out.checkpoint:
            print(f"checkpoint: {out.checkpoint}")
        if args.history:
            Path(args.history).write_text(json.dumps(out.result.history))


def _eval_split(args, ck: dict, dataset: str):
    """The pairs to score and what they are. 'test': the checkpoint's own held-out split (its recorded seed and
    sizes, so no training image is scored); 'all': every usable row (another folder than the training one)."""
    from .data import SCENES, load_dataset
    from .data.splits import load_split, split_digest

    recorded = ck.get("split") or {}
    trained_on = recorded.get("dataset", ck.get("dataset"))
    same = trained_on is not None and _same_dataset(dataset, trained_on)
    mode = args.split
    if mode == "auto":
        mode = "test" if same or dataset in SCENES or trained_on is None else "all"
    if mode == "all":
        if dataset in SCENES:
            raise ValueError(f"--split all needs a folder or COCO json; {dataset} is generated: use --split test")
        if same:
            _warn(f"warning: {dataset} is what the checkpoint trained on; --split all scores its "
                  f"{recorded.get('train_size', 'unknown number of')} training pairs too")
        loaded = load_dataset(dataset)
        if loaded.problems:
            _warn(f"[vlmviz] {len(loaded.problems)} rows of {dataset} skipped, first: {loaded.problems[0]}")
        if len(loaded.samples) < 2:
            raise ValueError(f"{dataset} has {len(loaded.samples)} usable pairs; scoring needs at least 2")
        return [], loaded.samples, {"mode": "all", "dataset": dataset, "N": len(loaded.samples)}
    asked = {"seed": args.seed, "n_train": args.n_train, "n_test": args.n_test}
    fallback = {"seed": 0, "n_train": 600, "n_test": 200}
    use = {k: v if v is not None else (recorded.get(k, fallback[k]) if same else fallback[k]) for k, v in asked.items()}
    if same and not recorded:
        _warn("warning: this checkpoint records no split (made before vlmviz recorded one); scoring the split "
              f"seed={use['seed']} n_train={use['n_train']} n_test={use['n_test']}, which may hold training images")
    differs = {k: v for k, v in asked.items() if same and recorded and v is not None and v != recorded.get(k)}
    if differs:
        _warn(f"warning: the checkpoint trained on the split seed={recorded['seed']} n_train={recorded['n_train']} "
              f"n_test={recorded['n_test']}; scoring another ({', '.join(f'{k}={v}' for k, v in differs.items())}) "
              "can put training images in the test set")
    train, test = load_split(dataset, use["n_train"], use["n_test"], use["seed"], log=_warn)
    if same and recorded.get("test_digest") and not differs and split_digest(test) != recorded["test_digest"]:
        _warn(f"warning: {dataset} changed since the checkpoint was trained: its test split is not the one recorded")
    return train, test, {"mode": "test", "dataset": dataset, **use, "N": len(test),
                         "same_as_training": bool(same and not differs)}


def _same_dataset(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    return a == b or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve())


def cmd_eval(args):
    from .checkpoints import load_checkpoint, read_config
    from .data import SCENES
    from .encoders import load_vision_encoder, token_dim
    from .runs.experiment import featurize
    from .eval.openset import ATTRIBUTES, candidate_set, metadata_attributes, open_set_report
    from .text import load_text_space
    from .train import embed, evaluate

    ck = read_config(args.checkpoint)
    if not all(ck.get(k) for k in ("encoder", "tokens", "text")):
        raise ValueError(f"{Path(args.checkpoint).name} records no encoder, token selection or text space; "
                         "import it with --encoder, --tokens and --text")
    extra = []
    if args.candidates:
        extra = [line.strip() for line in Path(args.candidates).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        if not extra:
            raise ValueError(f"{args.candidates}: no captions in it; expected one candidate caption per line")
    cfg = ExperimentConfig(EncoderConfig(ck["encoder"], ck["tokens"]), TextConfig(ck["text"]))
    enc, txt = load_vision_encoder(cfg.encoder.name), load_text_space(cfg.text.name)
    projector, _ = load_checkpoint(args.checkpoint, token_dim(enc.hidden_size, cfg.encoder.tokens), txt.dim,
                                   cfg.encoder.name, cfg.text.name)
    dataset = args.dataset or ck.get("dataset") or "scenes-1obj"
    train, test, split = _eval_split(args, ck, dataset)
    feats = featurize(cfg, test, progress=_tqdm_progress("encoding"))
    pooling = ck.get("pooling", "mean")
    report = {"split": split, "closed_set": evaluate(projector, feats.tokens, feats.text, pooling)}
    # open set: every seen and held-out caption, each hard-negative twin (scenes) and the given candidates compete;
    # per-attribute accuracy from the scenes' facts or a folder's metadata columns
    attributes = ATTRIBUTES if dataset in SCENES else metadata_attributes(list(train) + list(test))
    captions, metas = candidate_set(train, test, attributes, extra)
    report["open_set"] = open_set_report(embed(projector, feats.tokens, pooling), test, captions, metas, txt.encode,
                                         attributes)
    print(json.dumps(report, indent=2))


def cmd_export(args):
    from .checkpoints import export_connector, load_checkpoint

    projector, _ = load_checkpoint(args.checkpoint)
    print(f"wrote {export_connector(projector, args.out, args.style)}")


def cmd_import(args):
    from .checkpoints import import_llava_projector, save_checkpoint
    from .encoders import load_vision_encoder, token_dim
    from .text import load_text_space

    in_dim = token_dim(load_vision_encoder(args.encoder).hidden_size, args.tokens) if args.encoder else None
    out_dim = load_text_space(args.text).dim if args.text else None
    projector = import_llava_projector(args.path, in_dim, out_dim)
    path = save_checkpoint(args.out, projector, encoder=args.encoder, tokens=args.tokens, text=args.text,
                           pooling="mean", source=str(args.path))
    print(f"{projector.family} {projector.in_dim} -> {projector.out_dim} ({projector.num_params:,} params): {path}")


def cmd_ablate(args):
    import pandas as pd

    from .runs.ablate import run_ablation

    tables = []
    for enc in args.encoder:
        for txt in args.text:
            print(f"== {enc} x {txt} on {args.dataset}")
            tables.append(run_ablation(enc, txt, args.family, steps=args.steps, batch_size=args.batch_size,
                                       lr=args.lr, loss=args.loss, n_train=args.n_train, n_test=args.n_test,
                                       dataset=args.dataset, seed=args.seed, seeds=args.seeds,
                                       weight_decay=args.weight_decay, budget_s=args.budget_s,
                                       false_negatives=not args.keep_false_negatives, captions=args.captions,
                                       hard_negatives=args.hard_negatives))
    table = pd.concat(tables, ignore_index=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "ablation.csv", index=False)
    cols = [c for c in ("encoder", "text", "connector", "kind", "i2t_R@1", "i2t_R@1_std", "i2t_R@5", "t2i_R@1",
                        "swap_acc", "role_swap_acc", "count_swap_acc", "acc_color", "acc_shape", "acc_position",
                        "acc_relation", "acc_count", "modality_gap", "params", "out_tokens", "steps_done", "train_s")
            if c in table and table[c].notna().any()]
    first = table.iloc[0]
    header = (f"{args.dataset}: N_test={int(first['N_test'])} images ranked against {int(first['candidates'])} "
              f"candidate captions ({int(first['colliding_captions'])} of them collide in the text space), "
              f"{args.seeds} seed(s)\n\n")
    (out / "ablation.md").write_text(header + table[cols].to_markdown(index=False, floatfmt=".3f"))
    print(header + table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {out / 'ablation.csv'} and {out / 'ablation.md'}")


def cmd_describe(args):
    from .caption.captioner import BUNDLED_LM, build_vlm, caption_config, load_captioner

    gen = {"max_new_tokens": args.max_new_tokens, "sample": args.sample, "temperature": args.temperature,
           "top_p": args.top_p, "seed": args.seed}
    if args.text_only:
        lm = args.lm or (caption_config(args.paths[0])["caption"]["lm"] if args.paths else BUNDLED_LM)
        vlm = build_vlm(lm)
        print(f"text-only {Path(lm).name}: {vlm.generate(None, **gen)[0]}")
        return
    if len(args.paths) < 2:
        raise ValueError("describe needs a checkpoint trained with --loss caption and at least one image "
                         "(or --text-only for the LM alone)")
    captioner = load_captioner(args.paths[0])
    images = args.paths[1:]
    for path, caption in zip(images, captioner.describe(images, **gen)):
        print(f"{path}: {caption}")


def cmd_caption_eval(args):
    from .caption.evaluate import run_caption_eval

    from .config import PRESET_DATA

    if args.preset and (args.connector or args.encoder or args.mode):
        raise ValueError("--preset names the connector, its encoder and mode: drop --connector, --encoder and --mode "
                         "(or drop --preset)")
    data = PRESET_DATA.get(args.preset, {})
    n_train = args.n_train or data.get("n_train", 600)
    objects = args.objects or data.get("objects", 1)
    run_caption_eval(connectors=args.connector, modes=args.mode or list(CAPTION_MODES), steps=args.steps,
                     batch_size=args.batch_size, lr=args.lr, n_train=n_train, n_test=args.n_test, lm=args.lm,
                     encoder=args.encoder or "vit-s14", max_new_tokens=args.max_new_tokens, seed=args.seed,
                     out_dir=args.out_dir, threads=args.threads, retrain=args.retrain, warmup=args.warmup,
                     objects=objects, preset=args.preset, swap_weight=args.swap_negatives,
                     swappable=args.swappable, contrast=args.contrast, word_weight=args.ground_words,
                     echo_weight=args.echo, echo_steps=args.echo_steps, log=print)


def cmd_inspect(args):
    """A real VLM's connector on images: its composition, then each image's projected tokens and nearest words."""
    from .views.pipeline import Pipeline

    if not args.vlm:
        raise ValueError("inspect needs --vlm PATH: the folder (or cached Hugging Face id) of a saved VLM")
    pipe = Pipeline.from_vlm(args.vlm, image_size=args.image_size, text=args.vlm_text)
    s = pipe.info["vlm"]
    print(f"{s['family']} {s['source']}: {s['tower_tokens']} tower tokens ({s['grid'][0]}x{s['grid'][1]} grid"
          f"{' + CLS' if s['has_cls'] else ''}, {s['d_vis']}-d) -> {s['connector']} ({s['connector_params']:,} "
          f"params) -> {s['tokens_per_image']} tokens of {s['d_txt']}-d per {s['image_size']} px image")
    print(f"  text space: {s['text_space']} ({s['text_kind']})")
    for note in s["notes"]:
        print(f"  note: {note}")
    for path in args.images:
        rows, note = pipe.nearest_words(path, k=args.k)
        print(f"{path}: {note}")
        for row in rows:
            print("  " + " | ".join(row))


def cmd_lesson(args):
    from .runs.lesson import run_lesson

    run_lesson(real=args.real, steps=args.steps, log=print)


def _add_train_args(p):
    p.add_argument("--preset", help="a named preset from vlmviz.config.PRESETS")
    p.add_argument("--encoder", help="vit-s14, efficientnet-lite0, or a Hugging Face id / folder")
    p.add_argument("--tokens", choices=TOKEN_MODES)
    p.add_argument("--text", help="smollm2-135m, smollm2-135m-ctx, minilm-l6, or a Hugging Face id / folder")
    p.add_argument("--projector", help="connector family, e.g. linear, mlp2x_gelu, qformer")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="projector option, repeatable")
    p.add_argument("--loss", choices=LOSSES + ("caption",),
                   help="caption = LLaVA stage 1 through the frozen LM named by --text (needs --pooling none)")
    p.add_argument("--pooling", choices=POOLINGS)
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay of the projector (default 0.01)")
    p.add_argument("--hard-negatives", action="store_true",
                   help="scene sets: contrast each image with its own color- and role-swapped captions too "
                        "(those naming only seen color+shape pairs); infonce or sigmoid")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--caption-mode", choices=CAPTION_MODES,
                   help="loss caption: visual tokens as LM prefix (LLaVA) or through gated cross-attention (Flamingo)")
    p.add_argument("--caption-every", type=int, help="xattn: a cross-attention block before every k-th LM layer")
    p.add_argument("--prompt", help="loss caption: the instruction after the image (default 'Describe the image.')")


def _add_data_args(p, dataset="scenes-1obj"):
    p.add_argument("--dataset", default=dataset,
                   help="gallery, digits, a synthetic scene set (scenes-1obj, scenes-2obj, scenes-3obj, scenes-count, "
                        "scenes-2obj-rel, scenes-3obj-rel), an imagefolder path or a COCO captions .json")
    p.add_argument("--n-train", type=int, default=None, help="training pairs (default 600)")
    p.add_argument("--n-test", type=int, default=None, help="held-out pairs (default 200; at most a fifth of a folder)")


def _add_threads(p):
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def main(argv=None) -> int:
    # third-party "Loading weights" / download bars would bury ours; read by huggingface_hub and transformers at import
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from .checkpoints import CheckpointError  # noqa: F401 - a ValueError, caught below
    from .data import SCENES

    parser = argparse.ArgumentParser(prog="python -m vlmviz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="run a dataset through a frozen encoder into the feature cache (a folder: "
                                     "every row; a scene set: --n-train + --n-test scenes)")
    p.add_argument("--encoder", default="vit-s14")
    p.add_argument("--cache", help="cache folder (default: $VLMVIZ_CACHE/features)")
    p.add_argument("--seed", type=int, default=0)
    _add_threads(p)
    _add_data_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("train", help="train a projector on cached features and write a checkpoint")
    _add_train_args(p)
    _add_data_args(p)
    p.add_argument("--out", default="projector.safetensors", help="checkpoint path (safetensors)")
    p.add_argument("--history", help="write the per-step loss history as JSON here")
    p.add_argument("--accelerate", action="store_true", help="use accelerate even in a single process")
    _add_threads(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="metrics of a checkpoint: on its own held-out split, or every row of a folder")
    p.add_argument("checkpoint")
    p.add_argument("--split", choices=("auto", "test", "all"), default="auto",
                   help="test: the held-out split the checkpoint recorded (its seed and sizes); all: every usable row "
                        "of --dataset; auto (default): test on the training dataset, all on any other folder")
    p.add_argument("--candidates", metavar="FILE", help="extra candidate captions, one per line; the candidates are "
                   "always every distinct caption of the scored rows (and of the training split with --split test)")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the checkpoint's)")
    _add_threads(p)
    _add_data_args(p, dataset=None)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint for LLaVA / transformers' Llava (linear, mlpNx_gelu) or "
                                      "as Qwen2-VL's, InternVL's, Idefics3's or Gemma 3's connector")
    p.add_argument("checkpoint")
    p.add_argument("--style", choices=["llava", "hf-llava", "hf", "qwen2-vl", "internvl", "idefics3", "gemma3"],
                   default="llava", help="hf = hf-llava")
    p.add_argument("--out", default="mm_projector.bin")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="import a LLaVA mm_projector.bin or HF Llava projector as a checkpoint")
    p.add_argument("path")
    p.add_argument("--encoder", help="check the input width against this encoder")
    p.add_argument("--tokens", choices=TOKEN_MODES, default="patch")
    p.add_argument("--text", help="check the output width against this text space")
    p.add_argument("--out", default="imported.safetensors")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("ablate", help="the connector ablation table on held-out attribute combinations")
    p.add_argument("--encoder", nargs="+", default=["vit-s14"])
    p.add_argument("--text", nargs="+", default=["smollm2-135m"])
    p.add_argument("--family", nargs="+", help="families to train (default: all)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--loss", choices=LOSSES, default="infonce")
    p.add_argument("--dataset", default="scenes-1obj",
                   help="a synthetic scene set (" + ", ".join(SCENES) + "), an imagefolder path (metadata.jsonl / "
                        ".csv; its metadata columns are scored as attributes) or a COCO captions .json")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1, help="train each family with this many seeds; report the mean")
    p.add_argument("--weight-decay", type=float, default=0.5)
    p.add_argument("--budget-s", type=float, default=300.0, help="training seconds per connector and seed")
    p.add_argument("--keep-false-negatives", action="store_true",
                   help="let scenes stating the same facts be each other's InfoNCE negatives (the plain recipe)")
    p.add_argument("--captions", choices=("auto", "drawn", "canonical"), default="auto",
                   help="train on each scene's caption as drawn or on its canonical statement (auto: canonical for "
                        "scenes with two or three objects, where a converse phrasing states the same fact)")
    p.add_argument("--hard-negatives", action="store_true",
                   help="InfoNCE also pushes each scene from its color- and role-swapped twins (those naming only "
                        "seen color+shape pairs)")
    p.add_argument("--out-dir", default="artifacts/ablation")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("lesson", help="reproduce the classic projector lesson (cosine loss falling)")
    p.add_argument("--real", action="store_true", help="the same recipe on real encoder features")
    p.add_argument("--steps", type=int, default=200)
    p.set_defaults(func=cmd_lesson)

    p = sub.add_parser("inspect", help="open a real VLM's connector (LLaVA, Qwen2-VL, InternVL, Idefics3, Gemma 3 "
                                       "...) and show each image's projected tokens as nearest LM words")
    p.add_argument("--vlm", metavar="PATH", help="folder (or cached Hugging Face id) of a saved VLM")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--k", type=int, default=3, help="nearest words per token")
    p.add_argument("--image-size", type=int, help="square side for Qwen2-VL / Mistral 3 (default 448)")
    p.add_argument("--vlm-text", choices=("embed", "ctx"), default="embed",
                   help="the VLM's text space: its LM input-embedding table (token mean, the space its connector "
                        "writes into; nearest words from the table) or ctx, the mean of its LM's last hidden states "
                        "(order-aware; nearest words through the LM head)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("describe", help="caption images with a connector trained with --loss caption")
    p.add_argument("paths", nargs="*", metavar="CHECKPOINT IMAGE", help="a caption checkpoint, then image files")
    p.add_argument("--text-only", action="store_true", help="the LM alone, with no image: the baseline")
    p.add_argument("--lm", help="--text-only: which LM (default: the checkpoint's, else smollm2-135m)")
    p.add_argument("--sample", action="store_true", help="nucleus sampling instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("caption-eval", help="held-out attribute accuracy of generated captions per connector")
    p.add_argument("--connector", nargs="+", default=None, help="connectors (default: resampler pixel_shuffle "
                   "linear-pooled); see vlmviz.caption.evaluate.CONNECTORS")
    p.add_argument("--preset", help="a caption preset (caption-stage1, caption-describe, caption-relations): its connector, encoder, "
                   "mode and training settings, and its number of training scenes unless --n-train is given")
    p.add_argument("--mode", nargs="+", choices=CAPTION_MODES, help="default: prefix and xattn")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=CAPTION_TRAIN["lr"])
    p.add_argument("--n-train", type=int, help="training scenes (default 600, or the preset's)")
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--warmup", type=int, help="linear warmup steps before the cosine decay (default: a tenth of the "
                   "steps, at most 10)")
    p.add_argument("--objects", type=int, choices=(1, 2), help="1: one-object scenes (color, shape, size, "
                   "position); 2: two-object relation scenes (both colors and shapes and the relation); default 1, "
                   "or the preset's (caption-relations: 2)")
    p.add_argument("--swap-negatives", type=float, default=0.0, metavar="W", help="two-object scenes: add W x the "
                   "ranking of each caption over its color-swapped twin to the caption loss (default 0: off)")
    p.add_argument("--swappable", action="store_true", help="two-object scenes: train only on scenes whose "
                   "color-swapped twin names seen (color, shape) pairs too, so the pairs never tell which color goes "
                   "with which shape (the test scenes are unchanged)")
    p.add_argument("--ground-words", type=float, default=0.0, metavar="W", help="add W x the word-grounding loss: "
                   "each caption word near some visual token in the LM's embedding space (default 0: off)")
    p.add_argument("--echo-steps", type=int, default=0, metavar="S", help="first train the connector alone for S "
                   "steps (no LM) to make its first visual tokens the content words of each scene's statement, in "
                   "one fixed order ('red circle left blue square'); default 0: off")
    p.add_argument("--echo", type=float, default=0.0, metavar="W", help="keep W x that echo loss beside the caption "
                   "loss (default 0: off)")
    p.add_argument("--contrast", type=float, default=0.0, metavar="ALPHA", help="also decode each trained prefix "
                   "connector contrastively (VCD: minus ALPHA x what it says of the mean training image), as a row "
                   "of its own; default 0: off")
    p.add_argument("--lm", default="smollm2-135m", help="smollm2-135m or a Hugging Face causal LM folder")
    p.add_argument("--encoder", help="default vit-s14; vit-s14@4 reads block 4, vit-s14@4+12 both depths (the "
                   "pixel_shuffle-2depth connectors need two)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--retrain", action="store_true", help="train even where a matching checkpoint exists")
    p.add_argument("--out-dir", default="artifacts/caption_eval")
    p.set_defaults(func=cmd_caption_eval)

    from .search.cli import add_parsers as add_search_parsers

    add_search_parsers(sub)  # index, search
    from .views.maps import add_parser as add_map_parser

    add_map_parser(sub)

    args = parser.parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        args.func(args)
    except (ValueError, OSError, FloatingPointError) as err:  # the user's input: one line, no traceback
        print(f"error: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
