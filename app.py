"""vlmviz web app: layout and event wiring only; the work happens in the vlmviz package.

    python app.py [--host 127.0.0.1] [--port 7860] [--share]
"""
from __future__ import annotations

import argparse
import functools
import os
import time
import traceback

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from vlmviz import describe, explore, plots, session  # noqa: E402
from vlmviz.config import (CAPTION_MODES, CAPTION_OPTIONS, CAPTION_TRAIN, CaptionConfig, ExperimentConfig,  # noqa: E402
                           EncoderConfig, ProjectorConfig, TextConfig, TOKEN_MODES, TrainConfig)
from vlmviz.data import list_datasets, load_dataset, load_gallery  # noqa: E402
from vlmviz.encoders import list_vision_encoders  # noqa: E402
from vlmviz.losses import LOSSES  # noqa: E402
from vlmviz.projectors import list_projectors  # noqa: E402
from vlmviz.reduce import METHODS  # noqa: E402
from vlmviz.text import list_text_spaces  # noqa: E402

GALLERY = load_gallery()
FAMILIES = ["linear", "mlp2x_gelu"] + [p for p in list_projectors() if p not in ("linear", "mlp", "identity")]
UNTRAINED = [f"untrained {f}" for f in FAMILIES]
CSS = """
#ranking .label-name {font-size: 0.95em}
.vv-note {color: var(--body-text-color-subdued); font-size: 0.9em}
footer {display: none !important}
"""
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="orange")
INTRO = ("**vlmviz** shows what the *connector* of a vision-language model does: a frozen vision encoder turns the "
         "image into tokens, the connector maps them into a frozen text space, and captions are ranked by cosine "
         "similarity. Untrained connectors rank by chance: train one in the **Train** tab, then pick it here.")


def friendly(fn):
    """Bad input becomes a readable message in the page; the app keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err), duration=12) from None
        except Exception as err:  # noqa: BLE001 - never let one request take the server down
            traceback.print_exc()
            raise gr.Error(f"unexpected {type(err).__name__}: {err}", duration=12) from None

    return wrapper


def image_path(image):
    """Image events run with preprocess=False, so a broken upload reaches vlmviz.images.load_image, whose message
    says what was expected, instead of failing inside Gradio's own image decoding."""
    return image.get("path") if isinstance(image, dict) else image


def choices(checkpoints: dict) -> list[str]:
    return list(checkpoints) + UNTRAINED


# ---- Inspect ------------------------------------------------------------------------------------------------
def pick_gallery(evt: gr.SelectData):
    item = GALLERY[evt.index]
    return str(item.path), "\n".join([item.caption, *item.distractors])


@friendly
def inspect(image, captions, encoder, text, projector, tokens, temperature, checkpoints):
    image = image_path(image)
    if image is None:
        raise ValueError("no image: upload one or pick one from the gallery")
    pipe = explore.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
    rows = pipe.rank_captions(image, captions, temperature)
    label = {r["caption"]: r["prob"] for r in rows}
    table = [[i + 1, r["caption"], round(r["cosine"], 4), round(r["prob"], 4),
              ", ".join(f"#{j}" for j in r["collides_with"])] for i, r in enumerate(rows)]
    caps = [r["caption"] for r in rows]
    colliding = sum(bool(r["collides_with"]) for r in rows)
    shapes = {**pipe.describe(), "colliding_captions": f"{colliding} of {len(rows)} captions share a vector with "
              f"another in {pipe.text.name} (cosine > 0.999): no connector can rank them apart"}
    return label, table, shapes, gr.update(choices=caps, value=caps[0])


@friendly
def heatmap(image, caption, encoder, text, projector, tokens, checkpoints):
    image = image_path(image)
    if image is None or not caption:
        return None, ""
    pipe = explore.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
    grid, note = pipe.patch_similarity(image, caption)
    if grid is None:
        return None, note
    return plots.heatmap_overlay(pipe.encoder.view(image), grid), f"{note} vs *{caption}*"


