"""vlmviz web app: layout and event wiring only; the work happens in the vlmviz package.

    python app.py [--host 127.0.0.1] [--port 7860] [--share]

Handlers never raise into Gradio: a raised error paints every output of the event with an "Error" badge (the top
bar's Connector menu included). They return cleared outputs and one message instead (vlmviz.views.session.report).
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import threading
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

# transformers resolves its classes lazily; two first requests resolving them at once from worker threads can fail
# half-way ("cannot import name 'Dinov2Model'", seen at start-up): resolve the frozen models' classes here, once
from transformers import (AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, Dinov2Model,  # noqa: E402,F401
                          LlamaForCausalLM, SiglipVisionModel, ViTModel)

from vlmviz import builtins  # noqa: E402
from vlmviz.caption import describe  # noqa: E402
from vlmviz.runs import scene_connector  # noqa: E402
from vlmviz.views import background, domain, eta, maps, pipeline, plots, session, vlm_view  # noqa: E402
from vlmviz.config import CAPTION_MODES, CAPTION_TRAIN, POOLINGS, TOKEN_MODES  # noqa: E402
from vlmviz.data import list_datasets, load_dataset, load_gallery  # noqa: E402
from vlmviz.encoders import list_vision_encoders  # noqa: E402
from vlmviz.losses import LOSSES  # noqa: E402
from vlmviz.projectors import list_projectors  # noqa: E402
from vlmviz.views.reduce import METHODS  # noqa: E402
from vlmviz.paths import cache_dir  # noqa: E402
from vlmviz.search import ui as search_ui  # noqa: E402
from vlmviz.text import list_text_spaces  # noqa: E402

MAPS_DIR = cache_dir("app", "maps")  # the linked maps' HTML files, served to the page as they are
gr.set_static_paths([str(MAPS_DIR)])

GALLERY = load_gallery()
SCENES = scene_connector.scenes_gallery()  # held-out scenes: what the scenes connector is for
BUILT_INS = list(builtins.BUILT_IN)  # trained connectors ready on arrival, the photo one first
FAMILIES = ["linear", "mlp2x_gelu"] + [p for p in list_projectors() if p not in ("linear", "mlp", "identity")]
UNTRAINED = [f"untrained {f}" for f in FAMILIES]
DESCRIBE = background.DescribeBuild()  # the built-in Describe captioner, built once in the background
RECIPES = session.recipes()
DEFAULT_RECIPE = next(iter(RECIPES))
MAP_CAP, TRAIN_CAP, LINKED_CAP = 300, 4000, 100_000  # classic map, training pairs, linked WebGL maps
DEFAULT_ENCODER, DEFAULT_TEXT = "vit-s14", "smollm2-135m"
CSS = """
#ranking .label-name {font-size: 0.95em; display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical;
  overflow: hidden}
#scores th, #scores thead span {white-space: nowrap; word-break: normal}
#scores td {vertical-align: top}
#scores td:not(:nth-child(2)) span {white-space: nowrap; word-break: normal}
#gallery .grid-wrap {min-height: 0 !important; max-height: none !important; height: auto !important;
  overflow-y: visible !important; padding-top: 36px !important}
#gallery .grid-container {grid-template-columns: repeat(auto-fill, minmax(64px, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important; gap: 6px !important}
#gallery .thumbnail-item {height: auto !important; aspect-ratio: 1 / 1}
#scenes-gallery .grid-wrap {min-height: 0 !important; max-height: none !important; height: auto !important;
  overflow-y: visible !important; padding-top: 36px !important}
#scenes-gallery .grid-container {grid-template-columns: repeat(6, minmax(0, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important; gap: 6px !important}
#scenes-gallery .thumbnail-item {height: auto !important; aspect-ratio: 1 / 1}
#scenes-gallery .caption-label {display: none}
#words table {table-layout: fixed; width: 100% !important; min-width: 0 !important}
#words th, #words td {padding: 0 !important}
#words th *, #words td * {font-family: var(--font) !important; font-size: 12px !important; line-height: 1.25;
  overflow-wrap: anywhere; word-break: normal}
#words .cell-wrap {padding: 3px 4px !important}
#words .table-wrap, #words table {max-width: 100%}
.vv-note {color: var(--body-text-color-subdued); font-size: 0.9em}
.vv-msg p {margin: 0.2em 0}
footer {display: none !important}
"""
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="orange")
INTRO = ("**vlmviz** shows what the *connector* of a vision-language model does: a frozen vision encoder turns the "
         "image into tokens, the connector maps them into a frozen text space, and captions are ranked by cosine "
         "similarity. The built-in connectors are trained (each says on what); untrained ones rank by chance. Train "
         "your own in the **Train** tab, then pick it here.")
METRIC_HELP = ("**i2t / t2i R@K**: how often the true caption (an image carrying the caption) is among the K nearest, "
               "ranked against the distinct captions (`candidates`) · **modality_gap**: "
               "distance between the mean image and mean caption direction (CLIP about 0.82) · **alignment**: mean "
               "squared distance of true pairs (lower is better) · **uniformity**: how evenly vectors spread (lower "
               "is more uniform) · **mutual_knn**: overlap of image and caption k-nearest neighbours · **cka**: "
               "similarity of the two geometries (0-1) · N pairs, k neighbours as shown.")


def owner_of(owner: str, request: gr.Request | None) -> str:
    """The browser's owner id (restored from its storage on load); API clients, which run no load event, get one
    per Gradio session."""
    return owner or (request.session_hash if request else "local")


def contained(action: str, fallback):
    """Run the handler; on failure return fallback(message): cleared outputs plus the one message."""

    def wrap(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - never let one request break the page or the server
                return fallback(session.report(err, action))

        return wrapper

    return wrap


def choices(checkpoints: dict) -> list[str]:
    return BUILT_INS + list(checkpoints) + vlm_view.opened() + UNTRAINED


def _ck_rows(checkpoints):
    return [[label, os.path.basename(path)] for label, path in checkpoints.items()]


# ---- Inspect ------------------------------------------------------------------------------------------------
def pick_gallery(projector, evt: gr.SelectData):
    item = GALLERY[evt.index]
    return str(item.path), "\n".join([item.caption, *item.distractors]), builtins.fitting_built_in(projector, "photo")


def pick_scene(projector, evt: gr.SelectData):
    item = SCENES[evt.index]  # its caption, its color-swapped twin and other held-out captions
    return str(item.path), "\n".join([item.caption, *item.distractors]), builtins.fitting_built_in(projector, "scene")


def connector_fit(image, projector, checkpoints):
    """Beside the ranking: whether this connector's ranking means anything on this kind of image."""
    try:
        return domain.choice_note(projector, checkpoints, image)
    except Exception:  # noqa: BLE001 - Inspect has already said what is wrong
        return ""


