"""Projector checkpoints: one safetensors file whose header carries the JSON config, written atomically.

The config records what a projector needs to be rebuilt and what it was trained between: family, dims, options,
encoder, token selection, text space, pooling. Loading rebuilds the projector, checks every tensor's shape and
the dims against the encoder and text space in use, and says what was expected versus found. Modules trained beside
the projector (the gated cross-attention blocks of a captioning connector) ride along as extra tensor groups,
`@<group>.<key>`, listed in the config's "extra" and read back with `read_extra`.

At the edge we speak LLaVA: `mm_projector.bin` (a torch state dict with keys `model.mm_projector.0.weight`,
`.2.weight`, ... for mlpNx_gelu, `model.mm_projector.weight` for linear) and Hugging Face Llava's
`multi_modal_projector.linear_1/linear_2`. Nothing is ever unpickled beyond tensors: torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .projectors import Projector, build_projector

FORMAT = "vlmviz-projector/1"
EXTRA = "@"  # prefix of tensors that belong to modules trained beside the projector


class CheckpointError(ValueError):
    """A checkpoint could not be used; the message says what was expected and what was found."""


def atomic_write(path: str | Path, write) -> Path:
    """Call write(tmp_path) on a temp file next to `path`, fsync it, then rename over `path`: a crash or a full
    disk mid-write leaves the previous file intact, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, projector: Projector, extra: dict[str, dict] | None = None, **meta) -> Path:
    """Save weights + config. `meta`: encoder, tokens, text, pooling, loss, steps, metrics ... (JSON-able).
    `extra`: {group: state_dict} of modules trained with the projector, stored as `@group.key`."""
    extra = extra or {}
    config = {"format": FORMAT, "projector": projector.config(), **meta}
    if extra:
        config["extra"] = sorted(extra)
    states = [("", projector.state_dict())] + [(f"{EXTRA}{g}.", state) for g, state in extra.items()]
    tensors = {p + k: v.detach().to("cpu", torch.float32).contiguous() for p, state in states for k, v in state.items()}
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise CheckpointError("refusing to save a projector with NaN or infinite weights")
    header = {"vlmviz": json.dumps(config)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_config(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("vlmviz")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{Path(path).name}: not a readable safetensors checkpoint ({err})") from None
    if raw is None:
        raise CheckpointError(f"{Path(path).name}: safetensors file has no vlmviz config; "
                              "if it holds LLaVA projector weights, import it with import_llava_projector")
    return json.loads(raw)


def load_checkpoint(path: str | Path, in_dim: int | None = None, out_dim: int | None = None,
                    encoder: str | None = None, text: str | None = None) -> tuple[Projector, dict]:
    """Rebuild and fill the projector; check it fits an encoder width `in_dim` and a text width `out_dim`."""
    config = read_config(path)
    spec = config["projector"]
    _check_dims(spec["in_dim"], spec["out_dim"], in_dim, out_dim, config, encoder, text)
    projector = build_projector(spec["family"], spec["in_dim"], spec["out_dim"], **spec.get("options", {}))
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith(EXTRA)}
    _load_state(projector, state, Path(path).name)
    return projector.eval(), config


def read_extra(path: str | Path, group: str) -> dict[str, torch.Tensor]:
    """The state dict of an extra module group saved beside the projector (e.g. 'xattn')."""
    prefix = f"{EXTRA}{group}."
    state = {k[len(prefix):]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}
    if not state:
        groups = read_config(path).get("extra", [])
        raise CheckpointError(f"{Path(path).name} holds no {group!r} weights; its extra groups: {groups or 'none'}")
    return state


def load_module_state(module: torch.nn.Module, state: dict, what: str) -> None:
    """load_state_dict after checking names, shapes and finiteness; a mismatch names every key, expected vs found."""
    problems = _state_problems(module.state_dict(), state)
    if problems:
        raise CheckpointError(f"{what}: {problems}")
    module.load_state_dict(state)


def _check_dims(ck_in, ck_out, in_dim, out_dim, config, encoder, text):
    problems = []
    if in_dim is not None and ck_in != in_dim:
        problems.append(f"checkpoint projector expects D_vis={ck_in} (encoder {config.get('encoder', '?')}, tokens "
                        f"{config.get('tokens', '?')}), encoder {encoder or ''} gives {in_dim}")
    if out_dim is not None and ck_out != out_dim:
        problems.append(f"checkpoint projector outputs D_txt={ck_out} (text space {config.get('text', '?')}), "
                        f"text space {text or ''} has {out_dim}")
    if problems:
        raise CheckpointError("; ".join(p.replace("  ", " ") for p in problems))


def _state_problems(expected: dict, state: dict) -> str:
    """'' when `state` fits `expected` key for key and shape for shape, else what is missing / extra / wrong."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    parts = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
             "; ".join(wrong)]
    if any(parts):
        return "; ".join(p for p in parts if p)
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    return f"tensor {bad[0]} contains NaN or infinity" if bad else ""


def _load_state(projector: Projector, state: dict, name: str) -> None:
    problems = _state_problems(projector.state_dict(), state)
    if problems.startswith("tensor "):
        raise CheckpointError(f"{name}: {problems}")
    if problems:
        raise CheckpointError(f"{name} does not fit a {projector.family} projector "
                              f"({projector.in_dim} -> {projector.out_dim}): {problems}")
    projector.load_state_dict(state)


# ---- LLaVA and Hugging Face Llava interop -------------------------------------------------------------------

def _linear_layers(projector: Projector) -> list[torch.nn.Linear]:
    if projector.family == "linear":
        return [projector.linear]
    if re.fullmatch(r"mlp(\d+x_gelu)?", projector.family):
        return [getattr(projector, f"linear_{i}") for i in range(1, projector.depth + 1)]
    raise CheckpointError(f"LLaVA export supports the linear and mlpNx_gelu families, not {projector.family}")


def _check_exportable(projector: Projector, style: str) -> None:
    """Refuse what the target format cannot hold, naming its constraint. LLaVA's builder makes mlpNx_gelu as
    Linear(D_vis, D_txt) followed by N-1 x (GELU, Linear(D_txt, D_txt)) (llava/model/multimodal_projector/builder.py);
    transformers' LlavaMultiModalProjector is always linear_1 (D_vis -> D_txt), act, linear_2 (D_txt -> D_txt)."""
    if style not in ("llava", "hf"):
        raise ValueError(f"style must be 'llava' or 'hf', got {style!r}")
    layers = _linear_layers(projector)
    if style == "hf" and len(layers) != 2:
        raise CheckpointError(f"transformers' Llava projector is exactly linear_1 -> GELU -> linear_2 (mlp2x_gelu); "
                              f"a {projector.family} connector cannot be written in that format"
                              + ("; export it with style 'llava' (mm_projector_type linear)"
                                 if projector.family == "linear" else ""))
    hidden = [layer.out_features for layer in layers[:-1]]
    if any(h != projector.out_dim for h in hidden):
        where = "LLaVA's mlpNx_gelu" if style == "llava" else "transformers' Llava projector"
        raise CheckpointError(f"{where} keeps every hidden layer at the LM width ({projector.out_dim}); this "
                              f"{projector.family} connector has hidden width {hidden[0]}, so it cannot be exported")


def export_llava(projector: Projector, path: str | Path, style: str = "llava") -> Path:
    """style="llava": mm_projector.bin as LLaVA's training saves it (model.mm_projector.{0,2,..}.weight);
    style="hf": safetensors with transformers' Llava names (multi_modal_projector.linear_{1,2}.weight).
    Loads strictly into LLaVA's nn.Sequential / transformers' LlavaMultiModalProjector (tests do so)."""
    _check_exportable(projector, style)
    layers = _linear_layers(projector)
    # fold the input standardisation into the first layer: W (x - m) / s + b = (W / s) x + (b - (W / s) m)
    first_w = layers[0].weight.detach() / projector.input_std  # (out, in)
    first_b = (layers[0].bias.detach() if layers[0].bias is not None else torch.zeros(first_w.shape[0])) \
        - first_w @ projector.input_mean
    state = {}
    for i, layer in enumerate(layers):
        if style == "llava":
            prefix = "model.mm_projector" if projector.family == "linear" else f"model.mm_projector.{2 * i}"
        else:
            prefix = f"multi_modal_projector.linear_{i + 1}"
        weight, bias = (first_w, first_b) if i == 0 else (layer.weight.detach(), layer.bias)
        state[f"{prefix}.weight"] = weight.cpu().contiguous()
        if bias is not None:
            state[f"{prefix}.bias"] = bias.detach().cpu().contiguous()
    if style == "llava":
        return atomic_write(path, lambda tmp: torch.save(state, tmp))
    return atomic_write(path, lambda tmp: save_file(state, tmp))


EXPORT_STYLES = ("llava", "hf-llava", "hf", "qwen2-vl", "internvl", "idefics3", "gemma3")


def export_connector(projector: Projector, path: str | Path, style: str = "llava") -> Path:
    """Any export format: llava / hf-llava (alias hf) here, the real-VLM formats in vlmviz/vlms/export.py."""
    if style in ("llava", "hf", "hf-llava"):
        return export_llava(projector, path, "llava" if style == "llava" else "hf")
    if style not in EXPORT_STYLES:
        raise ValueError(f"style must be one of {', '.join(EXPORT_STYLES)}; got {style!r}")
    from .vlms.export import export_vlm_connector

    return export_vlm_connector(projector, path, style)


def sniff_format(path: str | Path) -> str:
    """'safetensors', 'torch-zip', 'pickle' or 'unknown', by the file's structure, not one byte: a safetensors file
    starts with the little-endian length of a JSON header that follows it, and that length's first byte can be
    anything, 0x80 (a pickle's first byte) included."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "unknown"


def read_llava_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a LLaVA mm_projector.bin (tensors only, weights_only=True) or a safetensors file."""
    import pickle

    path = Path(path)
    expected = "expected LLaVA's mm_projector.bin (a torch state dict) or a safetensors file"
    try:
        kind = sniff_format(path)
        if kind == "safetensors":
            state = load_file(str(path))
        elif kind in ("torch-zip", "pickle"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{path.name}: not a readable projector file ({expected})")
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path.name} holds pickled code beyond plain tensors and will not be loaded "
                              "(vlmviz never runs code from a weights file); save the state dict as tensors only "
                              "or as safetensors") from None
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path.name}: not a readable projector file ({expected}): "
                              f"{str(err).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path.name}: expected a dict of tensors")
    return state


