"""Can a connector's tokens BE the words of a two-object scene's statement, on held-out pairs? The echo phase of
`caption-eval --echo-steps` alone (model.EchoWords, no LM forward), scored by the nearest statement word of each
slot: [color, shape, relation, color2, shape2] of the canonical caption, every test object a held-out (color, shape)
pair (vlmviz.data.scenes.scene_split).

    .venv/bin/python bench/probe_echo_slots.py --slots resampler --pool 2 --seed 0
    .venv/bin/python bench/probe_echo_slots.py --slots keys --values mlp --pool 2 --seed 1 --steps 1500

--slots resampler: the resampler projector (5 queries; positions added to keys and values, a LayerNorm and a
linear map after the attention). --slots keys: 5 queries whose keys carry a learned position per patch and whose
values do not (what is read at a patch is the same everywhere; a learned sharpness), values a linear map or an MLP
(one hidden layer of 512, GELU) of each patch to the LM width, then a bias per slot. Both: patch tokens standardised
on the training scenes, --pool p averages p x p blocks of the patch grid first, AdamW lr 2e-3, batch 32.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from vlmviz.caption.captioner import build_vlm
from vlmviz.caption.model import EchoWords, content_words
from vlmviz.data import scene_split
from vlmviz.encoders import load_vision_encoder, select_tokens
from vlmviz.features import FeatureCache
from vlmviz.projectors import build_projector
from vlmviz.projectors.base import pool_patch_grid


class KeySlots(nn.Module):
    """Q slots: softmax over patches by (learned query) . (key + position), then the slot's average of the values."""

    def __init__(self, in_dim: int, out_dim: int, patches: int, slots: int = 5, rank: int = 64, mlp: bool = False):
        super().__init__()
        self.key = nn.Linear(in_dim, rank)
        self.pos = nn.Parameter(torch.zeros(patches, rank))
        self.queries = nn.Parameter(torch.randn(slots, rank) * 0.1)
        self.log_sharpness = nn.Parameter(torch.tensor(2.0))
        self.value = (nn.Sequential(nn.Linear(in_dim, 512), nn.GELU(), nn.Linear(512, out_dim)) if mlp
                      else nn.Linear(in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(slots, out_dim))

    def forward(self, x):  # (B, N, D) -> (B, Q, out)
        scores = torch.einsum("qr,bnr->bqn", self.queries, self.key(x) + self.pos) / self.key.out_features ** 0.5
        weights = (scores * self.log_sharpness.exp()).softmax(-1)
        return torch.einsum("bqn,bnd->bqd", weights, self.value(x)) + self.bias


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="vit-s14@6")
    ap.add_argument("--slots", choices=("resampler", "keys"), default="keys")
    ap.add_argument("--values", choices=("linear", "mlp"), default="linear", help="--slots keys only")
    ap.add_argument("--features", help="a slice of the token width, e.g. 0:384 for block 2 of vit-s14@2+6")
    ap.add_argument("--pool", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = scene_split(args.n_train, 100, seed=args.seed, objects=2)
    enc = load_vision_encoder(args.encoder)
    cache = FeatureCache()
    x_tr, x_te = (pool_patch_grid(select_tokens(cache.tokens(enc, [s.load() for s in part]), enc.has_cls,
                                                "patch").float(), args.pool, "probe") for part in (train, test))
    if args.features:
        lo, hi = map(int, args.features.split(":"))
        x_tr, x_te = x_tr[..., lo:hi].contiguous(), x_te[..., lo:hi].contiguous()
    mean, std = x_tr.reshape(-1, x_tr.shape[-1]).mean(0), x_tr.reshape(-1, x_tr.shape[-1]).std(0)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    vlm = build_vlm("smollm2-135m")
    statements = [s.meta["canonical"] for s in train + test]
    echo = EchoWords(vlm, statements)
    torch.manual_seed(args.seed)
    if args.slots == "resampler":
        model = build_projector("resampler", x_tr.shape[-1], vlm.dim, num_queries=echo.slots)
    else:
        model = KeySlots(x_tr.shape[-1], vlm.dim, x_tr.shape[1], echo.slots, mlp=args.values == "mlp")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    cpu = time.process_time()
    for step in range(args.steps):
        idx = torch.randint(0, len(x_tr), (32,), generator=generator)
        loss = echo(model(x_tr[idx]), idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    cpu = time.process_time() - cpu
    with torch.no_grad():
        read = echo.read(model(x_te))
    truth = [content_words(s) for s in statements[len(train):]]
    slot = [sum(r[k] == t[k] for r, t in zip(read, truth)) / len(truth) for k in range(echo.slots)]
    all5 = sum(r == t for r, t in zip(read, truth)) / len(truth)
    name = args.slots if args.slots == "resampler" else f"keys, {args.values} values"
    encoder = args.encoder + (f" [{args.features}]" if args.features else "")
    print(f"| {encoder} | {name} | {args.pool} | {args.seed} | {args.steps} | {float(loss):.3f} | "
          + " | ".join(f"{v:.2f}" for v in slot) + f" | **{all5:.2f}** | {cpu:.0f} |")


if __name__ == "__main__":
    main()