def _clamp(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


@contained("inspect", lambda msg: (None, [], None, gr.update(choices=[], value=None), msg))
def inspect(image, captions, encoder, text, projector, tokens, temperature, checkpoints):
    img = session.open_upload(image)
    pipe = pipeline.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
    rows = pipe.rank_captions(img, captions, temperature)
    label = {r["caption"]: r["prob"] for r in rows}
    table = [[i + 1, _clamp(r["caption"]), round(r["cosine"], 3), round(r["prob"], 3),
              ", ".join(f"#{j}" for j in r["collides_with"])] for i, r in enumerate(rows)]
    caps = [r["caption"] for r in rows]
    colliding = sum(bool(r["collides_with"]) for r in rows)
    shapes = {**pipe.describe(), "colliding_captions": f"{colliding} of {len(rows)} captions share a vector with "
              f"another in {pipe.text.name} (cosine > 0.999): no connector can rank them apart"}
    return label, table, shapes, gr.update(choices=caps, value=caps[0]), ""


@contained("heatmap", lambda msg: (None, msg))
def heatmap(image, caption, encoder, text, projector, tokens, checkpoints):
    if image is None or not caption:
        return None, ""
    pipe = pipeline.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
    img = session.open_upload(image)
    grid, note = pipe.patch_similarity(img, caption)
    if grid is None:
        return None, note
    return plots.heatmap_overlay(pipe.encoder.view(img), grid), f"{note} vs *{caption}*"


def nearest_words(image, encoder, text, projector, tokens, checkpoints, lens="embedding", layer=8):
    """Runs after Inspect (and when the lens or layer changes); when Inspect failed it clears its panel and adds no
    second message. lens / layer: vlmviz.lenses, read by Pipeline.nearest_words."""
    try:
        img = session.open_upload(image)
        pipe = pipeline.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
    except Exception:  # noqa: BLE001 - Inspect has already said what is wrong
        return None, ""
    if lens == "embedding" and not pipe.text.has_vocab:
        return None, f"{pipe.text.name} has no vocabulary readout"
    try:
        return pipe.nearest_words(img, k=2, lens=lens or "embedding", layer=int(layer or 0))
    except Exception as err:  # noqa: BLE001
        return None, session.report(err, "nearest words")


@contained("describe", lambda msg: (msg, ""))
def describe_image(image, projector, mode, checkpoints):
    """The text, and beside it a warning when the captioner is undertrained or the text is no caption."""
    fallback = DESCRIBE.ready()
    if describe.caption_checkpoint(projector, checkpoints) is None and fallback is None:
        return (describe.describe_choice(projector, checkpoints, None, mode) + " Or build the built-in Describe "
                "captioner with the button below (" + DESCRIBE.estimate + ")."), ""
    return describe.describe_with_note(projector, checkpoints, session.open_upload(image), mode, fallback=fallback)


def describe_status():
    """The built-in captioner's line and whether to keep polling it (only while it builds)."""
    running = DESCRIBE.state == "running"
    return DESCRIBE.message(), gr.Timer(active=running), gr.update(visible=not running and not DESCRIBE.ready()), \
        gr.update(visible=running)


def describe_build():
    DESCRIBE.start()
    return describe_status()


def describe_cancel():
    DESCRIBE.cancel()
    return describe_status()


def follow_checkpoint(projector, checkpoints, encoder=None, text=None):
    """The top bar shows what the chosen connector really reads: a checkpoint fixes encoder, text and tokens, a
    real VLM shows its own tower and LM table and how it is composed."""
    if vlm_view.is_vlm_choice(projector):
        try:
            pipe = pipeline.resolve_pipeline(projector, checkpoints, encoder, text, "all")
        except Exception as err:  # noqa: BLE001
            return gr.update(), gr.update(), gr.update(), session.report(err, "opening the VLM")
        fixed = dict(interactive=False, info="set by the opened VLM")
        return (gr.update(value=pipe.encoder.name, **fixed), gr.update(value=pipe.text.name, **fixed),
                gr.update(value="all", **fixed), vlm_view.composition(pipe))
    if projector in checkpoints:
        try:
            info = session.checkpoint_summary(checkpoints[projector])
        except Exception as err:  # noqa: BLE001
            return gr.update(), gr.update(), gr.update(), session.report(err, "reading the checkpoint")
        fixed = dict(interactive=False, info="set by the chosen checkpoint")
        note = (f"Trained on **{info['dataset'] or 'unknown data'}** ({info['steps']} steps"
                f"{', cancelled' if info['cancelled'] else ''}); outside that data its ranking means little.")
        return (gr.update(value=info["encoder"], **fixed), gr.update(value=info["text"], **fixed),
                gr.update(value=info["tokens"], **fixed), note)
    if projector in builtins.BUILT_IN:  # built from the bundled models on first use (setup.sh builds them ahead)
        try:
            info = session.checkpoint_summary(builtins.built_in_checkpoint(projector))
            note = builtins.built_in_note(projector)
        except Exception as err:  # noqa: BLE001
            return gr.update(), gr.update(), gr.update(), session.report(err, "building the built-in connector")
        fixed = dict(interactive=False, info="set by the built-in connector")
        return (gr.update(value=info["encoder"], **fixed), gr.update(value=info["text"], **fixed),
                gr.update(value=info["tokens"], **fixed), note)
    free = dict(interactive=True, info=None)
    if vlm_view.is_vlm_part(encoder) or vlm_view.is_vlm_part(text):  # leaving a VLM: back to the bundled models
        return (gr.update(value=DEFAULT_ENCODER, **free), gr.update(value=DEFAULT_TEXT, **free), gr.update(**free),
                "Untrained connector: its ranking is chance. Train one in the Train tab.")
    return (gr.update(**free), gr.update(**free), gr.update(**free),
            "Untrained connector: its ranking is chance. Train one in the Train tab.")


def open_vlm(source, contextual, checkpoints, opened):
    """Open a real VLM (a folder or a cached hub id) and choose it as the connector; a bad folder, an unsupported
    family or a missing path is one message beside the picker and the menus stay as they were. `opened` counts
    the VLMs opened: its change re-ranks the image, so a failed open leaves the page alone."""
    try:
        choice, pipe = vlm_view.open_choice(source, bool(contextual))
    except Exception as err:  # noqa: BLE001
        keep = gr.update()
        return keep, keep, keep, session.report(err, "opening the VLM"), opened
    menu = choices(checkpoints)
    return (gr.update(choices=menu, value=choice), gr.update(choices=menu), gr.update(choices=menu),
            f"✅ Opened **{pipe.label}**: Inspect now runs its own tower and connector, with captions read "
            f"{'by its LM (the mean of its last hidden states)' if contextual else 'in its LM embedding table'}.",
            opened + 1)


def provenance(image, token, encoder, text, projector, tokens, checkpoints):
    """Runs after Inspect and on a token choice; when Inspect failed it clears its panel and adds no second
    message."""
    try:
        img = session.open_upload(image)
        pipe = pipeline.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
    except Exception:  # noqa: BLE001 - Inspect has already said what is wrong
        return None, ""
    try:
        return vlm_view.provenance_view(pipe, img, 0 if token is None else token)
    except Exception as err:  # noqa: BLE001
        return None, session.report(err, "patch provenance")


def pick_token(image, encoder, text, projector, tokens, checkpoints, evt: gr.SelectData):
    """A click on the heatmap or the provenance picture picks the projected token made at that place."""
    try:
        pipe = pipeline.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
        token = vlm_view.token_at(pipe, session.open_upload(image), *evt.index)
    except Exception:  # noqa: BLE001 - the panels already say why this connector has no places
        return gr.update()
    return gr.update() if token is None else token


# ---- Map ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _dataset(name: str, n: int):
    result = load_dataset(name, n=n, seed=0)
    return result.samples[:n], len(result.problems)


def bound_pairs(dataset, cap):
    """The slider offers what the dataset has. The slider is not an input here: Gradio checks an input against
    the bounds it has just been given, so a second quick change would fail on the old, larger value. Wired off the
    queue: an update that waits behind a long map or training job lands after the person has typed a count, and the
    slider then shows its old value again."""
    top = session.dataset_limit(dataset, int(cap))
    return gr.update(maximum=top, value=top) if top < cap else gr.update(maximum=cap)


SEND_MENU = 2000  # samples listed in the send menu; on a larger (linked) map type '#N', which its hover shows


def _watch(work, progress, wrap, every: float = 0.5):
    """Run work() in a thread and yield wrap(status line) until it ends: the one progress indicator of a long
    action, written in a place of its own (never over the plot or the top bar). Returns work()'s result and
    re-raises its error (`result = yield from _watch(...)`)."""
    out = {}

    def run():
        try:
            out["ok"] = work()
        except Exception as err:  # noqa: BLE001 - re-raised in the request below
            out["err"] = err

    worker = threading.Thread(target=run, name="vlmviz-map", daemon=True)
    worker.start()
    while worker.is_alive():
        yield wrap(f"⏳ {progress.line()}")
        worker.join(every)
    if "err" in out:
        raise out["err"]
    return out["ok"]


def _encode_progress(progress, then: str, fit=None):
    """The feature cache's callback: count new images, then say what comes next (with its estimate)."""

    def on_encode(done, total):
        if progress.unit != "images":
            progress.stage("encoding new images (kept in the feature cache for next time)", unit="images")
        progress.update(done, total)
        if done >= total:
            progress.stage(then, fit)

    return on_encode


def _send_menu(dataset, n, samples):
    """The map's samples for 'send to Inspect', numbered as the map's hover numbers them."""
    menu = [f"#{i} · {_clamp(s.caption, 70)}" for i, s in enumerate(samples[:SEND_MENU])]
    return (gr.update(choices=menu, value=menu[0] if menu else None, interactive=True),
            {"dataset": dataset, "n": int(n)})


def _map_failed(msg):
    return None, [], msg, "", gr.update(choices=[], value=None), None


def make_map(dataset, n, method, per_token, encoder, text, projector, tokens, checkpoints):
    keep = gr.update()
    key = method.lower().replace("-", "")  # "t-SNE" -> tsne
    progress = eta.Progress(f"loading {dataset}")

    def work():
        samples, skipped = _dataset(dataset, int(n))
        progress.stage("loading the connector")
        pipe = pipeline.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
        points = len(samples) * (17 if per_token else 2)  # images (or up to 16 tokens each) and captions
        fit = eta.umap_estimate(points) if key == "umap" else None
        progress.stage(f"projecting and fitting {method}", fit)
        result = pipeline.build_map(pipe, samples, key, per_token,
                                   progress=_encode_progress(progress, f"fitting {method}", fit))
        progress.stage("drawing")
        fig = plots.map_figure(result.frame, f"{pipe.label}: {method} of projected images and captions",
                               thumbnails=result.thumbnails, method=method,
                               point_name="projected tokens" if per_token else "images")
        rows = [[k, round(v, 4) if isinstance(v, float) else v] for k, v in result.metrics.items()]
        note = result.note + (f"; {skipped} unreadable rows skipped" if skipped else "")
        return fig, rows, note, samples

    try:
        fig, rows, note, samples = yield from _watch(work, progress, lambda line: (keep, keep, keep, line, keep,
                                                                                      keep))
    except Exception as err:  # noqa: BLE001 - one message; the page keeps working
        yield _map_failed(session.report(err, "map"))
        return
    yield fig, rows, note, f"Drawn in {time.monotonic() - progress.started:.0f} s.", *_send_menu(dataset, n, samples)


def make_linked_map(dataset, n, method, color, compare, encoder, text, projector, tokens, checkpoints):
    """The same images through the top bar's connector and (optionally) a second one, as linked WebGL maps: the
    HTML that `python -m vlmviz map` writes, shown in a frame (hover thumbnails, lasso selection in both)."""
    import hashlib

    keep = gr.update()
    key = method.lower().replace("-", "")
    progress = eta.Progress(f"loading {dataset}")

    def work():
        samples, skipped = _dataset(dataset, int(n))
        chosen = [projector] + ([compare] if compare and compare != "none" else [])
        progress.stage("loading the connectors")
        pipes = [(c, pipeline.resolve_pipeline(c, checkpoints, encoder, text, tokens)) for c in chosen]
        fit = eta.umap_estimate(2 * min(len(samples), 20_000)) if key == "umap" else None
        progress.stage(f"projecting and fitting {method}", fit)
        result = maps.connector_maps(pipes, samples, key, _encode_progress(progress, f"fitting {method}", fit))
        progress.stage("drawing")
        digest = hashlib.sha1(repr((dataset, int(n), method, color, chosen, sorted(checkpoints.items()))).encode())
        out = maps.write_html(result, samples, MAPS_DIR / f"{digest.hexdigest()[:16]}.html",
                              color=color if color and color != "none" else None)
        frame = (f"<iframe id='linked-frame' src='/gradio_api/file={out}' style='width:100%;height:760px;border:0' "
                 "title='linked maps'></iframe>")
        rows = [[f"{m.label[:28]}: {k}", round(v, 4) if isinstance(v, float) else v]
                for m in result for k, v in m.metrics.items()]
        note = " · ".join(m.note for m in result) + (f"; {skipped} unreadable rows skipped" if skipped else "")
        return frame, rows, note, samples

    try:
        frame, rows, note, samples = yield from _watch(work, progress, lambda line: (keep, keep, keep, line, keep,
                                                                                        keep))
    except Exception as err:  # noqa: BLE001
        yield ("", *_map_failed(session.report(err, "linked map"))[1:])
        return
    yield frame, rows, note, f"Drawn in {time.monotonic() - progress.started:.0f} s.", *_send_menu(dataset, n,
                                                                                                 samples)


def send_to_inspect(source, choice, projector):
    """A map sample opens in Inspect with its caption among the candidates, as a scenes-gallery pick does; a
    built-in connector is swapped for the one made for that kind of image."""
    keep = gr.update()
    try:
        if not source:
            raise ValueError("draw a map first, then pick one of its samples here")
        found = re.match(r"\s*#?\s*(\d+)", str(choice or ""))
        if not found:
            raise ValueError(f"pick a sample from the list, or type its number as #N (hovering a point shows it); "
                             f"got {choice!r}")
        samples, _ = _dataset(source["dataset"], source["n"])
        path, captions = pipeline.sample_for_inspect(samples, int(found.group(1)))
        kind = {"gallery": "photo", "digits": "digit"}.get(source["dataset"],
                                                          "scene" if source["dataset"].startswith("scenes") else None)
        if kind:
            domain.remember_source(path, kind)
        connector = builtins.fitting_built_in(projector, kind) if kind in ("photo", "scene") else projector
        return path, "\n".join(captions), connector, gr.Tabs(selected="inspect"), ""
    except Exception as err:  # noqa: BLE001 - said beside the menu; nothing else changes
        return keep, keep, keep, keep, session.report(err, "sending the sample to Inspect")


# ---- Train --------------------------------------------------------------------------------------------------
def _metrics_table(before, after, open_set=None):
    keys = ["i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "modality_gap", "alignment", "mutual_knn", "cka",
            "caption_loss"]
    rows = [[k, round(before[k], 4) if before else None, round(after[k], 4) if after else None] for k in keys
            if (before or after) and k in (before or after)]
    for k in ("i2t_R@1", "i2t_R@5", "swap_acc", "acc_color", "acc_shape"):
        if open_set and k in open_set:
            rows.append([f"open set {k} ({open_set['candidates']} candidates)", None, round(open_set[k], 4)])
    return rows


def apply_recipe(name):
    r = RECIPES[name]
    cfg = r.config
    return (cfg.projector.family, cfg.train.loss, cfg.train.pooling, cfg.encoder.tokens, cfg.train.steps,
            cfg.train.lr, cfg.train.batch_size, cfg.train.weight_decay, r.dataset,
            gr.update(maximum=session.dataset_limit(r.dataset, TRAIN_CAP), value=r.n_train), cfg.encoder.name,
            cfg.text.name, f"**Expected**: {r.expected}. **Time**: {r.cost}.")


def train(recipe, family, loss, pooling, tokens, steps, lr, batch, weight_decay, dataset, n_train, caption_mode,
          encoder, text, owner, checkpoints, request: gr.Request):
    who = owner_of(owner, request)
    keep = gr.update()
    try:
        cfg = session.train_config(family, loss, pooling, tokens, steps, lr, batch, weight_decay, caption_mode,
                                   encoder, text, RECIPES.get(recipe))
        objective = f"{loss} ({caption_mode})" if loss == "caption" else loss
        n = int(n_train)
        job = session.start_job(session.TrainJob(cfg, dataset, n, session.held_out_size(n), owner=who,
                                                 label=f"{family} · {objective} · {dataset} {n}"))
    except Exception as err:  # noqa: BLE001 - a bad setting is a message, not an Error badge
        yield keep, keep, session.report(err, "training"), keep, keep, checkpoints, keep, keep
        return
    # caption training is the long one: say before it starts what it will cost (steps x a step time measured
    # here last time), and for every run, while it goes, what is left at the rate so far
    rate_key = f"caption:{family}:{caption_mode}:{int(batch)}:{encoder}" if loss == "caption" else None
    guess = eta.caption_steps_estimate(rate_key, int(steps), int(batch)) if rate_key else None
    ahead = f" Training: {eta.say(guess.seconds)} ({guess.why})." if guess else ""
    yield (None, [], f"Starting: loading {encoder} and {dataset} ...{ahead}", None, keep, checkpoints, None,
           gr.update(visible=False))
    shown, clock, first = time.monotonic(), eta.Progress("starting"), None
    for event in job.events():
        now = time.monotonic()
        if event["type"] == "encode":
            if clock.unit != "images":
                clock.stage("encoding", unit="images")
            clock.update(event["done"], event["total"])
            if now - shown > 0.5:
                shown = now
                left = clock.left()
                yield (keep, keep, f"Encoding {dataset} with {encoder}: {event['done']} of {event['total']} new "
                       "images (kept in the feature cache: the next run on these images skips this)"
                       + (f" · {eta.say(left)} left" if left else " ...") + ahead, keep, keep, checkpoints, keep,
                       keep)
        elif event["type"] == "stage":
            yield keep, keep, "Scoring the held-out scenes open set ...", keep, keep, checkpoints, keep, keep
        elif event["type"] == "step":
            if first is None:  # the rate is counted from the first step on (loading the LM is not a step)
                first = event["step"]
                clock.stage("training", guess)
            clock.update(event["step"] - first, event["steps"] - first)
            if event.get("metrics") or now - shown > 1.0 or event["step"] == event["steps"]:
                shown = now  # redraw about once a second and on every held-out evaluation
                status = f"step {event['step']}/{event['steps']} · loss {event['loss']:.4f} · lr {event['lr']:.1e}"
                left = clock.left()
                if clock.done and left:
                    status += (f" · {(now - clock.stage_started) / clock.done:.2f} s per step · {eta.say(left)} "
                               "left")
                watch = (plots.watch_figure(job.frames, job.watch_text) if event.get("metrics") and job.frames
                         else keep)
                yield (plots.training_figure(job.history, job.evals), keep, status, keep, keep, checkpoints, watch,
                       keep)
    if rate_key and clock.done >= 2:  # the next caption run's estimate
        eta.remember(rate_key, (time.monotonic() - clock.stage_started) / clock.done)
    checkpoints = session.list_checkpoints(who)
    figure = plots.training_figure(job.history, job.evals) if job.history else None
    run = job.result
    table = _metrics_table(run.before, run.after, job.open_set) if run is not None else []
    status = job.summary()
    if job.checkpoint and loss == "caption":
        status += " Caption-trained: **Describe** in Inspect writes what it sees."
    menu = gr.update(choices=choices(checkpoints), **({"value": job.checkpoint[0]} if job.checkpoint else {}))
    frames = len(job.frames)
    watch = plots.watch_figure(job.frames, job.watch_text) if frames else None
    slider = gr.update(visible=frames > 1, maximum=max(1, frames - 1), value=max(0, frames - 1))
    yield figure, table, status, job.checkpoint[1] if job.checkpoint else None, menu, checkpoints, watch, slider


@contained("training map", lambda msg: None)
def show_watch(index, owner, request: gr.Request):
    """After training: the held-out points at one of the saved evaluation steps."""
    job = session.current_job(owner_of(owner, request))
    if job is None or not job.frames:
        return None
    return plots.watch_figure(job.frames, job.watch_text, min(int(index), len(job.frames) - 1))


def caption_settings(loss):
    """The caption loss runs every projected token through the frozen LM: token-level, small batches, few steps."""
    if loss != "caption":
        return [gr.update()] * 5
    return ("none", "patch", 30, CAPTION_TRAIN["lr"], CAPTION_TRAIN["batch_size"])


def cancel(owner, request: gr.Request):
    found = session.cancel_job(owner_of(owner, request))
    return "Cancelling ..." if found else "Nothing is training."


# ---- Search -------------------------------------------------------------------------------------------------
_SEARCH_CANCEL: dict[str, threading.Event] = {}


def _index_menu(value=None):
    known = search_ui.known_indexes()
    return gr.update(choices=list(known.items()), value=value if value in known.values() else
                     next(iter(known.values()), None))


def _connector_spec(connector: str, checkpoints: dict) -> str:
    return checkpoints.get(connector, connector)  # this browser's checkpoint: its file; a built-in: its label


def build_index(folder, connector, owner, checkpoints, request: gr.Request, progress=gr.Progress()):
    """Index a folder in a thread; the page shows a progress bar and a status line, and Cancel stops it between
    batches with everything so far kept (building again goes on from there)."""
    who = owner_of(owner, request)
    cancel = _SEARCH_CANCEL[who] = threading.Event()
    try:
        yield from _index_in_thread(folder, connector, checkpoints, cancel, progress)
    finally:  # a Cancel after the end finds nothing to stop (and leaves the finished build's line alone)
        if _SEARCH_CANCEL.get(who) is cancel:
            del _SEARCH_CANCEL[who]


def _index_in_thread(folder, connector, checkpoints, cancel, progress):
    keep = gr.update()
    state = eta.Progress("loading the connector")

    def on_progress(done, total, what):
        if what != state.what:
            state.stage(what, unit="images")
        state.update(done, total)

    result = {}

    def work():
        try:
            result["ok"] = search_ui.build(folder, _connector_spec(connector, checkpoints), on_progress, cancel)
        except Exception as err:  # noqa: BLE001 - reported on the page below
            result["err"] = err

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    yield f"Indexing {folder} through {connector} ...", keep
    stopping = False
    while worker.is_alive():
        worker.join(0.3)
        if cancel.is_set():  # said here, not by the Cancel handler, whose reply could land after the final line
            if not stopping:
                stopping = True
                yield "Cancelling after the current batch ...", keep
            continue
        if state.total:  # the bar sits on the index menu (show_progress_on), the status line stays readable
            progress((state.done, state.total), desc=state.what, unit="images")
            line = state.line()
            yield line[:1].upper() + line[1:], keep
    if "err" in result:
        name = type(result["err"]).__name__
        message = str(result["err"]) if name == "IndexCancelled" else session.report(result["err"], "indexing")
        yield (f"⏹ {message}" if name == "IndexCancelled" else message), _index_menu()
        return
    path, report = result["ok"]
    yield f"✅ {search_ui.report_line(report)}.", _index_menu(path)


def cancel_index(owner, shown, request: gr.Request):
    """Stop this browser's build between batches. The build's own status stream says so and then ends with its
    final line; this handler writes nothing while a build runs (its reply, off the queue, could arrive after that
    final line and overwrite it)."""
    event = _SEARCH_CANCEL.get(owner_of(owner, request))
    if event is None:  # a build that ended before the click keeps its line
        return shown if shown and shown[:1] in "✅⏹" else "Nothing is being indexed."
    event.set()
    return gr.update()


@contained("search", lambda msg: ([], [], msg))
def run_search(index_path, query, k, min_score, folder, recent):
    hits, note = search_ui.run_query(index_path, query, k, min_score or None, folder)
    return hits, [h[0] for h in hits], note


def remember_query(query, recent):
    terms = search_ui.query_captions(query) if query and query.strip() else []
    return (terms + [q for q in recent if q not in terms])[:8]


def open_result(index_path, paths, recent, checkpoints, owner, request: gr.Request, evt: gr.SelectData):
    """A clicked result opens in Inspect: ranked against the query and the tab's recent queries, through the
    connector that made the index."""
    keep = gr.update()
    try:
        connector = search_ui.connector_of(index_path)
        if connector not in BUILT_INS:  # a checkpoint file: file it with this browser's checkpoints
            match = [label for label, p in checkpoints.items() if os.path.samefile(p, connector)]
            if match:
                connector = match[0]
            else:
                connector, _ = session.add_checkpoint(owner_of(owner, request), connector,
                                                      os.path.splitext(os.path.basename(connector))[0])
                checkpoints = session.list_checkpoints(owner_of(owner, request))
        captions = "\n".join(recent or ["a photo"])
        return paths[evt.index], captions, connector, checkpoints, gr.Tabs(selected="inspect"), ""
    except Exception as err:  # noqa: BLE001 - the Search tab says what went wrong; nothing else changes
        return keep, keep, keep, checkpoints, keep, session.report(err, "opening the result")


# ---- Compare ------------------------------------------------------------------------------------------------
@contained("compare", lambda msg: (None, None, [], msg))
def compare(image, captions, a, b, encoder, text, tokens, dataset, checkpoints):
    img = session.open_upload(image, "image (pick one in the Inspect tab)")
    labels, metrics = [], []
    samples, _ = _dataset(dataset, session.dataset_limit(dataset, 40))
    for choice in (a, b):
        pipe = pipeline.resolve_pipeline(choice, checkpoints, encoder, text, tokens)
        labels.append({r["caption"]: r["prob"] for r in pipe.rank_captions(img, captions)})
        metrics.append(pipeline.build_map(pipe, samples, "pca").metrics)
    keys = ["N", "k", "i2t_R@1", "i2t_R@5", "t2i_R@1", "modality_gap", "alignment", "mutual_knn", "cka"]
    table = [[k, *[round(m[k], 4) if isinstance(m[k], float) else m[k] for m in metrics]] for k in keys]
    return labels[0], labels[1], table, ""


# ---- Checkpoints and the browser's own state -----------------------------------------------------------------
def upload(file, encoder, text, tokens, owner, checkpoints, request: gr.Request):
    who = owner_of(owner, request)
    try:
        label, message = session.add_uploaded_checkpoint(file, who, encoder, text, tokens)
    except Exception as err:  # noqa: BLE001 - the table and the menus stay as they were
        keep = gr.update()
        return session.report(err, "checkpoint upload"), checkpoints, keep, keep, keep, _ck_rows(checkpoints)
    checkpoints = session.list_checkpoints(who)
    update = gr.update(choices=choices(checkpoints))
    return (f"✅ {message}. Added as **{label}**.", checkpoints, update, update, update, _ck_rows(checkpoints))


def restore(stored, request: gr.Request):
    """On page load: the owner id this browser kept (a fresh one the first time) and its checkpoints on disk."""
    owner = stored if isinstance(stored, str) and stored.isalnum() and len(stored) == 32 else session.new_owner()
    checkpoints = session.list_checkpoints(owner)
    update = gr.update(choices=choices(checkpoints))
    return owner, owner, checkpoints, update, update, update, _ck_rows(checkpoints)


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="vlmviz: see and train VLM connectors") as demo:
        checkpoints = gr.State({})
        owner = gr.State("")
        browser = gr.BrowserState("", storage_key="vlmviz-owner", secret=session.browser_secret())
        gr.Markdown(f"# vlmviz\n{INTRO}")
        with gr.Row(elem_id="top-bar"):
            encoder = gr.Dropdown(list_vision_encoders(), value=DEFAULT_ENCODER, label="Vision encoder (frozen)",
                                  allow_custom_value=True, elem_id="encoder")
            text = gr.Dropdown(list_text_spaces(), value=DEFAULT_TEXT, label="Text space (frozen)",
                               allow_custom_value=True, elem_id="text")
            projector = gr.Dropdown(BUILT_INS + UNTRAINED, value=builtins.PHOTO_CONSE, label="Connector",
                                    elem_id="projector")
            tokens = gr.Dropdown(list(TOKEN_MODES), value="all", label="Encoder tokens fed to the connector",
                                 elem_id="tokens")
        connector_note = gr.Markdown(f"**{builtins.PHOTO_CONSE}**: a built-in connector made for natural photos.",
                                     elem_classes="vv-note", elem_id="connector-note")  # filled on page load

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Inspect", id="inspect"):
                found = vlm_view.cached_vlms()
                with gr.Row(elem_id="vlm-bar"):
                    vlm_cached = gr.Dropdown(found, value=None, label="Open a real VLM: from your Hugging Face cache",
                                             info=vlm_view.cache_note(found), scale=3, elem_id="vlm-cached")
                    vlm_path = gr.Textbox(label="... or the folder of a saved VLM on this machine", scale=4,
                                          placeholder="/path/to/llava-1.5-7b-hf (LLaVA, Qwen2-VL, InternVL, "
                                          "Idefics3, PaliGemma, Gemma 3, Mistral 3 ...)", elem_id="vlm-path")
                    with gr.Column(scale=1, min_width=150):
                        vlm_context = gr.Checkbox(False, label="captions through its LM (contextual)",
                                                  elem_id="vlm-context")
                        vlm_open = gr.Button("Open VLM", min_width=110, elem_id="vlm-open")
                vlm_msg = gr.Markdown(elem_id="vlm-msg", elem_classes="vv-msg")
                vlm_opened = gr.State(0)
                with gr.Row():
                    with gr.Column(scale=5):
                        image = gr.Image(str(GALLERY[0].path), type="filepath",
                                         label="Image: upload one or pick from the gallery",
                                         height=280, elem_id="image")
                        gallery = gr.Gallery([(str(g.path), g.name) for g in GALLERY], columns=8, height="auto",
                                             label="Gallery (real images, captions written by us)", object_fit="cover",
                                             allow_preview=False, elem_id="gallery")
                        scenes = gr.Gallery([(str(g.path), g.name) for g in SCENES], columns=8, height="auto",
                                            label="Scenes (synthetic, held out from the scenes connector's training)",
                                            object_fit="contain", allow_preview=False, elem_id="scenes-gallery")
                        captions = gr.Textbox(lines=6, label="Candidate captions, one per line", elem_id="captions",
                                              value="\n".join([GALLERY[0].caption, *GALLERY[0].distractors]))
                        with gr.Row():
                            temperature = gr.Slider(0.005, 1.0, value=0.07, step=0.005, label="Softmax temperature")
                            run = gr.Button("Rank captions", variant="primary", elem_id="rank")
                        inspect_msg = gr.Markdown(elem_id="inspect-msg", elem_classes="vv-msg")
                        with gr.Row():
                            describe_mode = gr.Radio(list(describe.MODES), value="greedy", label="Decoding",
                                                     elem_id="describe-mode")
                            describe_btn = gr.Button("Describe", elem_id="describe")
                        description = gr.Textbox(label="What the LM says through a caption-trained connector",
                                                 lines=3, interactive=False, elem_id="description")
                        describe_note = gr.Markdown(elem_id="describe-note", elem_classes="vv-msg")
                        with gr.Row():
                            describe_line = gr.Markdown(elem_id="describe-status", elem_classes="vv-note")
                            build_captioner = gr.Button("Build the Describe captioner", size="sm", visible=False,
                                                        scale=0, min_width=200, elem_id="describe-build")
                            cancel_captioner = gr.Button("Cancel the build", size="sm", visible=False, scale=0,
                                                         min_width=150, elem_id="describe-cancel")
                        describe_timer = gr.Timer(2.0, active=False)
                    with gr.Column(scale=6):
                        ranking = gr.Label(num_top_classes=8, label="Captions ranked by cosine (softmax at T)",
                                           elem_id="ranking")
                        fit_note = gr.Markdown(elem_classes="vv-note", elem_id="fit-note")  # does the connector fit?
                        scores = gr.Dataframe(headers=["#", "caption", "cosine", "softmax", "same as"],
                                              label="Scores ('same as': captions whose text vectors are identical)",
                                              elem_id="scores", wrap=True,
                                              column_widths=["6%", "48%", "15%", "15%", "16%"])
                with gr.Row():
                    with gr.Column():
                        heat_caption = gr.Dropdown([], label="Caption for the patch heatmap", elem_id="heat-caption")
                        heat = gr.Image(label="Which patches match the caption", height=380, elem_id="heatmap")
                        heat_note = gr.Markdown(elem_classes="vv-note")
                    with gr.Column():
                        with gr.Row():
                            words_lens = gr.Dropdown(["embedding", "logit", "contextual"], value="embedding",
                                                     label="Lens", elem_id="words-lens",
                                                     info="embedding: nearest input-table words; logit: the LM's "
                                                          "next word at the layer; contextual: nearest corpus words "
                                                          "in context at the layer")
                            words_layer = gr.Slider(0, 30, value=8, step=1, label="LM layer (logit, contextual)",
                                                    elem_id="words-layer")
                        words = gr.Dataframe(label="Nearest vocabulary words of each projected token (on the grid)",
                                             elem_id="words", wrap=True, max_height=380)
                        words_note = gr.Markdown(elem_classes="vv-note")
                        shapes = gr.JSON(label="Shapes along the way", elem_id="shapes")
                with gr.Row(elem_id="provenance-row"):
                    with gr.Column(scale=2):
                        prov_token = gr.Number(0, precision=0, elem_id="prov-token",
                                               label="Patch provenance: projected token (or click the heatmap or "
                                               "the picture)")
                        prov_note = gr.Markdown(elem_classes="vv-note", elem_id="prov-note")
                    with gr.Column(scale=3):
                        prov_img = gr.Image(label="The source patches that feed this token (outlined: its place)",
                                            height=380, interactive=False, elem_id="provenance")

            with gr.Tab("Map", id="map"):
                with gr.Row():
                    dataset = gr.Dropdown(list_datasets(), value="gallery", label="Dataset", elem_id="map-data")
                    n_points = gr.Slider(3, len(GALLERY), value=len(GALLERY), step=1, label="Pairs", elem_id="pairs")
                    method = gr.Radio([m.upper() if m != "tsne" else "t-SNE" for m in METHODS], value="PCA",
                                      label="Map", info="images are encoded once and cached, and so are UMAP and t-SNE "
                                      "fits; the first UMAP in a server also compiles numba (about 40 s)")
                    per_token = gr.Checkbox(False, label="per projected token")
                    map_btn = gr.Button("Draw map", variant="primary", elem_id="draw-map")
                # the one progress indicator of a map (classic or linked): its own line right under the buttons'
                # row, so nothing covers the plot or the top bar while it computes
                map_status = gr.Markdown(elem_id="map-status", elem_classes="vv-note")
                with gr.Accordion("Linked maps at scale: up to 100,000 pairs, two connectors side by side",
                                  open=False, elem_id="linked-acc"):
                    with gr.Row():
                        linked_n = gr.Slider(3, LINKED_CAP, value=2000, step=1, label="Pairs", elem_id="linked-n")
                        linked_color = gr.Dropdown(["none", "color", "shape", "size", "position", "label"],
                                                   value="color", label="Colour images by", elem_id="linked-color")
                        linked_compare = gr.Dropdown(["none"] + BUILT_INS + UNTRAINED, value="none",
                                                     label="Second connector (linked)", elem_id="linked-compare")
                        linked_btn = gr.Button("Draw linked maps", variant="primary", elem_id="draw-linked")
                    gr.Markdown("WebGL maps of the same images through the top bar's connector and the second one: "
                                "hover a point for its image, lasso or box-select in one map to highlight the same "
                                "images in the other and list them below it; the *density* button shows where "
                                "points pile up. Images are encoded once (feature cache) and each map is fitted once "
                                "and kept; above 20,000 points UMAP is fitted on a sample and the rest placed, which "
                                "the map says.", elem_classes="vv-note")
                    linked = gr.HTML(elem_id="linked-map")
                with gr.Row(elem_id="map-send-row"):
                    map_pick = gr.Dropdown([], label="Send a sample of the map to Inspect (#N as the map's hover "
                                           "numbers it; type #N for any sample)", allow_custom_value=True, scale=4,
                                           elem_id="map-pick")
                    map_send = gr.Button("Open in Inspect", scale=1, min_width=140, elem_id="map-send")
                    map_send_msg = gr.Markdown(elem_id="map-send-msg", elem_classes="vv-msg")
                map_source = gr.State(None)
                with gr.Row():
                    map_plot = gr.Plot(label="Projected images and captions", elem_id="map-plot")
                    with gr.Column(scale=0, min_width=300):
                        map_metrics = gr.Dataframe(headers=["metric", "value"], label="Metrics", elem_id="map-metrics")
                        map_note = gr.Markdown(elem_classes="vv-note", elem_id="map-note")
                        gr.Markdown(METRIC_HELP, elem_classes="vv-note")

            with gr.Tab("Search", id="search"):
                gr.Markdown("Search a folder of images by text through a connector: each image is embedded once "
                            "(by content, so renamed or moved files are not embedded again) and the query is ranked "
                            "by exact cosine. Queries: words, an image path, or sums like `\"a cat\" - \"indoors\" "
                            "+ 0.5 * /path/ref.jpg`. Click a result to open it in Inspect.",
                            elem_classes="vv-note")
                with gr.Row():
                    lib_folder = gr.Textbox(str(search_ui.GALLERY_FOLDER), label="Folder of images (on this machine)",
                                            scale=4, elem_id="lib-folder")
                    lib_connector = gr.Dropdown(BUILT_INS, value=builtins.PHOTO_CONSE, label="Connector",
                                                scale=3, elem_id="lib-connector")
                    lib_build = gr.Button("Build / update index", variant="primary", scale=1, elem_id="lib-build")
                    lib_cancel = gr.Button("Cancel", variant="stop", scale=0, min_width=90, elem_id="lib-cancel")
                lib_status = gr.Markdown(elem_id="lib-status", elem_classes="vv-msg")
                with gr.Row():
                    lib_index = gr.Dropdown([], label="Index", scale=3, elem_id="lib-index")
                    lib_query = gr.Textbox("a cat", label="Query", scale=4, elem_id="lib-query")
                    lib_k = gr.Slider(1, 60, value=12, step=1, label="Results", scale=1, elem_id="lib-k")
                with gr.Row():
                    lib_min = gr.Number(None, label="Minimum cosine (optional; 0: none)", elem_id="lib-min")
                    lib_sub = gr.Textbox("", label="Only under subfolder (optional)", elem_id="lib-sub")
                    lib_go = gr.Button("Search", variant="primary", elem_id="lib-go")
                lib_note = gr.Markdown(elem_id="lib-note", elem_classes="vv-note")
                lib_hits = gr.Gallery([], columns=6, height="auto", label="Results (cosine · file)",
                                      object_fit="cover", allow_preview=False, elem_id="lib-hits")
                lib_paths, lib_recent = gr.State([]), gr.State([])

            with gr.Tab("Train", id="train"):
                with gr.Row():
                    recipe = gr.Dropdown(list(RECIPES), value=DEFAULT_RECIPE, label="Recipe (proven presets)",
                                         elem_id="recipe", scale=3)
                    recipe_note = gr.Markdown(elem_classes="vv-note", elem_id="recipe-note")
                first = RECIPES[DEFAULT_RECIPE]
                cfg = first.config
                with gr.Row():
                    family = gr.Dropdown(FAMILIES, value=cfg.projector.family, label="Connector family",
                                         elem_id="family")
                    loss = gr.Dropdown(list(LOSSES) + ["caption"], value=cfg.train.loss, label="Loss", elem_id="loss")
                    pooling = gr.Dropdown(list(POOLINGS), value=cfg.train.pooling, label="Pooling", elem_id="pooling")
                    train_tokens = gr.Dropdown(list(TOKEN_MODES), value=cfg.encoder.tokens, label="Encoder tokens",
                                               elem_id="train-tokens")
                    train_encoder = gr.Dropdown(list_vision_encoders(), value=cfg.encoder.name, label="Encoder",
                                                allow_custom_value=True, elem_id="train-encoder")
                    train_text = gr.Dropdown(list_text_spaces(), value=cfg.text.name, label="Text space",
                                             allow_custom_value=True, elem_id="train-text")
                with gr.Row():  # the sliders in a row of their own: squeezed, they cut off their maximum ("40")
                    steps = gr.Slider(10, 4000, value=cfg.train.steps, step=10, label="Steps", elem_id="steps")
                    batch = gr.Slider(8, 256, value=cfg.train.batch_size, step=8, label="Batch", elem_id="batch")
                    n_train = gr.Slider(8, TRAIN_CAP, value=first.n_train, step=1, label="Training pairs",
                                        elem_id="n-train")
                with gr.Row():
                    lr = gr.Number(cfg.train.lr, label="Learning rate", elem_id="lr")
                    weight_decay = gr.Number(cfg.train.weight_decay, label="Weight decay", elem_id="weight-decay")
                    train_data = gr.Dropdown(list_datasets(), value=first.dataset, label="Dataset",
                                             elem_id="train-data")
                    caption_mode = gr.Dropdown(list(CAPTION_MODES), value="prefix", elem_id="caption-mode",
                                               label="Caption: visual tokens as LM prefix, or cross-attention")
                with gr.Row():
                    start = gr.Button("Start training", variant="primary", elem_id="start-train")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel-train")
                status = gr.Markdown("", elem_id="train-status")
                with gr.Row():
                    curve = gr.Plot(label="Loss and held-out recall", elem_id="train-curve")
                    with gr.Column(scale=0, min_width=360):
                        # long metric names ("open set acc_color (71 candidates)") wrap instead of pushing the
                        # before / after columns out of view
                        before_after = gr.Dataframe(headers=["metric", "before", "after"], wrap=True,
                                                    column_widths=["56%", "22%", "22%"],
                                                    label="Held-out, before / after", elem_id="before-after")
                        download = gr.File(label="Checkpoint (safetensors)", elem_id="download")
                with gr.Row():
                    with gr.Column():
                        watch_plot = gr.Plot(label="Train and watch: held-out images moving toward their captions",
                                             elem_id="watch-plot")
                        watch_step = gr.Slider(0, 1, value=0, step=1, visible=False, elem_id="watch-step",
                                               label="Saved evaluation steps (drag to replay)")

            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    proj_a = gr.Dropdown(UNTRAINED, value="untrained linear", label="Connector A", elem_id="proj-a")
                    proj_b = gr.Dropdown(UNTRAINED, value="untrained mlp2x_gelu", label="Connector B", elem_id="proj-b")
                    cmp_data = gr.Dropdown(list_datasets(), value="gallery", label="Metrics on")
                    cmp_btn = gr.Button("Compare on the Inspect image", variant="primary", elem_id="compare")
                cmp_msg = gr.Markdown(elem_id="compare-msg", elem_classes="vv-msg")
                with gr.Row():
                    label_a = gr.Label(num_top_classes=5, label="A")
                    label_b = gr.Label(num_top_classes=5, label="B")
                cmp_table = gr.Dataframe(headers=["metric", "A", "B"], label="Metrics (same pairs, same k)")

            with gr.Tab("Checkpoints", id="checkpoints"):
                gr.Markdown("Upload a vlmviz checkpoint (`.safetensors`), a LLaVA `mm_projector.bin` or a Hugging Face "
                            "Llava projector (`multi_modal_projector.linear_1/2`). A vlmviz checkpoint is checked "
                            "against the encoder and text space it names (choosing it sets the top bar to them); a "
                            "LLaVA projector, which names none, against those the top bar shows. Nothing is unpickled "
                            "beyond tensors. Checkpoints stay with this browser across reloads.")
                with gr.Row():
                    ck_file = gr.File(label="Projector file", file_types=[".safetensors", ".bin", ".pt", ".pth"],
                                      elem_id="ck-file")
                    ck_tokens = gr.Dropdown(list(TOKEN_MODES), value="patch", label="Tokens a LLaVA projector reads")
                    ck_btn = gr.Button("Validate and add", variant="primary", elem_id="ck-add")
                ck_msg = gr.Markdown(elem_id="ck-msg", elem_classes="vv-msg")
                ck_list = gr.Dataframe(headers=["name", "file"], label="This browser's checkpoints", elem_id="ck-list")

        model = [encoder, text, projector, tokens]
        follow = ([projector, checkpoints, encoder, text], [encoder, text, tokens, connector_note])
        demo.load(restore, browser, [browser, owner, checkpoints, projector, proj_a, proj_b, ck_list],
                  api_visibility="private")
        # progress of anything that sets the top bar shows beside it, never over its menus (a built-in connector
        # built on first use takes minutes)
        top_bar_busy = dict(show_progress_on=connector_note)
        demo.load(follow_checkpoint, *follow, api_visibility="private", **top_bar_busy)  # the built-in fixes the bar
        demo.load(apply_recipe, recipe, [family, loss, pooling, train_tokens, steps, lr, batch, weight_decay,
                                         train_data, n_train, train_encoder, train_text, recipe_note],
                  api_visibility="private")
        gallery.select(pick_gallery, projector, [image, captions, projector], show_progress="hidden")
        scenes.select(pick_scene, projector, [image, captions, projector], show_progress="hidden")
        # a new image (or a newly opened VLM) is ranked at once, so nothing about the previous one stays on screen
        opening = [vlm_cached.input(lambda picked: picked, vlm_cached, vlm_path, api_visibility="private").then,
                   vlm_open.click, vlm_path.submit]
        for i, trigger in enumerate(opening):
            trigger(open_vlm, [vlm_path, vlm_context, checkpoints, vlm_opened], [projector, proj_a, proj_b, vlm_msg, vlm_opened],
                    show_progress_on=vlm_msg,
                    concurrency_limit=1, concurrency_id="open-vlm", api_visibility="private",
                    **({"api_name": "open_vlm"} if i == 1 else {}))
        for trigger, api in ((run.click, "inspect"), (image.change, "inspect_on_change"),
                             (vlm_opened.change, "inspect_on_open")):
            trigger(inspect, [image, captions, *model, temperature, checkpoints],
                    [ranking, scores, shapes, heat_caption, inspect_msg], concurrency_limit=4,
                    concurrency_id="inspect", preprocess=False, api_name=api,
                    api_visibility="public" if api == "inspect" else "private").then(
                nearest_words, [image, *model, checkpoints, words_lens, words_layer], [words, words_note],
                concurrency_limit=4,
                preprocess=False, api_visibility="private" if api != "inspect" else "public").then(
                connector_fit, [image, projector, checkpoints], fit_note, preprocess=False,
                api_visibility="private").then(
                provenance, [image, prov_token, *model, checkpoints], [prov_img, prov_note], concurrency_limit=4,
                preprocess=False, api_visibility="private")
        for trigger in (words_lens.input, words_layer.change):  # a drag reads only the layer it ends on
            trigger(nearest_words, [image, *model, checkpoints, words_lens, words_layer], [words, words_note],
                    concurrency_limit=4, preprocess=False, api_visibility="private", trigger_mode="always_last")
        prov_token.input(provenance, [image, prov_token, *model, checkpoints], [prov_img, prov_note],
                         concurrency_limit=4, preprocess=False, api_visibility="private")
        for picture in (heat, prov_img):
            picture.select(pick_token, [image, *model, checkpoints], prov_token, preprocess=False,
                           api_visibility="private").then(
                provenance, [image, prov_token, *model, checkpoints], [prov_img, prov_note], concurrency_limit=4,
                preprocess=False, api_visibility="private")
        captioner_outputs = [describe_line, describe_timer, build_captioner, cancel_captioner]
        quiet = {"show_progress": "hidden", "api_visibility": "private"}  # the line itself is the progress
        demo.load(describe_status, None, captioner_outputs, **quiet)
        describe_timer.tick(describe_status, None, captioner_outputs, **quiet)
        build_captioner.click(describe_build, None, captioner_outputs, **quiet)
        cancel_captioner.click(describe_cancel, None, captioner_outputs, **quiet)
        describe_btn.click(describe_image, [image, projector, describe_mode, checkpoints],
                           [description, describe_note], api_name="describe", concurrency_limit=2,
                           concurrency_id="describe", preprocess=False)
        heat_caption.change(heatmap, [image, heat_caption, *model, checkpoints], [heat, heat_note],
                            concurrency_limit=4, preprocess=False)
        projector.change(follow_checkpoint, *follow, api_visibility="private", **top_bar_busy)
        dataset.change(functools.partial(bound_pairs, cap=MAP_CAP), dataset, n_points, api_visibility="private",
                       queue=False)
        map_out = [map_metrics, map_note, map_status, map_pick, map_source]
        map_btn.click(make_map, [dataset, n_points, method, per_token, *model, checkpoints], [map_plot, *map_out],
                      concurrency_limit=2, show_progress="hidden")
        linked_btn.click(make_linked_map, [dataset, linked_n, method, linked_color, linked_compare, *model,
                                           checkpoints], [linked, *map_out], concurrency_limit=2,
                         api_name="linked_map", show_progress="hidden")
        map_send.click(send_to_inspect, [map_source, map_pick, projector],
                       [image, captions, projector, tabs, map_send_msg], api_visibility="private",
                       show_progress="hidden")
        dataset.change(functools.partial(bound_pairs, cap=LINKED_CAP), dataset, linked_n, api_visibility="private",
                       queue=False)
        checkpoints.change(lambda c: gr.update(choices=["none"] + choices(c)), checkpoints, linked_compare,
                           api_visibility="private")
        recipe.input(apply_recipe, recipe, [family, loss, pooling, train_tokens, steps, lr, batch, weight_decay,
                                            train_data, n_train, train_encoder, train_text, recipe_note],
                     api_visibility="private")
        train_data.input(functools.partial(bound_pairs, cap=TRAIN_CAP), train_data, n_train,
                         api_visibility="private", queue=False)
        start.click(train, [recipe, family, loss, pooling, train_tokens, steps, lr, batch, weight_decay, train_data,
                            n_train, caption_mode, train_encoder, train_text, owner, checkpoints],
                    [curve, before_after, status, download, projector, checkpoints, watch_plot, watch_step],
                    concurrency_limit=4, show_progress="hidden")  # the status line is its one indicator
        watch_step.change(show_watch, [watch_step, owner], watch_plot, api_visibility="private")
        loss.input(caption_settings, loss, [pooling, train_tokens, steps, lr, batch], api_visibility="private")
        for field in (family, loss, pooling, train_tokens, train_encoder, train_text, steps, lr, batch, weight_decay,
                      train_data, n_train):  # a figure quoted for the recipe must not stand beside other settings
            field.input(lambda name: f"Changed from the recipe *{name}*: its expected figure no longer applies "
                        "(pick the recipe again to restore it).", recipe, recipe_note, api_visibility="private")
        # off the queue: a Cancel must never wait behind the work it cancels
        stop.click(cancel, owner, status, queue=False)
        checkpoints.change(lambda c: [gr.update(choices=choices(c))] * 2 + [_ck_rows(c)], checkpoints,
                           [proj_a, proj_b, ck_list], api_visibility="private")
        cmp_btn.click(compare, [image, captions, proj_a, proj_b, encoder, text, tokens, cmp_data, checkpoints],
                      [label_a, label_b, cmp_table, cmp_msg], concurrency_limit=2, preprocess=False)
        ck_btn.click(upload, [ck_file, encoder, text, ck_tokens, owner, checkpoints],
                     [ck_msg, checkpoints, projector, proj_a, proj_b, ck_list], show_progress_on=ck_msg)
        demo.load(_index_menu, None, lib_index, api_visibility="private")
        lib_build.click(build_index, [lib_folder, lib_connector, owner, checkpoints], [lib_status, lib_index],
                        concurrency_limit=2, concurrency_id="index", api_name="build_index",
                        show_progress_on=lib_index)
        lib_cancel.click(cancel_index, [owner, lib_status], lib_status, queue=False)
        checkpoints.change(lambda c: gr.update(choices=BUILT_INS + list(c)), checkpoints, lib_connector,
                           api_visibility="private")
        for trigger in (lib_go.click, lib_query.submit):
            trigger(remember_query, [lib_query, lib_recent], lib_recent, api_visibility="private").then(
                run_search, [lib_index, lib_query, lib_k, lib_min, lib_sub, lib_recent],
                [lib_hits, lib_paths, lib_note], concurrency_limit=4, api_name="search" if trigger == lib_go.click
                else None, api_visibility="public" if trigger == lib_go.click else "private")
        lib_hits.select(open_result, [lib_index, lib_paths, lib_recent, checkpoints, owner],
                        [image, captions, projector, checkpoints, tabs, lib_note], api_visibility="private",
                        show_progress="hidden")
    return demo


demo = build_demo()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    args = parser.parse_args(argv)
    session.clean_old_sessions()  # browsers unseen for 14 days ($VLMVIZ_SESSION_DAYS) lose their checkpoints
    pipeline.warm_up_in_background()
    if os.environ.get("VLMVIZ_BUILD_DESCRIBE", "1") != "0" and DESCRIBE.start():  # first start: build it once
        print("[vlmviz] building the built-in Describe captioner in the background (" + DESCRIBE.estimate + "); "
              "the Inspect tab shows its progress and can cancel it; VLMVIZ_BUILD_DESCRIBE=0 skips it")
    demo.queue(default_concurrency_limit=2).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                   css=CSS, theme=THEME, show_error=True)


if __name__ == "__main__":
    main()