@friendly
def nearest_words(image, encoder, text, projector, tokens, checkpoints):
    image = image_path(image)
    if image is None:
        return None, ""
    pipe = explore.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
    if not pipe.text.has_vocab:
        return None, f"{pipe.text.name} has no vocabulary readout"
    rows, note = pipe.nearest_words(image, k=2)
    return rows, note


@friendly
def describe_image(image, projector, mode, checkpoints):
    return describe.describe_choice(projector, checkpoints, image_path(image), mode)


# ---- Map ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _dataset(name: str, n: int):
    result = load_dataset(name, n=n, seed=0)
    return result.samples[:n], len(result.problems)


@friendly
def make_map(dataset, n, method, per_token, encoder, text, projector, tokens, checkpoints,
             progress=gr.Progress()):
    progress(0.05, desc=f"loading {dataset}")
    samples, skipped = _dataset(dataset, int(n))
    pipe = explore.resolve_pipeline(projector, checkpoints, encoder, text, tokens)
    progress(0.3, desc="encoding images")
    result = explore.build_map(pipe, samples, method.lower().replace("-", ""), per_token)  # "t-SNE" -> tsne
    progress(0.9, desc="drawing")
    fig = plots.map_figure(result.frame, f"{pipe.label}: {method} of projected images and captions",
                           thumbnails=result.thumbnails)
    m = result.metrics
    rows = [[k, round(v, 4) if isinstance(v, float) else v] for k, v in m.items()]
    note = result.note + (f"; {skipped} unreadable rows skipped" if skipped else "")
    return fig, rows, note


# ---- Train --------------------------------------------------------------------------------------------------
def _metrics_table(before, after):
    keys = ["i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "modality_gap", "alignment", "mutual_knn", "cka",
            "caption_loss"]
    return [[k, round(before[k], 4) if before else None, round(after[k], 4) if after else None] for k in keys
            if (before or after) and k in (before or after)]


