"""Training benchmark (CPU): how close a ResNet-18 step gets to the machine's matmul peak, and
how much serlib's epoch loop adds on top of the pure model steps.

Prints JSON. In one run:

- ``matmul_gflops``: the machine's practical float32 peak: the same 2048 x 2048 x 2048 product
  run by MKL (``torch.matmul``) and by oneDNN (as a 1 x 1 convolution, the library that runs
  the ResNet's convolutions), the faster of the two (both are reported: on AMD CPUs MKL runs
  at about half of oneDNN's speed, and a peak taken from MKL alone made the ratio exceed 1);
- ``train_step_gflops``: ResNet-18 width 64 on (32, 1, 128, 259), forward + backward + serlib's
  optimizer step (fused Adam), FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
  (forward + backward);
- ``step_fraction_of_peak`` = train_step_gflops / matmul_gflops (target >= 0.6);
- ``epoch_overhead`` = wall time of one epoch through ``serlib.training.train_one_epoch`` / the
  sum of the same steps timed alone on ready-made batches (target <= 1.10);
- ``samples_per_s``: training samples per second for widths 16 and 64, both features, in
  serlib's channels_last layout.

Usage: python benchmarks/training.py [--steps 8] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from serlib.losses import focal_loss
from serlib.models import ResNet18
from serlib.training import TrainConfig, _autocast, _Batches, _optimizer, train_one_epoch

SHAPES = {"spectrogram": (128, 259), "mfcc": (40, 259)}


def matmul_gflops(n: int = 2048, repeats: int = 20) -> dict[str, float]:
    """GFLOP/s of an n x n x n float32 product by MKL and by oneDNN (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    # the same product as a 1 x 1 convolution: (n rows = 2 x 32 x 32 pixels) x n x n
    x = torch.randn(2, n, 32, 32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    assert 2 * 32 * 32 == n
    out = {}
    for name, fn in (("mkl", lambda: a @ b), ("onednn", lambda: F.conv2d(x, w))):
        fn()
        out[name] = 2 * n**3 / min(_timed(fn) for _ in range(repeats)) / 1e9
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_step(width: int, shape: tuple[int, int], batch: int, *, channels_last: bool = False):
    model = ResNet18(width=width)
    optimizer = _optimizer(model, TrainConfig())   # serlib's: fused Adam
    x = torch.randn(batch, 1, *shape)
    y = torch.randint(0, 4, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        loss = focal_loss(model(x), y, gamma=2.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step, x, y


def step_flops(width: int, shape: tuple[int, int], batch: int) -> float:
    model, _, x, y = make_step(width, shape, batch)
    with FlopCounterMode(display=False) as counter:
        focal_loss(model(x), y, gamma=2.0).backward()
    return float(counter.get_total_flops())


def time_steps(step, steps: int) -> float:
    step()  # warm-up: allocations, oneDNN primitive creation
    return min(_timed(step) for _ in range(steps))


def epoch_overhead(*, width: int = 16, shape=(128, 259), batch: int = 32, n_batches: int = 16,
                   repeats: int = 3, device: torch.device | None = None, timer=None) -> dict:
    """One epoch through serlib's loop vs the same steps on ready-made batches (best of
    ``repeats``, interleaved so that a busy moment of the machine hits both).

    ``device`` (default CPU) and ``timer`` (default wall clock; benchmarks/gpu.py passes one
    that synchronises CUDA) let the GPU benchmark measure the same thing there.
    """
    device = device or torch.device("cpu")
    timer = timer or _timed
    rng = np.random.default_rng(0)
    n = batch * n_batches
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, 4, n)
    data = _Batches(x, y, device=device)
    criterion = lambda logits, target: focal_loss(logits.float(), target, gamma=2.0)  # noqa: E731

    def fresh():
        torch.manual_seed(0)
        model = ResNet18(width=width).to(device, memory_format=torch.channels_last)  # as serlib
        return model, _optimizer(model, TrainConfig())

    def epoch():
        model, optimizer = fresh()
        return timer(lambda: train_one_epoch(
            model, data, optimizer=optimizer, criterion=criterion, batch_size=batch,
            generator=torch.Generator().manual_seed(1), device=device))

    def pure_steps():
        model, optimizer = fresh()
        model.train()
        ready = list(data.batches(batch, generator=torch.Generator().manual_seed(1)))

        def run():
            for xb, yb in ready:
                with _autocast(device):           # as serlib's loop (a no-op on the CPU)
                    logits = model(xb)
                loss = criterion(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return timer(run)

    epoch()
    pure_steps()  # warm-up both
    epochs, pures = [], []
    for _ in range(repeats):
        epochs.append(epoch())
        pures.append(pure_steps())
    epoch_s, pure = min(epochs), min(pures)
    return {"epoch_s": round(epoch_s, 3), "pure_steps_s": round(pure, 3),
            "epoch_overhead": round(epoch_s / pure, 3), "width": width, "batches": n_batches}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 8: with 3, one busy moment of the shared machine could set a layout's best time
    parser.add_argument("--steps", type=int, default=8, help="timed steps (best of)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = 32
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
    }
    flops = step_flops(64, SHAPES["spectrogram"], batch)
    steps = {layout: make_step(64, SHAPES["spectrogram"], batch,
                               channels_last=layout == "channels_last")[1]
             for layout in ("contiguous", "channels_last")}
    for step in steps.values():
        step()  # warm-up
    # interleave peak and step timings so that a busy moment of the machine hits both
    peaks, layouts = {"mkl": [], "onednn": []}, {layout: [] for layout in steps}
    for _ in range(args.steps):
        for name, gflops in matmul_gflops(repeats=5).items():
            peaks[name].append(gflops)
        for layout, step in steps.items():
            layouts[layout].append(_timed(step))
    by_library = {name: max(values) for name, values in peaks.items()}
    peak = max(by_library.values())
    layouts = {layout: min(times) for layout, times in layouts.items()}
    layout, seconds = min(layouts.items(), key=lambda item: item[1])
    report.update({
        "matmul_gflops": round(peak, 1),
        "matmul_gflops_by_library": {k: round(v, 1) for k, v in by_library.items()},
        "train_step_gflop": round(flops / 1e9, 1),
        "train_step_s": {k: round(v, 3) for k, v in layouts.items()},
        "train_step_gflops": round(flops / seconds / 1e9, 1),
        "best_layout": layout,
        "step_fraction_of_peak": round(flops / seconds / 1e9 / peak, 3),
    })
    report.update(epoch_overhead())
    samples = {}
    for feature, shape in SHAPES.items():
        for width in (16, 64):
            _, step, _, _ = make_step(width, shape, batch, channels_last=True)
            samples[f"{feature}_width{width}"] = round(batch / time_steps(step, args.steps), 1)
    report["samples_per_s"] = samples
    report["targets_met"] = {
        "step_fraction_of_peak>=0.6": report["step_fraction_of_peak"] >= 0.6,
        "epoch_overhead<=1.10": report["epoch_overhead"] <= 1.10,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
