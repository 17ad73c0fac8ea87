"""One training step of LLaVA-1.5-7B's connector (mlp2x_gelu, 1024 -> 4096 -> 4096, 576 tokens per image)
versus the plain matmul FLOP/s of the same machine, measured side by side in one run.

    .venv/bin/python bench/bench_step_flops.py [--batch 4] [--device cpu|cuda] [--repeats 5]

A step's useful FLOPs: forward 2*T*(1024*4096 + 4096*4096); backward computes weight gradients for both layers
and the input gradient of the second layer only (the encoder tokens need none), 2*T*(1024*4096 + 2*4096*4096).
T = batch * 576 tokens. The reference is torch.mm of (T, 4096) x (4096, 4096), the step's dominant shape.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlmviz.projectors import build_projector


def timed(fn, repeats, sync):
    fn()  # warm-up: allocations, kernel selection
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the projector (fuses GELU / casts)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    bf16 = dev.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    T, d_in, d = args.batch * 576, 1024, 4096

    a, b = torch.randn(T, d, device=dev, dtype=dtype), torch.randn(d, d, device=dev, dtype=dtype)
    t_mm = timed(lambda: torch.mm(a, b), args.repeats, sync)
    mm_flops = 2 * T * d * d / t_mm

    proj = build_projector("mlp2x_gelu", d_in, d).to(dev)
    opt = torch.optim.AdamW(proj.parameters(), lr=1e-4, fused=dev.type == "cuda")
    model = torch.compile(proj) if args.compile else proj
    x = torch.randn(args.batch, 576, d_in, device=dev)
    target = torch.nn.functional.normalize(torch.randn(args.batch, 576, d, device=dev), dim=-1).to(dtype)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            y = model(x)  # (B, 576, 4096) in bf16 on a GPU
        # cosine loss in the output's dtype: autocast would upcast cosine_similarity to fp32 and add passes
        # over a (B * 576, 4096) tensor that cost as much as a matmul
        y_unit = y * torch.rsqrt((y * y).sum(-1, keepdim=True) + 1e-6)
        loss = 1 - (y_unit * target).sum(-1).float().mean()
        opt.zero_grad(set_to_none=False)  # keep gradient buffers: no re-allocation per step
        loss.backward()
        opt.step()

    if args.compile:
        for _ in range(3):  # compilation happens on the first calls
            step()
    t_step = timed(step, args.repeats, sync)
    step_flops = (2 * T * (d_in * d + d * d) + 2 * T * (d_in * d + 2 * d * d)) / t_step
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; dtype: {'bf16 autocast' if bf16 else 'fp32'}; batch {args.batch} x 576 tokens"
          f"{'; torch.compile' if args.compile else ''}")
    print(f"matmul ({T}x{d} @ {d}x{d}): {t_mm * 1e3:.1f} ms, {mm_flops / 1e9:.1f} GFLOP/s")
    print(f"mlp2x_gelu train step:     {t_step * 1e3:.1f} ms, {step_flops / 1e9:.1f} GFLOP/s")
    print(f"ratio step / matmul FLOP/s: {step_flops / mm_flops:.2f}  (target >= {0.4 if bf16 else 0.5})")


if __name__ == "__main__":
    main()
