"""Figures: plotly where people hover and zoom (maps, curves), PIL/matplotlib colormaps for image overlays."""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from PIL import Image

IMAGE_COLOR, TEXT_COLOR = "#e4572e", "#2e86ab"


def heatmap_overlay(image: Image.Image, grid: np.ndarray, alpha: float = 0.55, cmap: str = "inferno",
                    size: int = 448) -> Image.Image:
    """Colour the (h, w) grid over the image as the encoder saw it (a centred square), min-max scaled."""
    from matplotlib import colormaps

    img = _center_square(image).resize((size, size), Image.BICUBIC)
    g = np.asarray(grid, dtype=np.float32)
    g = (g - g.min()) / (g.max() - g.min() + 1e-8)
    rgba = (colormaps[cmap](g) * 255).astype(np.uint8)  # (h, w, 4)
    heat = Image.fromarray(rgba[..., :3]).resize((size, size), Image.NEAREST)
    return Image.blend(img.convert("RGB"), heat, alpha)


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


def map_figure(frame: pd.DataFrame, title: str = "", thumbnails: list[Image.Image] | None = None,
               max_thumbnails: int = 40):
    """frame: columns x, y, kind ('image' | 'caption'), pair, caption. Lines join each image to its caption;
    hovering shows the caption; small thumbnails sit on the image points (up to max_thumbnails)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    img, txt = frame[frame.kind == "image"], frame[frame.kind == "caption"]
    lines_x, lines_y = [], []
    for pair, row in img.set_index("pair").iterrows():
        match = txt[txt.pair == pair]
        if len(match):
            lines_x += [row.x, match.x.iloc[0], None]
            lines_y += [row.y, match.y.iloc[0], None]
    fig.add_trace(go.Scatter(x=lines_x, y=lines_y, mode="lines", line=dict(color="rgba(120,120,120,0.35)", width=1),
                             hoverinfo="skip", name="matched pair"))
    for part, color, symbol in ((img, IMAGE_COLOR, "circle"), (txt, TEXT_COLOR, "diamond")):
        fig.add_trace(go.Scatter(
            x=part.x, y=part.y, mode="markers", name=f"{part.kind.iloc[0] if len(part) else ''}s ({len(part)})",
            marker=dict(color=color, size=9, symbol=symbol, line=dict(color="white", width=1)),
            customdata=np.stack([part.caption, part.pair], axis=1) if len(part) else None,
            hovertemplate="<b>%{customdata[0]}</b><br>pair %{customdata[1]}<extra></extra>"))
    if thumbnails:
        span = max(frame.x.max() - frame.x.min(), frame.y.max() - frame.y.min(), 1e-6)
        for (_, row), thumb in list(zip(img.iterrows(), thumbnails))[:max_thumbnails]:
            fig.add_layout_image(source=thumbnail_uri(thumb), x=row.x, y=row.y, xref="x", yref="y",
                                 sizex=span * 0.06, sizey=span * 0.06, xanchor="center", yanchor="middle",
                                 layer="above", opacity=0.9)
    fig.update_layout(title=title, template="plotly_white", height=520, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.05), xaxis=dict(showticklabels=False, title=""),
                      yaxis=dict(showticklabels=False, title="", scaleanchor="x"))
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
