"""Batched folds against per-fold training (CPU): the same folds, the same work, one run.

Prints JSON. For each input kind (spectrogram 128 x 259, MFCC 40 x 259) of the smoke profile's
shape (360 clips of the generated "small" corpus, 5 stratified folds, ResNet-18 width 8, batch
32, no early stopping so that both ways do exactly the same steps):

- ``per_fold_s``: :func:`serlib.training.cross_validate_arrays` (one fold after another, the
  path ``serlib cv`` and the CPU grid take);
- ``batched_s``: :func:`serlib.batched.train_members` on the same 5 folds (one grouped
  network), and ``batched_2runs_s`` on 10 members (the focal and softmax runs of that input
  together, as the grid groups them with one worker), against ``2 x per_fold_s``;
- ``speedup`` = per_fold_s / batched_s (target >= 1 on 2 cores), ``speedup_2runs``;
- ``max_prob_diff``: the largest difference between the two ways' test probabilities (float
  tolerance: grouped convolutions round differently), and ``same_predictions``.

Features are seeded random matrices of the right shape (speed does not depend on content).
Both ways use every core (torch threads = cores), each measured once after a warm-up epoch.

    nice -n 10 python benchmarks/batched.py [--epochs 2] [--width 8] [--clips 360]
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


def per_fold(x, labels, folds, configs) -> tuple[float, list]:
    started = time.perf_counter()
    results = [training.cross_validate_arrays(x, labels, config=c, folds=folds, device="cpu",
                                              progress=False) for c in configs]
    return time.perf_counter() - started, [r for rs in results for r in rs]


def together(x, labels, folds, configs) -> tuple[float, list]:
    members = [batched.Member(key=(i, k), config=c, features=x, labels=labels, train_idx=tr,
                              test_idx=te, fold=k)
               for i, c in enumerate(configs) for k, (tr, te) in enumerate(folds, start=1)]
    started = time.perf_counter()
    out = batched.train_members(members, device="cpu", progress=False)
    return time.perf_counter() - started, [out[m.key] for m in members]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--clips", type=int, default=360)
    parser.add_argument("--features", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
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
        t_alone, alone = per_fold(x, labels, folds, [base])
        t_batched, grouped = together(x, labels, folds, [base])
        t_batched2, _ = together(x, labels, folds, [base, softmax])
        diff = max(float(np.abs(a["probabilities"] - b["probabilities"]).max())
                   for a, b in zip(alone, grouped, strict=True))
        same = all(np.array_equal(a["probabilities"].argmax(1), b["probabilities"].argmax(1))
                   for a, b in zip(alone, grouped, strict=True))
        figures[feature] = {
            "per_fold_s": round(t_alone, 2), "batched_s": round(t_batched, 2),
            "speedup": round(t_alone / t_batched, 3),
            "batched_2runs_s": round(t_batched2, 2),
            "speedup_2runs": round(2 * t_alone / t_batched2, 3),
            "max_prob_diff": float(f"{diff:.2e}"), "same_predictions": same,
        }
        print(json.dumps({feature: figures[feature]}), flush=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
