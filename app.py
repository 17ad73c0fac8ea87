"""vlmviz web app: layout and event wiring only; the work happens in vlmviz.explore.

    python app.py [--host 127.0.0.1] [--port 7860] [--share]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from vlmviz import explore  # noqa: E402
from vlmviz.config import TOKEN_MODES  # noqa: E402
from vlmviz.data import load_gallery  # noqa: E402
from vlmviz.encoders import list_vision_encoders  # noqa: E402
from vlmviz.projectors import list_projectors  # noqa: E402
from vlmviz.text import list_text_spaces  # noqa: E402

GALLERY = load_gallery()
PROJECTORS = ["linear", "mlp2x_gelu"] + [p for p in list_projectors() if p not in ("linear", "mlp", "identity")]


def pick_gallery(evt: gr.SelectData):
    item = GALLERY[evt.index]
    return str(item.path), "\n".join([item.caption, *item.distractors])


def rank(image, captions, encoder, text, projector, tokens, temperature):
    try:
        if image is None:
            raise ValueError("no image: upload one or pick one from the gallery")
        pipe = explore.get_pipeline(encoder, text, projector, tokens)
        rows = pipe.rank_captions(image, captions, temperature)
    except ValueError as err:  # bad input: say what was expected, keep serving
        raise gr.Error(str(err)) from None
    label = {r["caption"]: r["prob"] for r in rows}
    table = [[i + 1, r["caption"], round(r["cosine"], 4), round(r["prob"], 4)] for i, r in enumerate(rows)]
    return label, table, pipe.describe()


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="vlmviz: see and train VLM connectors") as demo:
        gr.Markdown("# vlmviz\nRun an image through a frozen vision encoder and a connector, then rank captions in a "
                    "frozen text space by cosine similarity. An **untrained** connector ranks by chance: train one "
                    "(`python -m vlmviz train`) to see alignment emerge.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image (upload, or pick from the gallery below)",
                                 height=300, elem_id="image")
                gallery = gr.Gallery([(str(g.path), g.name) for g in GALLERY], columns=6, height=180,
                                     label="Gallery", allow_preview=False, elem_id="gallery")
            with gr.Column(scale=1):
                with gr.Row():
                    encoder = gr.Dropdown(list_vision_encoders(), value="vit-s14", label="Vision encoder")
                    text = gr.Dropdown(list_text_spaces(), value="smollm2-135m", label="Text space")
                with gr.Row():
                    projector = gr.Dropdown(PROJECTORS, value="linear", label="Connector (untrained)")
                    tokens = gr.Dropdown(list(TOKEN_MODES), value="all", label="Encoder tokens")
                captions = gr.Textbox(lines=7, label="Candidate captions (one per line)", elem_id="captions")
                temperature = gr.Slider(0.005, 1.0, value=0.07, step=0.005, label="Softmax temperature")
                run = gr.Button("Rank captions", variant="primary", elem_id="rank")
        with gr.Row():
            ranking = gr.Label(num_top_classes=10, label="Caption ranking (softmax of cosine / T)",
                               elem_id="ranking")
            with gr.Column():
                table = gr.Dataframe(headers=["rank", "caption", "cosine", "softmax"], label="Scores",
                                     elem_id="scores")
                shapes = gr.JSON(label="Shapes along the way")
        gallery.select(pick_gallery, None, [image, captions])
        run.click(rank, [image, captions, encoder, text, projector, tokens, temperature], [ranking, table, shapes])
    return demo


demo = build_demo()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on (default: 127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    args = parser.parse_args()
    explore.warm_up_in_background()
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share)