def train(family, loss, pooling, tokens, steps, lr, batch, dataset, n_train, caption_mode, encoder, text,
          checkpoints, request: gr.Request, progress=gr.Progress()):
    sid = request.session_hash if request else "local"
    caption = loss == "caption"
    try:
        cfg = ExperimentConfig(EncoderConfig(encoder, tokens), TextConfig(text),
                               ProjectorConfig(family, CAPTION_OPTIONS.get(family, {}) if caption else {}),
                               TrainConfig(loss=loss, pooling=pooling, steps=int(steps), lr=float(lr),
                                           batch_size=int(batch), warmup_steps=min(20, int(steps) // 10),
                                           eval_every=0 if caption else max(1, int(steps) // 10)),
                               CaptionConfig(caption_mode))
        out = session.unique_path(session.session_dir(sid), f"{family}-{loss}-{dataset}")
        job = session.start_job(sid, session.TrainJob(cfg, dataset, int(n_train), max(20, int(n_train) // 4), out))
    except ValueError as err:
        raise gr.Error(str(err), duration=12) from None
    status = f"encoding {dataset} with {encoder} (cached after the first run) ..."
    yield None, [], status, None, gr.update(), checkpoints
    shown = time.monotonic()
    for event in job.events():
        if event["type"] == "encode":
            progress(event["done"] / max(1, event["total"]) * 0.2, desc="encoding images")
        elif event["type"] == "step":
            progress(0.2 + 0.8 * event["step"] / event["steps"], desc=f"step {event['step']}/{event['steps']}")
            now = time.monotonic()
            if event["step"] % max(1, int(steps) // 50) == 0 or event.get("metrics") or now - shown > 1.0:
                shown = now  # redraw at least once a second, and on every 2% of the run
                status = f"step {event['step']}/{event['steps']} · loss {event['loss']:.4f} · lr {event['lr']:.1e}"
                yield (plots.training_figure(job.history, job.evals), [], status, None, gr.update(), checkpoints)
    if job.error:
        raise gr.Error(f"training failed: {job.error}", duration=None)
    run = job.result
    objective = f"{loss} ({caption_mode})" if caption else loss
    label = f"{family} · {objective} · {dataset} · {run.result.steps_done} steps"
    label += " (cancelled)" if run.result.cancelled else ""
    checkpoints = {**checkpoints, label: str(run.checkpoint)}
    done = (f"{'Cancelled' if run.result.cancelled else 'Finished'} after {run.result.steps_done} steps in "
            f"{run.result.seconds:.1f}s on {run.result.device}. Saved as **{label}**: pick it in Inspect, Map or "
            "Compare, or download it below." + (" Caption-trained: **Describe** in Inspect writes what it sees."
                                                 if caption else ""))
    yield (plots.training_figure(job.history, job.evals), _metrics_table(run.before, run.after), done,
           str(run.checkpoint), gr.update(choices=choices(checkpoints)), checkpoints)


def caption_settings(loss):
    """The caption loss runs every projected token through the frozen LM: token-level, small batches, few steps."""
    if loss != "caption":
        return [gr.update()] * 5
    return ("none", "patch", 30, CAPTION_TRAIN["lr"], CAPTION_TRAIN["batch_size"])


def cancel(request: gr.Request):
    found = session.cancel_job(request.session_hash if request else "local")
    return "cancelling after the current step ..." if found else "nothing is training"


# ---- Compare ------------------------------------------------------------------------------------------------
@friendly
def compare(image, captions, a, b, encoder, text, tokens, dataset, checkpoints):
    image = image_path(image)
    if image is None:
        raise ValueError("no image: upload one or pick one in the Inspect tab")
    labels, metrics = [], []
    samples, _ = _dataset(dataset, 40)
    for choice in (a, b):
        pipe = explore.resolve_pipeline(choice, checkpoints, encoder, text, tokens)
        labels.append({r["caption"]: r["prob"] for r in pipe.rank_captions(image, captions)})
        metrics.append(explore.build_map(pipe, samples, "pca").metrics)
    keys = ["N", "k", "i2t_R@1", "i2t_R@5", "t2i_R@1", "modality_gap", "alignment", "mutual_knn", "cka"]
    table = [[k, *[round(m[k], 4) if isinstance(m[k], float) else m[k] for m in metrics]] for k in keys]
    return labels[0], labels[1], table


# ---- Checkpoints --------------------------------------------------------------------------------------------
@friendly
def upload(file, encoder, text, tokens, checkpoints, request: gr.Request):
    if file is None:
        raise ValueError("no file: choose a vlmviz .safetensors checkpoint, a LLaVA mm_projector.bin or a Hugging "
                         "Face Llava projector .safetensors")
    path, message = session.add_uploaded_checkpoint(file, request.session_hash if request else "local",
                                                    encoder, text, tokens)
    checkpoints = {**checkpoints, f"uploaded {path.stem}": str(path)}
    update = gr.update(choices=choices(checkpoints))
    return f"✅ {message}. Added as **uploaded {path.stem}**.", checkpoints, update, update, update, _ck_rows(
        checkpoints)


def _ck_rows(checkpoints):
    return [[label, os.path.basename(path)] for label, path in checkpoints.items()]


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="vlmviz: see and train VLM connectors") as demo:
        checkpoints = gr.State({})
        gr.Markdown(f"# vlmviz\n{INTRO}")
        with gr.Row():
            encoder = gr.Dropdown(list_vision_encoders(), value="vit-s14", label="Vision encoder (frozen)")
            text = gr.Dropdown(list_text_spaces(), value="smollm2-135m", label="Text space (frozen)")
            projector = gr.Dropdown(UNTRAINED, value="untrained linear", label="Connector", elem_id="projector")
            tokens = gr.Dropdown(list(TOKEN_MODES), value="all", label="Encoder tokens fed to the connector")

        with gr.Tab("Inspect", id="inspect"):
            with gr.Row():
                with gr.Column(scale=5):
                    image = gr.Image(str(GALLERY[0].path), type="filepath",
                                     label="Image: upload one or pick from the gallery",
                                     height=280, elem_id="image")
                    gallery = gr.Gallery([(str(g.path), g.name) for g in GALLERY], columns=8, height=150,
                                         label="Gallery (real images, captions written by us)",
                                         allow_preview=False, elem_id="gallery")
                    captions = gr.Textbox(lines=6, label="Candidate captions, one per line", elem_id="captions",
                                          value="\n".join([GALLERY[0].caption, *GALLERY[0].distractors]))
                    with gr.Row():
                        temperature = gr.Slider(0.005, 1.0, value=0.07, step=0.005, label="Softmax temperature")
                        run = gr.Button("Rank captions", variant="primary", elem_id="rank")
                    with gr.Row():
                        describe_mode = gr.Radio(list(describe.MODES), value="greedy", label="Decoding",
                                                 elem_id="describe-mode")
                        describe_btn = gr.Button("Describe", elem_id="describe")
                    description = gr.Textbox(label="What the LM says through a caption-trained connector",
                                             lines=3, interactive=False, elem_id="description")
                with gr.Column(scale=6):
                    ranking = gr.Label(num_top_classes=8, label="Captions ranked by cosine (softmax at T)",
                                       elem_id="ranking")
                    scores = gr.Dataframe(headers=["rank", "caption", "cosine", "softmax", "same vector as"],
                                          label="Scores",
                                          elem_id="scores", wrap=True)
            with gr.Row():
                with gr.Column():
                    heat_caption = gr.Dropdown([], label="Caption for the patch heatmap", elem_id="heat-caption")
                    heat = gr.Image(label="Which patches match the caption", height=340, elem_id="heatmap")
                    heat_note = gr.Markdown(elem_classes="vv-note")
                with gr.Column():
                    words = gr.Dataframe(label="Nearest vocabulary words of each projected token (on the grid)",
                                         elem_id="words", wrap=True, max_height=380)
                    words_note = gr.Markdown(elem_classes="vv-note")
                    shapes = gr.JSON(label="Shapes along the way", elem_id="shapes")

        with gr.Tab("Map", id="map"):
            with gr.Row():
                dataset = gr.Dropdown(list_datasets(), value="gallery", label="Dataset")
                n_points = gr.Slider(6, 300, value=60, step=1, label="Pairs")
                method = gr.Radio([m.upper() if m != "tsne" else "t-SNE" for m in METHODS], value="PCA",
                                  label="Map (PCA is instant; UMAP and t-SNE are computed once, then cached)")
                per_token = gr.Checkbox(False, label="per projected token")
                map_btn = gr.Button("Draw map", variant="primary", elem_id="draw-map")
            with gr.Row():
                map_plot = gr.Plot(label="Projected images and captions", elem_id="map-plot")
                with gr.Column(scale=0, min_width=280):
                    map_metrics = gr.Dataframe(headers=["metric", "value"], label="Metrics", elem_id="map-metrics")
                    map_note = gr.Markdown(elem_classes="vv-note")

        with gr.Tab("Train", id="train"):
            with gr.Row():
                family = gr.Dropdown(FAMILIES, value="linear", label="Connector family", elem_id="family")
                loss = gr.Dropdown(list(LOSSES) + ["caption"], value="infonce", label="Loss", elem_id="loss")
                pooling = gr.Dropdown(["mean", "cls", "none"], value="mean", label="Pooling")
                train_tokens = gr.Dropdown(list(TOKEN_MODES), value="cls+mean", label="Encoder tokens",
                                           elem_id="train-tokens")
            with gr.Row():
                steps = gr.Slider(10, 2000, value=300, step=10, label="Steps", elem_id="steps")
                lr = gr.Number(1e-2, label="Learning rate")
                batch = gr.Slider(8, 256, value=256, step=8, label="Batch")
                train_data = gr.Dropdown(list_datasets(), value="scenes-1obj", label="Dataset")
                n_train = gr.Slider(40, 1200, value=600, step=20, label="Training pairs", elem_id="n-train")
                caption_mode = gr.Dropdown(list(CAPTION_MODES), value="prefix", elem_id="caption-mode",
                                           label="Caption: visual tokens as LM prefix, or cross-attention")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="start-train")
                stop = gr.Button("Cancel", variant="stop", elem_id="cancel-train")
            status = gr.Markdown("", elem_id="train-status")
            with gr.Row():
                curve = gr.Plot(label="Loss and held-out recall", elem_id="train-curve")
                with gr.Column(scale=0, min_width=300):
                    before_after = gr.Dataframe(headers=["metric", "before", "after"], label="Held-out, before / after",
                                                elem_id="before-after")
                    download = gr.File(label="Checkpoint (safetensors)", elem_id="download")

        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                proj_a = gr.Dropdown(UNTRAINED, value="untrained linear", label="Connector A", elem_id="proj-a")
                proj_b = gr.Dropdown(UNTRAINED, value="untrained mlp2x_gelu", label="Connector B", elem_id="proj-b")
                cmp_data = gr.Dropdown(list_datasets(), value="gallery", label="Metrics on")
                cmp_btn = gr.Button("Compare on the Inspect image", variant="primary", elem_id="compare")
            with gr.Row():
                label_a = gr.Label(num_top_classes=5, label="A")
                label_b = gr.Label(num_top_classes=5, label="B")
            cmp_table = gr.Dataframe(headers=["metric", "A", "B"], label="Metrics (same pairs, same k)")

        with gr.Tab("Checkpoints", id="checkpoints"):
            gr.Markdown("Upload a vlmviz checkpoint (`.safetensors`), a LLaVA `mm_projector.bin` or a Hugging Face "
                        "Llava projector (`multi_modal_projector.linear_1/2`). It is checked against the encoder and "
                        "text space chosen at the top; nothing is unpickled beyond tensors.")
            with gr.Row():
                ck_file = gr.File(label="Projector file", file_types=[".safetensors", ".bin", ".pt", ".pth"],
                                  elem_id="ck-file")
                ck_tokens = gr.Dropdown(list(TOKEN_MODES), value="patch", label="Tokens a LLaVA projector reads")
                ck_btn = gr.Button("Validate and add", variant="primary", elem_id="ck-add")
            ck_msg = gr.Markdown(elem_id="ck-msg")
            ck_list = gr.Dataframe(headers=["name", "file"], label="This session's checkpoints")

        model = [encoder, text, projector, tokens]
        gallery.select(pick_gallery, None, [image, captions])
        run.click(inspect, [image, captions, *model, temperature, checkpoints],
                  [ranking, scores, shapes, heat_caption], concurrency_limit=4, concurrency_id="inspect",
                  preprocess=False).then(
            nearest_words, [image, *model, checkpoints], [words, words_note], concurrency_limit=4, preprocess=False)
        describe_btn.click(describe_image, [image, projector, describe_mode, checkpoints], description,
                           api_name="describe", concurrency_limit=2, concurrency_id="describe", preprocess=False)
        heat_caption.change(heatmap, [image, heat_caption, *model, checkpoints], [heat, heat_note],
                            concurrency_limit=4, preprocess=False)
        map_btn.click(make_map, [dataset, n_points, method, per_token, *model, checkpoints],
                      [map_plot, map_metrics, map_note], concurrency_limit=2)
        start.click(train, [family, loss, pooling, train_tokens, steps, lr, batch, train_data, n_train, caption_mode,
                            encoder, text, checkpoints], [curve, before_after, status, download, projector,
                                                          checkpoints], concurrency_limit=4)
        loss.change(caption_settings, loss, [pooling, train_tokens, steps, lr, batch])
        stop.click(cancel, None, status)
        checkpoints.change(lambda c: [gr.update(choices=choices(c))] * 2 + [_ck_rows(c)], checkpoints,
                           [proj_a, proj_b, ck_list])
        cmp_btn.click(compare, [image, captions, proj_a, proj_b, encoder, text, tokens, cmp_data, checkpoints],
                      [label_a, label_b, cmp_table], concurrency_limit=2, preprocess=False)
        ck_btn.click(upload, [ck_file, encoder, text, ck_tokens, checkpoints],
                     [ck_msg, checkpoints, projector, proj_a, proj_b, ck_list])
    return demo


demo = build_demo()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    args = parser.parse_args(argv)
    explore.warm_up_in_background()
    demo.queue(default_concurrency_limit=2).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                   css=CSS, theme=THEME, show_error=True)


if __name__ == "__main__":
    main()
