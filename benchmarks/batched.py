"""Batched folds against per-fold training (CPU): the same folds, the same work, one run.

Prints JSON. For each input kind (spectrogram 128 x 259, MFCC 40 x 259) of the smoke profile's
shape (360 clips of the generated "small" corpus, 5 stratified folds, ResNet-18 width 8, batch
32, no early stopping so that both ways do exactly the same steps):

- ``per_fold_s``: :func:`serlib.training.cross_validate_arrays` (one fold after another, the
  path ``serlib cv`` and the CPU grid take);
- ``batched_s``: :func:`serlib.batched.train_members` on the same 5 folds (one grouped
  network), and ``batched_2runs_s`` on 10 members (the focal and softmax runs of that input
  together, as the grid groups them with one worker), against ``2 x per_fold_s``;
- ``speedup`` = per_fold_s / batched_s (target >= 1 on 2 cores), ``speedup_2runs``; the
  same from the process's CPU time (``*_cpu_s``, ``speedup_cpu``), steadier on a shared machine;
- ``max_prob_diff``: the largest difference between the two ways' test probabilities, and
  ``same_predictions``. Not zero: grouped convolutions round differently, and early Adam steps
  amplify rounding (on these random features the per-fold path with 1 and with 2 threads
  differs by as much, 2-4e-2 after 1-2 epochs: benchmarks/README.md).

Features are seeded random matrices of the right shape (speed does not depend on content).
Both ways run with the same torch threads (``--threads``, default 1: on this shared 2-core
machine two intra-op threads on a width-8 network under load spin in OpenMP and run many times
slower, see the grid section of benchmarks/README.md), each measured once after a warm-up.

    nice -n 10 python benchmarks/batched.py [--epochs 2] [--width 8] [--clips 360] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd
import torch

from serlib import batched, training
from serlib.config import TrainConfig
from serlib.splits import make_folds

SHAPES = {"spectrogram": (128, 259), "mfcc": (40, 259)}


def data(n_clips: int, shape: tuple[int, int], *, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=n_clips, p=[0.488, 0.123, 0.269, 0.12])   # the paper's shares
    x = rng.normal(size=(n_clips, *shape)).astype(np.float32) + 0.2 * labels[:, None, None]
    folds = make_folds(pd.DataFrame({"label": labels}), protocol="stratified", n_folds=5,
                       seed=0)
    return x, labels, folds


def timed(fn):
    """(wall s, process CPU s, result): on a shared machine the CPU time of a 1-thread process
    is the steadier figure (it leaves out the time other jobs held the cores)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def per_fold(x, labels, folds, configs):
    return timed(lambda: [r for c in configs for r in training.cross_validate_arrays(
        x, labels, config=c, folds=folds, device="cpu", progress=False)])


def together(x, labels, folds, configs) -> tuple[float, list]:
    members = [batched.Member(key=(i, k), config=c, features=x, labels=labels, train_idx=tr,
                              test_idx=te, fold=k)
               for i, c in enumerate(configs) for k, (tr, te) in enumerate(folds, start=1)]
    wall, cpu, out = timed(lambda: batched.train_members(members, device="cpu",
                                                          progress=False))
    return wall, cpu, [out[m.key] for m in members]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--clips", type=int, default=360)
    parser.add_argument("--features", nargs="+", default=["mfcc", "spectrogram"],
                        choices=list(SHAPES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    figures = {"cores": cores, "threads": torch.get_num_threads(), "width": args.width,
               "epochs": args.epochs, "clips": args.clips, "folds": 5, "batch_size": 32,
               "torch": torch.__version__}
    for feature in args.features:
        x, labels, folds = data(args.clips, SHAPES[feature])
        base = TrainConfig(feature=feature, folds=5, epochs=args.epochs, width=args.width,
                           batch_size=32, lr=0.002, patience=0, device="cpu")
        softmax = TrainConfig(**{**base.to_dict(), "loss": "softmax"})
        warm = TrainConfig(**{**base.to_dict(), "epochs": 1})
        per_fold(x, labels, folds[:1], [warm])                   # warm-up: oneDNN kernels
        together(x, labels, folds[:2], [warm])
        t_alone, c_alone, alone = per_fold(x, labels, folds, [base])
        t_batched, c_batched, grouped = together(x, labels, folds, [base])
        t_batched2, c_batched2, _ = together(x, labels, folds, [base, softmax])
        diff = max(float(np.abs(a["probabilities"] - b["probabilities"]).max())
                   for a, b in zip(alone, grouped, strict=True))
        same = all(np.array_equal(a["probabilities"].argmax(1), b["probabilities"].argmax(1))
                   for a, b in zip(alone, grouped, strict=True))
        figures[feature] = {
            "per_fold_s": round(t_alone, 2), "batched_s": round(t_batched, 2),
            "speedup": round(t_alone / t_batched, 3),
            "batched_2runs_s": round(t_batched2, 2),
            "speedup_2runs": round(2 * t_alone / t_batched2, 3),
            "per_fold_cpu_s": round(c_alone, 2), "batched_cpu_s": round(c_batched, 2),
            "batched_2runs_cpu_s": round(c_batched2, 2),
            "speedup_cpu": round(c_alone / c_batched, 3),
            "speedup_2runs_cpu": round(2 * c_alone / c_batched2, 3),
            "max_prob_diff": float(f"{diff:.2e}"), "same_predictions": same,
        }
        print(json.dumps({feature: figures[feature]}), flush=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
