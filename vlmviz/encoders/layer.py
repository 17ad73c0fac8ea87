"""Tokens from an intermediate layer of a transformer encoder: `vit-s14@4` is the hidden state after block 4, and
`vit-s14@4+12` puts blocks 4 and 12 side by side (768-d tokens).

LLaVA reads its CLIP tower at `mm_vision_select_layer = -2`, not at the output, and the same choice matters here:
the last layers of a self-supervised ViT describe what an object is and blur which color it has, so a connector
trained on seen (color, shape) pairs names the color it saw with that shape. Earlier layers keep color as a local,
linearly readable property (BENCHMARKS.md, two-object scenes: a linear connector's held-out color accuracy is
0.58 at the output and 0.94 after block 4).

Layer k follows Hugging Face's `hidden_states` tuple: 0 is the patch embeddings, k the output of block k, and a
negative k counts from the end as in LLaVA (-1 the last block's output, before any final norm).
"""
from __future__ import annotations

import threading

import torch
from torch import nn

from .base import VisionEncoder

_COPIED = ("image_size", "grid", "has_cls", "mean", "std", "resize")


def split_layer(name: str) -> tuple[str, tuple[int, ...] | None]:
    """'vit-s14@4' -> ('vit-s14', (4,)); 'vit-s14@4+12' -> ('vit-s14', (4, 12)), both layers' tokens side by side.
    A name without integers after its last '@' has no layer."""
    base, at, spec = name.rpartition("@")
    parts = spec.split("+")
    if at and base and all(p.lstrip("-").isdigit() for p in parts):
        return base, tuple(int(p) for p in parts)
    return name, None


class LayerEncoder(VisionEncoder):
    """A frozen encoder read at one or more of its hidden layers (concatenated along the width, as multi-layer
    connectors such as Dense Connector do); shares the weights of the base encoder."""

    def __init__(self, base: VisionEncoder, layers: int | tuple[int, ...]):
        super().__init__()
        layers = (layers,) if isinstance(layers, int) else tuple(layers)
        spec = "+".join(map(str, layers))
        model = getattr(base, "model", None)
        num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if num_layers is None:
            raise ValueError(f"layer selection ({base.name}@{spec}) needs a transformer encoder with hidden "
                             f"states; {base.name} has none (use it without '@')")
        for layer in layers:
            if not -num_layers - 1 <= layer <= num_layers:
                raise ValueError(f"{base.name} has {num_layers} blocks: layer must be in {-num_layers - 1}.."
                                 f"{num_layers} (0 = embeddings, {num_layers} = last block, negative counts from the "
                                 f"end), got {layer}")
        self.base = base
        self.indices = tuple(k % (num_layers + 1) for k in layers)  # positions in hidden_states
        for field in _COPIED:
            setattr(self, field, getattr(base, field))
        self.hidden_size = base.hidden_size * len(layers)  # the selected layers side by side
        self.name = f"{base.name}@{spec}"
        self.cache_id = f"{base.cache_id}/layer{'+'.join(map(str, self.indices))}"
        blocks = " and ".join(map(str, self.indices))
        self.description = f"{base.name} read after block {blocks} of {num_layers}. {base.description}"

    def _blocks(self):
        """The model's list of transformer blocks (named encoder.layer, encoder.layers or layers, by family)."""
        lists = [m for m in self.base.model.modules() if isinstance(m, nn.ModuleList)]
        return next((m for m in lists if len(m) == self.base.model.config.num_hidden_layers), None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        blocks = self._blocks()
        if 0 in self.indices or blocks is None:
            states = self.base.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
            return torch.cat([states[k] for k in self.indices], dim=-1)  # (B, N, D * layers)
        # keep each selected block's output and stop after the deepest one instead of running the rest
        caught: dict[int, torch.Tensor] = {}
        last = max(self.indices)
        me = threading.get_ident()

        def keep(k):
            def hook(module, args, output):
                # the blocks are shared with the base encoder and with other layer readers: a forward another
                # thread runs meanwhile (the app serves requests in threads) passes through untouched
                if threading.get_ident() != me:
                    return None
                caught[k] = output[0] if isinstance(output, tuple) else output
                if k == last:
                    raise _Stop
            return hook

        handles = [blocks[k - 1].register_forward_hook(keep(k)) for k in set(self.indices)]
        try:
            self.base.model(pixel_values=pixel_values)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return torch.cat([caught[k] for k in self.indices], dim=-1)  # (B, N, D * layers)


class _Stop(Exception):
    """Raised by the forward hook once the deepest selected block has run."""
