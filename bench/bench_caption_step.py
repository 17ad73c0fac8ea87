"""One LLaVA stage-1 training step through the frozen SmolLM2-135M (connector trainable, LM frozen) versus the
plain matmul FLOP/s of the same machine, measured side by side in one run.

    .venv/bin/python bench/bench_caption_step.py [--family resampler] [--mode prefix|xattn] [--batch 8]
                                                 [--threads 1] [--repeats 5] [--device cuda] [--random-lm DIR]

--random-lm DIR builds the LM from the config and tokenizer in DIR with random weights (a step's cost does not
depend on the weights' values): how the step is timed on a machine that does not carry SmolLM2's weights, such as
a lent GPU. --device cuda runs the step there (bf16 autocast with --bf16), synchronising before each clock read.

What a step runs (vlmviz.caption.model.VisualLM.caption_loss): the chat text before the image (P1 = 24 tokens of
SmolLM2's system prompt + user header) once at batch 1 without gradient, its KV cache repeated for B images; then
S = M visual tokens (prefix mode only) + P2 = 10 prompt tokens + L caption tokens (+ end, padded) per image through
all 30 layers; LM-head logits only at the L + 1 scored positions.

FLOP counting, stated precisely. Matmul FLOPs are counted by torch.utils.flop_counter.FlopCounterMode over one
whole step (forward + backward; every mm / addmm / bmm / attention kernel, 2 FLOPs per multiply-add), so nothing is
estimated. For reference, the analytic model it should match:
  frozen LM forward   2 * P_L * B*S  +  2 * P_H * B*(L+1)  +  attention 4 * d * S * (P1 + S) * B * layers
  frozen LM backward  the same again: the LM's weights get no gradient, only the activations do (input gradients of
                      each matmul, one matmul each), so the LM costs 4 * params * tokens, not the usual 6
  connector (+ xattn blocks), trainable: 6 * their matmul params * the tokens they process
with P_L = 106.2 M non-embedding LM weights, P_H = 576 x 49152 = 28.3 M (tied head), d = 576.
The reference is torch.mm of (B*S, 576) x (576, 1536), the LM MLP's shape at the step's token count, and a large
square 2048^3 matmul for the machine's best case.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlmviz.caption.evaluate import CONNECTORS
from vlmviz.caption.captioner import build_vlm
from vlmviz.caption.model import CaptionHead
from vlmviz.config import CaptionConfig
from vlmviz.data import scene_split
from vlmviz.projectors import build_projector


def timed(fn, repeats, sync=lambda: None):
    fn()  # warm-up: allocations, kernel selection
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_vlm(folder: str, mode: str):
    """SmolLM2's architecture and tokenizer from DIR (config.json + tokenizer files), weights drawn at random."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vlmviz.caption.model import VisualLM

    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config)
    return VisualLM(lm, AutoTokenizer.from_pretrained(folder), mode)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="resampler", choices=list(CONNECTORS))
    ap.add_argument("--mode", default="prefix", choices=["prefix", "xattn"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--random-lm", metavar="DIR", help="SmolLM2's config + tokenizer, random weights")
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    family, tokens, options = CONNECTORS[args.family]
    vlm = random_vlm(args.random_lm, args.mode) if args.random_lm else build_vlm("smollm2-135m", CaptionConfig(args.mode))
    n_in, d_in = (256, 384) if tokens == "patch" else (1, 768)  # ViT-S/14 patch tokens or concat(CLS, mean)
    d_in *= options.get("groups", 1)  # multidepth: the encoder's depths side by side (vit-s14@4+12: 2 x 384)
    torch.manual_seed(0)
    projector = build_projector(family, d_in, vlm.dim, **options).to(device)
    head = CaptionHead(vlm, [s.caption for s in scene_split(args.batch, 0)[0]]).to(device)
    x = torch.randn(args.batch, n_in, d_in, device=device)  # (B, N, D_vis), standardized features
    index = torch.arange(args.batch, device=device)
    params = list(projector.parameters()) + [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = head(projector(x), index)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()

    # FLOPs do not depend on the precision: count them in float32 (the counter cannot read bf16 grouped-query SDPA)
    with FlopCounterMode(display=False) as counter:
        loss = head(projector(x), index)
        opt.zero_grad(set_to_none=False)
        loss.backward()
    opt.zero_grad(set_to_none=False)
    flops = counter.get_total_flops()
    t_step = timed(step, args.repeats, sync)

    m = projector.num_output_tokens(n_in) if args.mode == "prefix" else 0
    cap = max(len(vlm.tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in head.captions)
    s = m + len(vlm.ids_after) + cap  # positions per image after the cached prefix
    t = args.batch * s
    lm = vlm.lm
    p_head = lm.get_output_embeddings().weight.numel()
    p_layers = sum(p.numel() for n, p in lm.named_parameters() if ".layers." in n and p.ndim == 2)
    n_layers, d, p1 = lm.config.num_hidden_layers, vlm.dim, len(vlm.ids_before)
    lm_fwd = 2 * p_layers * t + 2 * p_head * args.batch * cap + 4 * d * s * (p1 + s) * args.batch * n_layers
    trainable = sum(p.numel() for p in params if p.ndim >= 2)
    print(f"SmolLM2-135M frozen ({p_layers / 1e6:.1f} M layer weights + {p_head / 1e6:.1f} M head), {args.family} "
          f"{options} -> {m if m else 'xattn: ' + str(projector.num_output_tokens(n_in))} visual tokens, mode "
          f"{args.mode}, batch {args.batch}, S={s} positions per image after the {p1}-token cached prefix, "
          f"{trainable / 1e6:.2f} M trainable matmul weights; " + (f"CPU x{torch.get_num_threads()} threads"
          if device.type == "cpu" else f"{torch.cuda.get_device_name(device)}{' bf16 autocast' if args.bf16 else ''}")
          + (" (random LM weights)" if args.random_lm else ""))
    print(f"analytic: LM forward {lm_fwd / 1e9:.1f} GFLOP, LM forward+backward {2 * lm_fwd / 1e9:.1f} GFLOP "
          f"(4 * params * tokens), counted for the whole step {flops / 1e9:.1f} GFLOP")

    dtype = torch.bfloat16 if args.bf16 else torch.float32  # the reference at the step's own precision
    a = torch.randn(t, d, device=device, dtype=dtype)
    b = torch.randn(d, lm.config.intermediate_size, device=device, dtype=dtype)
    t_mm = timed(lambda: torch.mm(a, b), max(20, args.repeats), sync)
    mm = 2 * t * d * lm.config.intermediate_size / t_mm
    sq = torch.randn(2048, 2048, device=device, dtype=dtype)
    t_sq = timed(lambda: torch.mm(sq, sq), args.repeats, sync)
    sq_flops = 2 * 2048**3 / t_sq
    achieved = flops / t_step
    print(f"matmul ({t}x{d} @ {d}x{lm.config.intermediate_size}): {mm / 1e9:.1f} GFLOP/s; 2048^3: "
          f"{sq_flops / 1e9:.1f} GFLOP/s")
    print(f"caption train step: {t_step * 1e3:.0f} ms = {1 / t_step:.2f} steps/s, {achieved / 1e9:.1f} GFLOP/s")
    print(f"ratio step / matmul FLOP/s: {achieved / mm:.2f} (same-shape), {achieved / sq_flops:.2f} (2048^3)")
    vlm.close()


if __name__ == "__main__":
    main()
