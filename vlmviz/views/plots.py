"""Figures: plotly where people hover and zoom (maps, curves), PIL/matplotlib colormaps for image overlays."""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from PIL import Image

IMAGE_COLOR, TEXT_COLOR = "#e4572e", "#2e86ab"


def heatmap_overlay(image: Image.Image, grid: np.ndarray, alpha: float = 0.55, cmap: str = "inferno",
                    size: int = 448, label: str = "cosine with the caption") -> Image.Image:
    """Colour the (h, w) grid over the image as the encoder saw it (a centred square), with a colour bar that
    gives the real cosine at each end: min-max scaling alone would make any grid look contrasted."""
    from matplotlib import colormaps

    img = _center_square(image).resize((size, size), Image.BICUBIC)
    g = np.asarray(grid, dtype=np.float32)
    lo, hi = float(g.min()), float(g.max())
    scaled = (g - lo) / (hi - lo + 1e-8)
    rgba = (colormaps[cmap](scaled) * 255).astype(np.uint8)  # (h, w, 4)
    heat = Image.fromarray(rgba[..., :3]).resize((size, size), Image.NEAREST)
    return _with_colour_bar(Image.blend(img.convert("RGB"), heat, alpha), cmap, lo, hi, label)


def _with_colour_bar(img: Image.Image, cmap: str, lo: float, hi: float, label: str) -> Image.Image:
    """The image with a vertical colour bar on its right, labelled with the top, middle and bottom values."""
    from matplotlib import colormaps
    from PIL import ImageDraw, ImageFont

    w, h = img.size
    bar_w, pad, text_w = 18, 10, 78
    out = Image.new("RGB", (w + pad + bar_w + text_w, h), "white")
    out.paste(img, (0, 0))
    ramp = (colormaps[cmap](np.linspace(1, 0, h))[:, :3] * 255).astype(np.uint8)  # (h, 3), high at the top
    out.paste(Image.fromarray(np.repeat(ramp[:, None], bar_w, axis=1)), (w + pad, 0))
    draw = ImageDraw.Draw(out)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    x = w + pad + bar_w + 4
    for frac, value in ((0.0, hi), (0.5, (lo + hi) / 2), (1.0, lo)):
        y = min(max(int(frac * h) - 7, 0), h - 16)
        draw.text((x, y), f"{value:+.3f}", fill="black", font=font)
    draw.text((x, h // 2 + 14), "\n".join(label.split()), fill="#555555", font=font)
    return out


def provenance_overlay(image: Image.Image, weights: np.ndarray, box: tuple[int, int, int, int] | None = None,
                       size: int = 448) -> Image.Image:
    """The image as the tower saw it, dimmed except the source patches of one projected token (vlmviz.views.provenance),
    which are tinted by their share; `box` outlines the token's own cell of the output grid."""
    from PIL import ImageDraw

    img = np.asarray(_center_square(image).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    share = w / (w.max() + 1e-12)  # (gh, gw), 1 for the strongest patch
    cells = np.asarray(Image.fromarray((share * 255).astype(np.uint8)).resize((size, size), Image.NEAREST))
    a = (cells.astype(np.float32) / 255)[..., None]  # (size, size, 1)
    tint = np.array([255, 140, 0], dtype=np.float32)  # orange, like the app's secondary hue
    out = img * (0.4 + 0.6 * np.minimum(1, 4 * a)) * (1 - 0.35 * a) + tint * 0.35 * a
    pic = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    gh, gw = w.shape
    sources = share > 1e-6
    if sources.sum() <= 64:  # few sources: outline each, so a 2 x 2 or 4 x 4 block reads as patches
        for r, c in zip(*np.nonzero(sources)):
            draw.rectangle((c * size // gw, r * size // gh, (c + 1) * size // gw - 1, (r + 1) * size // gh - 1),
                           outline=(255, 255, 255))
    if box is not None:
        draw.rectangle(box, outline=(79, 70, 229), width=3)  # indigo: the output token's own place
    return pic


def _center_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    s = min(w, h)
    return image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def thumbnail_uri(image: Image.Image, size: int = 64) -> str:
    thumb = image.copy()
    thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _spread_out(xy: np.ndarray, min_dist: float, limit: int) -> list[int]:
    """Indices of up to `limit` points, none closer than min_dist to another chosen one: thumbnails that do not
    pile up into a blob where points crowd."""
    chosen: list[int] = []
    for i, p in enumerate(xy):
        if len(chosen) >= limit:
            break
        if all(np.abs(p - xy[j]).max() >= min_dist for j in chosen):
            chosen.append(i)
    return chosen


AXIS_NAMES = {"PCA": "principal component", "UMAP": "UMAP", "t-SNE": "t-SNE"}


def map_figure(frame: pd.DataFrame, title: str = "", thumbnails: list[Image.Image] | None = None,
               max_thumbnails: int = 30, method: str = "PCA", point_name: str = "images"):
    """frame: columns x, y, kind ('image' | 'caption'), pair, caption. Lines join each image to its caption;
    hovering shows the caption; small thumbnails sit on image points that have room (up to max_thumbnails).
    point_name says what the image-side points are (images, or projected tokens)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    img, txt = frame[frame.kind == "image"], frame[frame.kind == "caption"]
    ends = img.merge(txt.drop_duplicates("pair"), on="pair", suffixes=("", "_txt"))  # one row per joined pair
    lines_x = np.column_stack([ends.x, ends.x_txt, np.full(len(ends), np.nan)]).ravel()  # NaN breaks the line
    lines_y = np.column_stack([ends.y, ends.y_txt, np.full(len(ends), np.nan)]).ravel()
    fig.add_trace(go.Scatter(x=lines_x, y=lines_y, mode="lines", line=dict(color="rgba(120,120,120,0.35)", width=1),
                             hoverinfo="skip", name="matched pair"))
    for part, name, color, symbol in ((img, point_name, IMAGE_COLOR, "circle"),
                                      (txt, "captions", TEXT_COLOR, "diamond")):
        fig.add_trace(go.Scatter(
            x=part.x, y=part.y, mode="markers", name=f"{name} ({len(part)})",
            marker=dict(color=color, size=9, symbol=symbol, line=dict(color="white", width=1)),
            customdata=np.stack([part.caption, part.pair], axis=1) if len(part) else None,
            hovertemplate="<b>%{customdata[0]}</b><br>pair %{customdata[1]}<extra></extra>"))
    if thumbnails:
        span = max(frame.x.max() - frame.x.min(), frame.y.max() - frame.y.min(), 1e-6)
        side = span * 0.07
        xy = img[["x", "y"]].to_numpy()[:len(thumbnails)]
        for i in _spread_out(xy, side * 1.1, max_thumbnails):
            fig.add_layout_image(source=thumbnail_uri(thumbnails[i]), x=xy[i, 0], y=xy[i, 1], xref="x", yref="y",
                                 sizex=side, sizey=side, xanchor="center", yanchor="middle", layer="above",
                                 opacity=0.9)
    axis = AXIS_NAMES.get(method, method)
    note = "" if method == "PCA" else " (distances between clusters are not meaningful)"
    fig.update_layout(title=dict(text=title, font=dict(size=14)), template="plotly_white", height=540,
                      margin=dict(l=50, r=10, t=40, b=50), legend=dict(orientation="h", y=-0.12),
                      xaxis=dict(showticklabels=False, title=f"{axis} 1{note}"),
                      yaxis=dict(showticklabels=False, title=f"{axis} 2", scaleanchor="x"))
    return fig


def training_figure(history: list[dict], evals: list[dict] | None = None, title: str = "Training"):
    """Loss per step (left axis) and eval R@1 (right axis)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if history:
        fig.add_trace(go.Scatter(x=[h["step"] for h in history], y=[h["loss"] for h in history], name="loss",
                                 line=dict(color=IMAGE_COLOR)), secondary_y=False)
    for key, color in (("i2t_R@1", TEXT_COLOR), ("t2i_R@1", "#6a994e")):
        if evals:
            fig.add_trace(go.Scatter(x=[e["step"] for e in evals], y=[e[key] for e in evals], name=f"held-out {key}",
                                     mode="lines+markers", line=dict(color=color, dash="dot")), secondary_y=True)
    fig.update_layout(title=title, template="plotly_white", height=360, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="recall@1", range=[0, 1.05], secondary_y=True)
    return fig


def watch_figure(frames: list, text: "torch.Tensor", index: int = -1):
    """Held-out images moving during training (the Train tab): frames [(step, (W, D) unit image vectors)], text
    (W, D) their unit caption vectors. The axes are the captions' two principal directions, fixed for every frame
    (the text side is frozen), so what moves is the connector's output."""
    import plotly.graph_objects as go

    txt = text.double().numpy()
    mean = txt.mean(0)
    _, _, vt = np.linalg.svd(txt - mean, full_matrices=False)
    basis = vt[:2].T  # (D, 2)
    tx = (txt - mean) @ basis
    points = [(step, (img.double().numpy() - mean) @ basis) for step, img in frames]
    every = np.concatenate([tx] + [p for _, p in points])
    lo, hi = every.min(0), every.max(0)
    pad = (hi - lo) * 0.05 + 1e-6
    step, xy = points[index]
    fig = go.Figure()
    lines_x = np.column_stack([xy[:, 0], tx[:, 0], np.full(len(xy), np.nan)]).ravel()
    lines_y = np.column_stack([xy[:, 1], tx[:, 1], np.full(len(xy), np.nan)]).ravel()
    fig.add_trace(go.Scatter(x=lines_x, y=lines_y, mode="lines", line=dict(color="rgba(120,120,120,0.25)", width=1),
                             hoverinfo="skip", name="image to its caption"))
    fig.add_trace(go.Scatter(x=tx[:, 0], y=tx[:, 1], mode="markers", name=f"captions ({len(tx)})",
                             marker=dict(color=TEXT_COLOR, size=8, symbol="diamond")))
    fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"held-out images ({len(xy)})",
                             marker=dict(color=IMAGE_COLOR, size=7)))
    fig.update_layout(title=dict(text=f"step {step}: held-out images in the captions' PCA plane", font=dict(size=13)),
                      template="plotly_white", height=420, margin=dict(l=50, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.12),
                      xaxis=dict(range=[lo[0] - pad[0], hi[0] + pad[0]], title="caption PC 1"),
                      yaxis=dict(range=[lo[1] - pad[1], hi[1] + pad[1]], title="caption PC 2"))
    return fig
