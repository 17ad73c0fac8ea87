"""Tokens from an intermediate layer of a transformer encoder: `vit-s14@4` is the hidden state after block 4.

LLaVA reads its CLIP tower at `mm_vision_select_layer = -2`, not at the output, and the same choice matters here:
the last layers of a self-supervised ViT describe what an object is and blur which color it has, so a connector
trained on seen (color, shape) pairs names the color it saw with that shape. Earlier layers keep color as a local,
linearly readable property (BENCHMARKS.md, two-object scenes: a linear connector's held-out color accuracy is
0.58 at the output and 0.94 after block 4).

Layer k follows Hugging Face's `hidden_states` tuple: 0 is the patch embeddings, k the output of block k, and a
negative k counts from the end as in LLaVA (-1 the last block's output, before any final norm).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import VisionEncoder

_COPIED = ("hidden_size", "image_size", "grid", "has_cls", "mean", "std", "resize")


def split_layer(name: str) -> tuple[str, int | None]:
    """'vit-s14@4' -> ('vit-s14', 4); a name without an integer after its last '@' has no layer."""
    base, at, layer = name.rpartition("@")
    if at and base and layer.lstrip("-").isdigit():
        return base, int(layer)
    return name, None


class LayerEncoder(VisionEncoder):
    """A frozen encoder read at one of its hidden layers; shares the weights of the base encoder."""

    def __init__(self, base: VisionEncoder, layer: int):
        super().__init__()
        model = getattr(base, "model", None)
        num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if num_layers is None:
            raise ValueError(f"layer selection ({base.name}@{layer}) needs a transformer encoder with hidden "
                             f"states; {base.name} has none (use it without '@')")
        if not -num_layers - 1 <= layer <= num_layers:
            raise ValueError(f"{base.name} has {num_layers} blocks: layer must be in {-num_layers - 1}..{num_layers} "
                             f"(0 = embeddings, {num_layers} = last block, negative counts from the end), "
                             f"got {layer}")
        self.base, self.layer = base, layer
        self.index = layer % (num_layers + 1)  # position in hidden_states
        for field in _COPIED:
            setattr(self, field, getattr(base, field))
        self.name = f"{base.name}@{layer}"
        self.cache_id = f"{base.cache_id}/layer{self.index}"
        self.description = f"{base.name} read after block {self.index} of {num_layers}. {base.description}"

    def _blocks(self):
        """The model's list of transformer blocks (named encoder.layer, encoder.layers or layers, by family)."""
        lists = [m for m in self.base.model.modules() if isinstance(m, nn.ModuleList)]
        return next((m for m in lists if len(m) == self.base.model.config.num_hidden_layers), None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        blocks = self._blocks()
        if self.index == 0 or blocks is None:
            out = self.base.model(pixel_values=pixel_values, output_hidden_states=True)
            return out.hidden_states[self.index]  # (B, N, D)
        # stop after block `index` instead of running the blocks whose output is thrown away
        caught = []

        def hook(module, args, output):
            caught.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = blocks[self.index - 1].register_forward_hook(hook)
        try:
            self.base.model(pixel_values=pixel_values)
        except _Stop:
            pass
        finally:
            handle.remove()
        return caught[0]  # (B, N, D)


class _Stop(Exception):
    """Raised by the forward hook once the selected block has run."""