def import_llava_projector(path: str | Path, in_dim: int | None = None, out_dim: int | None = None) -> Projector:
    """Build a linear or mlpNx_gelu projector from LLaVA's or transformers' Llava projector weights."""
    state = read_llava_state(path)
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = (re.search(r"mm_projector\.(?:(\d+)\.)?(weight|bias)$", key)
             or re.search(r"multi_modal_projector\.linear_(\d+)\.(weight|bias)$", key))
        if not m:
            continue
        index = int(m.group(1)) if m.group(1) else 0
        index = index // 2 if "mm_projector" in key else index - 1  # LLaVA: 0, 2, 4 (GELU between); HF: 1, 2
        layers.setdefault(index, {})[m.group(2)] = tensor.float()
    name = Path(path).name
    if not layers:
        raise CheckpointError(f"{name}: no projector weights found; expected keys like model.mm_projector.0.weight "
                              f"or multi_modal_projector.linear_1.weight, found {sorted(state)[:5]}")
    if sorted(layers) != list(range(len(layers))) or any("weight" not in v for v in layers.values()):
        raise CheckpointError(f"{name}: projector layers are incomplete: found layer indices {sorted(layers)}")
    family = "linear" if len(layers) == 1 else f"mlp{len(layers)}x_gelu"  # mlp1x_gelu is a linear map
    weights = [layers[i]["weight"] for i in range(len(layers))]  # each (out, in)
    ck_in, ck_out = weights[0].shape[1], weights[-1].shape[0]
    _check_dims(ck_in, ck_out, in_dim, out_dim, {"encoder": "of the LLaVA checkpoint"}, None, None)
    options = {} if family == "linear" else {"hidden_dim": weights[0].shape[0]}
    projector = build_projector(family, ck_in, ck_out, **options)
    ours = _linear_layers(projector)
    state = {}
    for i, layer in enumerate(ours):
        prefix = "linear" if family == "linear" else f"linear_{i + 1}"
        state[f"{prefix}.weight"] = layers[i]["weight"]
        state[f"{prefix}.bias"] = layers[i].get("bias", torch.zeros(layer.out_features))
    _load_state(projector, {**projector.state_dict(), **state}, name)  # identity input standardisation
    return projector.eval()
