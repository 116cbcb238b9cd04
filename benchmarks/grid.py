"""The same grid three ways: sequential in one process, the local engine, and Ray.

Prints JSON: wall times and ``speedup_local`` = sequential / local, ``ray_overhead`` =
ray / local. The grid: two runs (MFCC, focal and softmax) x 5 folds = 10 folds of a narrow
ResNet-18 on the generated corpus; sequential uses every core in one process, the local engine
``--jobs`` workers with cores / jobs threads each. Every way starts from the same warm feature
store, in its own runs folder, and all three must give the same fold metrics (checked).

    python benchmarks/grid.py --size tiny --width 8 --epochs 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    import torch

    from serlib.corpora import load_iemocap, select_utterances, write_selection
    from serlib.corpora.synthetic import generate_corpus
    from serlib.grid import run_grid
    from serlib.training import TrainConfig, load_features, prepare_run, run_cross_validation

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="serlib-grid-bench-"))
    try:
        root = generate_corpus(work / "data", seed=0, size=args.size, progress=False)
        selection = write_selection(select_utterances(load_iemocap(root)), work / "sel.csv")
        base = TrainConfig(feature="mfcc", folds=5, epochs=args.epochs, width=args.width,
                           batch_size=16, patience=0, device="cpu")
        runs = [("mfcc_focal", base),
                ("mfcc_softmax", TrainConfig(**{**base.to_dict(), "loss": "softmax"}))]
        cache = work / "cache"
        load_features(prepare_run(selection, config=base), cache_dir=cache, progress=False)

        torch.set_num_threads(cores)
        started = time.perf_counter()
        sequential = {name: run_cross_validation(selection, config=config,
                                                 out_dir=work / "seq" / name,
                                                 cache_dir=cache, progress=False)
                      for name, config in runs}
        wall_sequential = time.perf_counter() - started

        torch.set_num_threads(max(1, cores // args.jobs))
        started = time.perf_counter()
        local = run_grid(runs, selection=selection, cache_dir=cache, runs_dir=work / "local",
                         engine="local", jobs=args.jobs, progress=False)
        wall_local = time.perf_counter() - started
        figures = {
            "folds": sum(c.folds for _, c in runs), "width": args.width,
            "epochs": args.epochs, "clips": sum(1 for _ in open(selection)) - 1,
            "cores": cores, "jobs": args.jobs, "threads_per_job": max(1, cores // args.jobs),
            "sequential_s": round(wall_sequential, 2), "local_s": round(wall_local, 2),
            "speedup_local": round(wall_sequential / wall_local, 3),
            "local_equals_sequential_folds": all(
                local.summaries[n]["folds"] == sequential[n]["folds"] for n, _ in runs),
        }
        if not args.no_ray:
            started = time.perf_counter()
            ray = run_grid(runs, selection=selection, cache_dir=cache, runs_dir=work / "ray",
                           engine="ray", jobs=args.jobs, progress=False)
            wall_ray = time.perf_counter() - started
            figures.update(ray_s=round(wall_ray, 2),
                           ray_overhead=round(wall_ray / wall_local, 3),
                           ray_equals_local_folds=all(
                               ray.summaries[n]["folds"] == local.summaries[n]["folds"]
                               for n, _ in runs))
        print(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
