"""Maps at the scale of a dataset: 10k-100k projected images beside their captions, one or two connectors linked.

    from vlmviz.views.maps import connector_maps, write_html
    maps = connector_maps(["scenes", "untrained.safetensors"], samples, method="umap")
    write_html(maps, "map.html", color="color")

Images go through the feature cache in blocks (never every token of every image in memory at once), each
connector's pooled vectors and the distinct captions are mapped together (unit-normalised, so the modality gap shows
as distance) by vlmviz.views.reduce.map_2d, fitted once and kept on disk. The HTML is a WebGL scatter (plotly
`scattergl`) per connector, side by side: hover shows the caption and a thumbnail, a box or lasso selection in one
map highlights the same images in the other and lists them, a button swaps points for a density view.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

BLOCK = 256  # images per feature-cache read and projection
THUMBS = 4000  # hover thumbnails embedded in the HTML (about 1 kB each)
METRIC_PAIRS = 5000  # recall needs an N x N similarity: computed on a seeded sample of this many pairs


@dataclass
class ConnectorMap:
    label: str
    image_xy: np.ndarray  # (N, 2)
    caption_xy: np.ndarray  # (T, 2): the distinct captions
    captions: list[str]  # the distinct captions, in caption_xy order
    caption_of: np.ndarray  # (N,) index into captions of each image's caption
    metrics: dict
    note: str
    vectors: np.ndarray = field(repr=False, default=None)  # (N, D_txt) pooled, unit: for placing later points


_POOLED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # projector -> {image set key: vectors}


def pooled_vectors(pipe, samples: Sequence, progress=None) -> np.ndarray:
    """(N, D_txt) unit pooled projected vectors, BLOCK images at a time through the feature cache; the same
    images through the same connector again come from memory (a second draw reads no tokens)."""
    from ..features import FeatureCache, image_hash
    from ..tokens import pool_tokens

    keys = [image_hash(s.load()) for s in samples]
    with torch.no_grad():  # the weights' fingerprint: a projector trained in place since is not served stale
        weights = tuple(round(float(p.double().sum()), 10) for p in pipe.projector.parameters())
    memo_key = (pipe.encoder.cache_id, pipe.tokens, pipe._vector_pooling, weights,
                hashlib.sha1("".join(keys).encode()).hexdigest())
    memo = _POOLED.setdefault(pipe.projector, {})
    if memo_key in memo:
        return memo[memo_key]
    cache, out = FeatureCache(), []
    for start in range(0, len(samples), BLOCK):
        images = [s.load() for s in samples[start:start + BLOCK]]
        tokens = cache.tokens(pipe.encoder, images, keys=keys[start:start + BLOCK])  # (b, N, D_vis)
        out.append(F.normalize(pool_tokens(pipe.project(tokens), pipe._vector_pooling).float(), dim=-1))
        if progress is not None:
            progress(min(start + BLOCK, len(samples)), len(samples))
    vectors = torch.cat(out).numpy()
    while len(memo) >= 4:
        memo.pop(next(iter(memo)))
    memo[memo_key] = vectors
    return vectors


def scale_metrics(img: np.ndarray, txt: np.ndarray, k: int = 10, seed: int = 0) -> dict:
    """Geometry on every pair (gap, alignment, mutual kNN, CKA: no N x N matrix) and recall / uniformity on a seeded
    sample of METRIC_PAIRS pairs when there are more (both need all pairs of the sample); N and k stated."""
    from ..eval.metrics import alignment, alignment_report, caption_ids, cka, modality_gap, mutual_knn

    a, b = torch.from_numpy(img), torch.from_numpy(txt)
    n = len(a)
    pick = np.sort(np.random.default_rng(seed).choice(n, METRIC_PAIRS, replace=False)) if n > METRIC_PAIRS else None
    sample = alignment_report(a[pick] if pick is not None else a, b[pick] if pick is not None else b, k=k,
                              ids=caption_ids(b[pick] if pick is not None else b))
    whole = {"N": n, "k": min(k, n - 1), "modality_gap": modality_gap(a, b), "alignment": alignment(a, b),
             "mutual_knn": mutual_knn(a, b, min(k, n - 1)), "cka": cka(a, b)}
    recall = {key: v for key, v in sample.items() if key.startswith(("i2t", "t2i", "uniformity", "candidates"))}
    return {**whole, **recall, "recall_N": sample["N"]}


def connector_maps(connectors: Sequence, samples: Sequence, method: str = "umap", progress=None,
                   seed: int = 0, place_on_first: bool = False) -> list[ConnectorMap]:
    """One map per connector of the same samples: names as vlmviz.search.resolve_connector takes them, or
    (label, Pipeline) pairs (the app's untrained families and session checkpoints). place_on_first: the second
    connector's points are not fitted again but placed on the first map (reduce.place: each at its nearest points
    of the first fit), so the layout stays and what moves is the connector (before vs after training); both must
    share a text space."""
    from .reduce import map_2d, place
    from ..search.index import resolve_connector

    if len(samples) < 3:
        raise ValueError(f"a map needs at least 3 image-caption pairs, got {len(samples)}")
    if not 1 <= len(connectors) <= 2:
        raise ValueError(f"expected one connector, or two to compare side by side; got {len(connectors)}")
    captions = [s.caption for s in samples]
    distinct = list(dict.fromkeys(captions))
    where = {c: i for i, c in enumerate(distinct)}
    caption_of = np.array([where[c] for c in captions])
    maps = []
    for spec in connectors:
        if isinstance(spec, tuple):
            label, pipe = spec
        else:
            pipe, identity = resolve_connector(spec)
            label = Path(spec).stem if Path(str(spec)).suffix else identity["connector"]
        img = pooled_vectors(pipe, samples, progress)
        # the same vectors, captions and method again (a second draw): the map and its metrics from memory
        key = (hashlib.sha1(img.tobytes()).hexdigest(), pipe.text.cache_id,
               hashlib.sha1("\n".join(distinct).encode()).hexdigest(), method, seed)
        if key not in _DRAWN:
            txt = F.normalize(pipe.text.encode(distinct).float(), dim=-1).numpy()  # (T, D_txt)
            xy, note = map_2d(np.concatenate([img, txt]), method, seed)
            _DRAWN[key] = (xy, txt, scale_metrics(img, txt[caption_of], seed=seed),
                           f"{note} ({len(img):,} images + {len(distinct):,} distinct captions) in {pipe.text.name}")
            while len(_DRAWN) > 8:
                _DRAWN.pop(next(iter(_DRAWN)))
        xy, txt, metrics, note = _DRAWN[key]
        if place_on_first and maps:
            first = maps[0]
            if first.vectors.shape[1] != img.shape[1]:
                raise ValueError(f"place_on_first needs one text space: {first.label} maps into "
                                 f"{first.vectors.shape[1]}-d, {label} into {img.shape[1]}-d")
            fitted = np.concatenate([first.vectors, first_txt])
            fitted_xy = np.concatenate([first.image_xy, first.caption_xy])
            xy = np.concatenate([place(img, fitted, fitted_xy), first.caption_xy])  # the captions stay put
            note = f"placed on the map of {first.label} (not refitted)"
        first_txt = first_txt if maps else txt  # the first map's caption vectors, fitted with it
        maps.append(ConnectorMap(label, xy[:len(img)], xy[len(img):], distinct, caption_of, metrics, note, img))
    return maps


_DRAWN: dict = {}  # (vectors, text space, captions, method, seed) -> (xy, caption vectors, metrics, note), newest last


def _thumb(image, size: int = 48) -> str:
    img = image.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def figure(maps: list[ConnectorMap], samples: Sequence, color: str | None = None):
    """The plotly figure: a scattergl map per connector, images coloured by a metadata column, captions as x."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if color and not any(color in s.meta for s in samples):
        color = None  # a column this dataset does not have: one colour, not one empty group
    values = [str(s.meta.get(color, "")) for s in samples] if color else ["image"] * len(samples)
    groups = sorted(set(values))
    palette = ["#4C6EF5", "#F76707", "#2F9E44", "#E03131", "#AE3EC9", "#1098AD", "#F59F00", "#5C940D", "#868E96",
               "#D6336C"]
    titles = [f"{m.label}<br><sup>gap {m.metrics['modality_gap']:.2f} · mutual kNN {m.metrics['mutual_knn']:.2f} "
              f"(k={m.metrics['k']}) · CKA {m.metrics['cka']:.2f} · i2t R@1 {m.metrics.get('i2t_R@1', 0):.2f} "
              f"(N={m.metrics['recall_N']:,}) </sup>" for m in maps]
    fig = make_subplots(1, len(maps), subplot_titles=titles, horizontal_spacing=0.04)
    caption_text = [s.caption for s in samples]
    for col, m in enumerate(maps, start=1):
        for gi, g in enumerate(groups):
            idx = np.flatnonzero(np.array(values) == g)
            fig.add_trace(go.Scattergl(
                x=m.image_xy[idx, 0], y=m.image_xy[idx, 1], mode="markers", name=g if color else "images",
                legendgroup=g, showlegend=col == 1, customdata=idx, text=[caption_text[i] for i in idx],
                hovertemplate="%{text}<extra>image #%{customdata}</extra>",
                marker=dict(size=4, color=palette[gi % len(palette)], opacity=0.7),
                selected=dict(marker=dict(opacity=1.0, size=6)), unselected=dict(marker=dict(opacity=0.12)),
                meta="images"), 1, col)
        fig.add_trace(go.Scattergl(
            x=m.caption_xy[:, 0], y=m.caption_xy[:, 1], mode="markers", name="captions", legendgroup="captions",
            showlegend=col == 1, text=m.captions, hovertemplate="caption: %{text}<extra></extra>",
            marker=dict(size=7, symbol="x", color="#212529"), meta="captions"), 1, col)
        fig.add_trace(go.Histogram2dContour(
            x=m.image_xy[:, 0], y=m.image_xy[:, 1], colorscale="Blues", showscale=False, visible=False,
            ncontours=20, name="density", meta="density", hoverinfo="skip"), 1, col)
        fig.update_xaxes(title_text=f"{m.note.split(' ')[0]} 1", row=1, col=col)
        fig.update_yaxes(title_text=f"{m.note.split(' ')[0]} 2", row=1, col=col)
    kinds = [t.meta for t in fig.data]
    fig.update_layout(
        height=640, dragmode="lasso", legend=dict(orientation="h", y=-0.12), margin=dict(t=90, l=40, r=20, b=40),
        updatemenus=[dict(type="buttons", direction="left", x=0, y=1.16, xanchor="left", buttons=[
            dict(label="points", method="restyle", args=[{"visible": [k != "density" for k in kinds]}]),
            dict(label="density", method="restyle", args=[{"visible": [k != "images" for k in kinds]}]),
        ])],
        annotations=list(fig.layout.annotations) + [dict(
            text=" · ".join(m.note for m in maps), showarrow=False, xref="paper", yref="paper", x=0, y=-0.2,
            xanchor="left", font=dict(size=10, color="#666"))])
    return fig


