"""Where a training step's time goes on one GPU (issue 23): ms per step of the paper's ResNet-18
(width 64, batch 32 per fold, bf16 autocast, Adam, spectrogram 128 x 259 or MFCC 40 x 259) for
one fold alone and for K folds as one grouped network (:func:`serlib.batched.grouped_network`),
eager and captured as one CUDA graph (forward, backward and a capturable Adam step replayed by
``torch.cuda.CUDAGraph``), in channels_last and in the default (NCHW) layout.

Variants (each: ``ms_per_step``, ``fold_samples_per_s`` = K x 32 / step time, TFLOP/s, and its
fraction of the bf16 matmul peak measured in the same run):

- ``alone_eager``: one fold's step as :func:`serlib.training.train_one_epoch` takes it
  (channels_last, fused Adam, bf16 autocast, cuDNN autotuning);
- ``alone_graph``: the same step captured as a CUDA graph;
- ``grouped{K}_eager`` / ``grouped{K}_eager_nchw``: K folds' step through the grouped network;
- ``grouped{K}_graph``: that step captured as a CUDA graph.

Usage (CUDA; ``--dry-run`` checks the eager variants on the CPU at width 4):
    python benchmarks/gpu_step.py --out $OUT/gpu_step.json [--members 5 10] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from gpu_grid import SHAPES, flops_per_clip, matmul_peak_tflops  # benchmarks/ (on sys.path)

from serlib.batched import grouped_network
from serlib.models import ResNet18


def build(members: int, *, width: int, layout, device, capturable: bool):
    torch.manual_seed(0)
    net = ResNet18(width=width)
    if members > 1:
        net = grouped_network(net, members=members)
        for p in net.parameters():                       # grouped_network leaves them empty
            torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.zeros_(p)
    net = net.to(device, memory_format=layout)
    kwargs = {"capturable": True} if capturable else {"fused": device.type == "cuda"}
    return net, torch.optim.Adam(net.parameters(), lr=1e-3, **kwargs)


def step_fn(net, opt, x, y, *, members, amp, device):
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp,
                            cache_enabled=False):
            logits = net(x)
        logits = logits.float().reshape(-1, logits.shape[-1])         # (B * K, C)
        loss = F.cross_entropy(logits, y.repeat_interleave(members) if members > 1 else y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        return loss
    return step


def timed(fn, steps, device) -> float:
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def variant(name, *, members, graph, layout, feature, width, batch, amp, steps, device):
    net, opt = build(members, width=width, layout=layout, device=device, capturable=graph)
    f, t = SHAPES[feature]
    x = torch.randn(batch, members, f, t, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 4, (batch,), device=device)
    step = step_fn(net, opt, x, y, members=members, amp=amp, device=device)
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        run = g.replay
    else:
        run = step
    for _ in range(5):
        run()
    ms = timed(run, steps, device)
    return {"variant": name, "feature": feature, "members": members, "ms_per_step": round(ms, 3),
            "fold_samples_per_s": round(members * batch / ms * 1e3, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_step.json")
    parser.add_argument("--members", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--features", nargs="+", default=["spectrogram", "mfcc"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        args.width, args.steps, args.members = 4, 2, [2]
        args.features = args.features[:1]
    torch.backends.cudnn.benchmark = True
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "width": args.width, "batch": 32, "rows": []}
    out["peak_tflops"] = round(matmul_peak_tflops(), 1) if device.type == "cuda" else None
    cl, nchw = torch.channels_last, torch.contiguous_format
    for feature in args.features:
        flops = flops_per_clip(feature, args.width)
        plan = [("alone_eager", 1, False, cl), ("alone_graph", 1, True, cl)]
        for k in args.members:
            plan += [(f"grouped{k}_eager", k, False, cl),
                     (f"grouped{k}_eager_nchw", k, False, nchw),
                     (f"grouped{k}_graph", k, True, cl)]
        for name, k, graph, layout in plan:
            if graph and device.type != "cuda":
                continue
            try:
                row = variant(name, members=k, graph=graph, layout=layout, feature=feature,
                              width=args.width, batch=32, amp=True, steps=args.steps,
                              device=device)
                tflops = row["fold_samples_per_s"] * flops / 1e12
                row["train_tflops"] = round(tflops, 2)
                if out["peak_tflops"]:
                    row["fraction_of_peak"] = round(tflops / out["peak_tflops"], 4)
            except Exception as error:  # noqa: BLE001 - recorded, the others go on
                row = {"variant": name, "feature": feature, "members": k,
                       "error": f"{type(error).__name__}: {str(error)[:300]}"}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