_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var thumbs = {thumbs};
var captions = {captions};
var traceIds = {trace_ids};  // per trace: the image id of each point (null for caption and density traces)
var tip = document.createElement('div');
tip.id = 'vv-thumb';
tip.style.cssText = 'position:fixed;pointer-events:none;display:none;background:#fff;border:1px solid #ccc;padding:4px;z-index:10';
document.body.appendChild(tip);
gd.on('plotly_hover', function(ev) {{
  var p = ev.points[0], ids = traceIds[p.curveNumber];
  if (!ids) return;
  var id = ids[p.pointNumber];
  tip.innerHTML = (id in thumbs ? '<img src="' + thumbs[id] + '" width="96"><br>' : '') + '<small>#' + id + ' ' +
    captions[id] + '</small>';
  var e = ev.event || {{clientX: 20, clientY: 20}};
  tip.style.left = (e.clientX + 14) + 'px'; tip.style.top = (e.clientY + 14) + 'px';
  tip.style.display = 'block';
}});
gd.on('plotly_unhover', function() {{ tip.style.display = 'none'; }});
function link(ev) {{
  if (!ev || !ev.points) return;
  var chosen = new Set();
  ev.points.forEach(function(p) {{
    var ids = traceIds[p.curveNumber];
    if (ids) chosen.add(ids[p.pointNumber !== undefined ? p.pointNumber : p.pointIndex]);
  }});
  var sel = traceIds.map(function(ids) {{
    if (!ids) return null;
    var out = []; for (var i = 0; i < ids.length; i++) if (chosen.has(ids[i])) out.push(i);
    return out;
  }});
  Plotly.restyle(gd, {{selectedpoints: sel}});
  var shown = Array.from(chosen).slice(0, 60);
  var list = document.getElementById('vv-selected');  // below the plot: looked up when there is something to list
  list.innerHTML = '<b>' + chosen.size + ' images selected</b> (the same images are highlighted in every map)<br>' +
    shown.map(function(i) {{ return (i in thumbs ? '<img src="' + thumbs[i] + '" width="48" title="' + captions[i] +
    '">' : '') + ' #' + i + ' ' + captions[i]; }}).join('<br>');
  gd.dataset.selected = chosen.size;
}}
gd.on('plotly_selected', link);
"""


def write_html(maps: list[ConnectorMap], samples: Sequence, out: str | Path, color: str | None = None) -> Path:
    """One self-contained HTML file (plotly.js inlined: it opens offline) with the linked maps."""
    from ..checkpoints import atomic_write

    fig = figure(maps, samples, color)
    trace_ids = [np.asarray(t.customdata).tolist() if t.meta == "images" else None for t in fig.data]
    step = max(1, len(samples) // THUMBS)
    thumbs = {i: _thumb(samples[i].load()) for i in range(0, len(samples), step)}
    body = fig.to_html(include_plotlyjs=True, full_html=False, div_id="vv-map",
                       post_script=_SCRIPT.format(plot_id="vv-map", thumbs=json.dumps(thumbs),
                                                  captions=json.dumps([s.caption for s in samples]),
                                                  trace_ids=json.dumps(trace_ids)))
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>vlmviz map</title></head><body "
            f"style='font-family:sans-serif'>{body}<div id='vv-selected' style='margin:8px;font-size:13px'>Select "
            "points (lasso or box) to list them here and highlight them in every map.</div></body></html>")
    out = Path(out)
    atomic_write(out, lambda tmp: Path(tmp).write_text(html))
    return out


def cmd_map(args) -> None:
    """`python -m vlmviz map`: a dataset mapped through one or two connectors into an HTML file."""
    from tqdm.auto import tqdm

    from ..data import load_dataset

    if args.n is not None and args.n < 3:
        raise ValueError(f"--n must be at least 3, got {args.n}")
    samples = load_dataset(args.dataset, args.n, seed=args.seed).samples
    if args.color and not any(args.color in s.meta for s in samples):
        columns = sorted({k for s in samples for k, v in s.meta.items() if isinstance(v, (str, int))})
        raise ValueError(f"--color {args.color!r}: the dataset has no such column; it has {', '.join(columns)}")
    bar = tqdm(total=len(samples) * len(args.connector), desc="projecting images", unit="img")
    done = {"base": 0}

    def progress(n, total):
        bar.n = done["base"] + n
        bar.refresh()
        if n >= total:
            done["base"] += total

    maps = connector_maps(args.connector, samples, args.method, progress, args.seed, args.place_on_first)
    bar.close()
    out = write_html(maps, samples, args.out, args.color)
    for m in maps:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.metrics.items()}
        print(f"{m.label}: {m.note}\n  {json.dumps(shown)}")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def add_parser(sub) -> None:
    p = sub.add_parser("map", help="map a dataset's projected images beside their captions (one or two connectors, "
                                   "linked) into an HTML file")
    p.add_argument("--dataset", default="scenes-1obj", help="a bundled dataset or your folder / COCO json")
    p.add_argument("--n", type=int, default=2000, help="pairs to map (default 2000; 10k-100k work)")
    p.add_argument("--connector", nargs="+", default=["scenes"],
                   help="one or two: 'photo', 'scenes', checkpoint files, vlm:FOLDER")
    p.add_argument("--method", choices=("pca", "umap", "tsne"), default="umap")
    p.add_argument("--color", help="colour images by this metadata column (e.g. color, shape)")
    p.add_argument("--place-on-first", action="store_true",
                   help="place the second connector's points on the first map instead of fitting its own (the same "
                        "layout before and after training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="map.html")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_map)
