"""The paper's Tables 1-4 grid on one GPU: per-fold training against batched folds
(serlib.batched), in one run, against the GPU's measured bf16 matmul peak (issue 23).

The grid: 4 configurations (spectrogram / MFCC x softmax / focal, gamma 2) x 5 stratified
folds, ResNet-18 width 64, up to 50 epochs, patience 15, batch 32, bf16 autocast, on an
IEMOCAP-sized input (2,280 clips: neutral 1,099, happiness 284, sadness 608, anger 289;
spectrogram 128 x 259, MFCC 40 x 259). The features are seeded random matrices whose level
depends on the class (learnable, so early stopping behaves like training), made in memory: no
audio, no librosa, nothing to download. Stages, each timed with CUDA synchronised:

1. ``peak``: a bf16 8192 x 8192 x 8192 matmul (best of 10): the practical matrix peak.
2. ``per_fold``: :func:`serlib.training.cross_validate_arrays`, one fold after another (the
   work of one grid worker), on ``--per-fold-runs`` of the 4 configurations (default 2: one
   spectrogram and one MFCC run) and ``--per-fold-folds`` of their folds (default 5);
   ``grid_estimate_s`` scales it to the 4 runs' 20 folds.
3. ``batched_by_shape``: the 2 groups of 10 (the two runs of each input kind together, as
   ``serlib grid`` groups them with one worker per GPU); then
   ``batched_by_shape_regroup_every_end``: the same with the grouped network rebuilt whenever
   a member ends (``regroup_at=1.0``) instead of CUDA's default (masked until half are).
4. ``batched_compiled`` (unless ``--no-compile``): stage 3 with ``compile=True``
   (``torch.compile(mode="reduce-overhead")``: CUDA graphs; finished members masked, not
   removed). Compilation time is included; an error is recorded, not raised.
5. ``batched_by_run``: the 4 runs, each as one group of its 5 folds (4 groups one after
   another in this process; the grid with 4 workers per GPU runs them side by side).

Per stage: wall time, folds, epochs trained, training samples/s (fit clips x epochs / wall),
training TFLOP/s (forward + backward FLOPs per clip from ``torch.utils.flop_counter`` x
samples / wall; evaluation passes not counted) and its fraction of the peak, and the mean test
UA (a sanity check that both ways learn the same; they agree to float tolerance, bf16 and
cuDNN autotuning included). ``speedup`` = the stage's training FLOP/s / the per-fold stage's
(per FLOP, since the per-fold stage trains only some of the runs). Stages stop being
started once ``--budget`` seconds have passed (default 480), so that the run stays under 10
minutes; the JSON and markdown files are rewritten after every stage.

On the H200/H100 machine (torch 2.11; nothing beyond the image is needed for this script):

    export PYTHONPATH=$PWD
    python benchmarks/gpu_grid.py --out $OUT/gpu_grid        # -> gpu_grid.json, gpu_grid.md

(The whole book on the GPU, ``serlib book --profile paper``, needs librosa, soundfile, soxr,
jsonschema and papermill: see the header of ``/work/shared/tools/h200-wheels.sh`` for the
wheels and the ``pip install --target`` line.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from serlib import batched, training
from serlib.config import TrainConfig
from serlib.losses import focal_loss
from serlib.models import ResNet18
from serlib.splits import make_folds

SHAPES = {"spectrogram": (128, 259), "mfcc": (40, 259)}
COUNTS = {0: 1099, 1: 284, 2: 608, 3: 289}          # the IEMOCAP selection (GUIDE.md)
RUNS = [("spectrogram", "softmax"), ("spectrogram", "focal"), ("mfcc", "softmax"),
        ("mfcc", "focal")]


DEVICE = "cuda"     # "cpu" with --dry-run


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def synced(fn):
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - start, out


def matmul_peak_tflops(n: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    a @ b
    return 2 * n**3 / min(synced(lambda: a @ b)[0] for _ in range(repeats)) / 1e12


def flops_per_clip(feature: str, width: int) -> float:
    """Forward + backward FLOPs of one clip (batch of 4, divided by 4)."""
    model = ResNet18(width=width)
    x, y = torch.randn(4, 1, *SHAPES[feature]), torch.randint(0, 4, (4,))
    with FlopCounterMode(display=False) as counter:
        focal_loss(model(x), y, gamma=2.0).backward()
    return counter.get_total_flops() / 4


def make_data(feature: str, seed: int = 0, *, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.concatenate([np.full(round(n * scale), c)
                                             for c, n in COUNTS.items()]))
    x = rng.normal(size=(len(labels), *SHAPES[feature])).astype(np.float32)
    x += 0.15 * labels[:, None, None]                 # learnable, not trivially
    folds = make_folds(pd.DataFrame({"label": labels}), protocol="stratified", n_folds=5,
                       seed=0)
    return x, labels, folds


def config(feature: str, loss: str, args) -> TrainConfig:
    return TrainConfig(feature=feature, loss=loss, gamma=2.0, folds=5, epochs=args.epochs,
                       width=args.width, batch_size=32, patience=args.patience, amp=True,
                       device=DEVICE)


def describe(results: list[dict], wall: float, flops: dict, peak: float) -> dict:
    samples = sum(r["n_fit"] * len(r["history"]) for r in results)
    work = sum(r["n_fit"] * len(r["history"]) * flops[r["feature"]] for r in results)
    return {"wall_s": round(wall, 2), "folds": len(results),
            "epochs": sum(len(r["history"]) for r in results),
            "samples_per_s": round(samples / wall, 1),
            "train_tflops": round(work / wall / 1e12, 2), "train_flop_per_s": work / wall,
            "fraction_of_peak": round(work / wall / 1e12 / peak, 4),
            "mean_test_ua": round(float(np.mean([r["metrics"]["ua"] for r in results])), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_grid", help="path stem of the .json and .md")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--per-fold-runs", type=int, default=2, choices=(0, 1, 2, 3, 4))
    parser.add_argument("--per-fold-folds", type=int, default=5, choices=(1, 2, 3, 4, 5),
                        help="folds of each per-fold run to train (the rate per FLOP is "
                        "compared; fewer folds save device time)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds after which no further stage starts")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the script on the CPU: width 4, 1 epoch, 5 %% of the "
                        "clips, one per-fold run, no compile (figures mean nothing)")
    args = parser.parse_args()
    global DEVICE
    scale = 1.0
    if args.dry_run:
        DEVICE, scale = "cpu", 0.05
        args.per_fold_runs = min(args.per_fold_runs, 1)
        args.width, args.epochs, args.no_compile = 4, 1, True
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_grid.py needs a CUDA device (or --dry-run)")
    started = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (dry run)"
    figures: dict = {"device": name, "torch": torch.__version__,
                     "cuda": torch.version.cuda, "width": args.width, "epochs": args.epochs,
                     "patience": args.patience, "batch_size": 32,
                     "clips": round(sum(COUNTS.values()) * scale), "stages": {}}

    def save() -> None:
        out.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
        rows = ["| stage | wall s | folds | epochs | samples/s | train TFLOP/s | of peak | "
                "speedup per FLOP | mean test UA |", "|---|---|---|---|---|---|---|---|---|"]
        for name, s in figures["stages"].items():
            if "error" in s or "skipped" in s:
                rows.append(f"| {name} | {s.get('error') or s.get('skipped')} |||||||| ")
                continue
            rows.append(f"| {name} | {s['wall_s']} | {s['folds']} | {s['epochs']} | "
                        f"{s['samples_per_s']} | {s['train_tflops']} | "
                        f"{100 * s['fraction_of_peak']:.1f} % | {s.get('speedup', '-')} | "
                        f"{s['mean_test_ua']} |")
        head = (f"{figures['device']}, torch {figures['torch']}, bf16 matmul peak "
                f"{figures.get('peak_tflops')} TFLOP/s; grid estimate per-fold "
                f"{figures.get('grid_estimate_s')} s\n\n")
        out.with_suffix(".md").write_text(head + "\n".join(rows) + "\n")

    peak = matmul_peak_tflops(n=8192 if DEVICE == "cuda" else 512)
    figures["peak_tflops"] = round(peak, 1)
    flops = {f: flops_per_clip(f, args.width) for f in SHAPES}
    figures["gflop_per_clip_fwd_bwd"] = {f: round(v / 1e9, 2) for f, v in flops.items()}
    data = {f: make_data(f, scale=scale) for f in SHAPES}
    print(json.dumps({"peak_tflops": figures["peak_tflops"]}), flush=True)

    def tag(results, feature):
        for r in results:
            r["feature"] = feature
        return results

    def over_budget(name: str) -> bool:
        if time.perf_counter() - started > args.budget:
            figures["stages"][name] = {"skipped": f"budget {args.budget:g} s spent"}
            save()
            return True
        return False

    # warm-up: cuDNN autotuning of both paths at both shapes, one short fold each
    for feature in SHAPES:
        x, labels, folds = data[feature]
        short = TrainConfig(**{**config(feature, "focal", args).to_dict(), "epochs": 1})
        training.cross_validate_arrays(x, labels, config=short, folds=folds[:1], device=DEVICE,
                                       progress=False)
        members = [batched.Member(key=k, config=short, features=x, labels=labels,
                                  train_idx=tr, test_idx=te, fold=k)
                   for k, (tr, te) in enumerate(folds[:2], start=1)]
        batched.train_members(members, device=DEVICE, progress=False)

    # 2. per fold
    chosen = [RUNS[i] for i in (1, 3, 0, 2)[:args.per_fold_runs]]
    if chosen and not over_budget("per_fold"):
        def per_fold():
            results = []
            for feature, loss in chosen:
                x, labels, folds = data[feature]
                results += tag(training.cross_validate_arrays(
                    x, labels, config=config(feature, loss, args),
                    folds=folds[:args.per_fold_folds],
                    device=DEVICE, progress=False), feature)
            return results
        wall, results = synced(per_fold)
        figures["stages"]["per_fold"] = {**describe(results, wall, flops, peak),
                                         "runs": [f"{f}_{lss}" for f, lss in chosen]}
        figures["grid_estimate_s"] = round(
            wall * len(RUNS) / len(chosen) * 5 / args.per_fold_folds, 1)
        save()
        print(json.dumps({"per_fold": figures["stages"]["per_fold"]}), flush=True)

    # 3-5. batched
    def run_groups(groups, *, compile=False, regroup_at=None):
        results = []
        for feature, losses in groups:
            x, labels, folds = data[feature]
            members = [batched.Member(key=(loss, k), config=config(feature, loss, args),
                                      features=x, labels=labels, train_idx=tr, test_idx=te,
                                      fold=k)
                       for loss in losses for k, (tr, te) in enumerate(folds, start=1)]
            outcome = batched.train_members(members, device=DEVICE, compile=compile,
                                            regroup_at=regroup_at, progress=False)
            bad = [v for v in outcome.values() if isinstance(v, BaseException)]
            if bad:
                raise bad[0]
            results += tag(list(outcome.values()), feature)
        return results

    by_run = [(f, [loss]) for f, loss in RUNS]
    by_shape = [("spectrogram", ["softmax", "focal"]), ("mfcc", ["softmax", "focal"])]
    # the grid's grouping with one worker per GPU first, then CUDA graphs, then one group
    # per run (the grouping of 4 workers per GPU, here one group after another)
    # (name, groups, compile, regroup_at): the CUDA default masks ended members until half
    # are; "regroup_every_end" rebuilds at each end (the default before 2026-12-04's lease)
    stages = [("batched_by_shape", by_shape, False, None),
              ("batched_by_shape_regroup_every_end", by_shape, False, 1.0)]
    if not args.no_compile:
        stages.append(("batched_compiled", by_shape, True, None))
    stages.append(("batched_by_run", by_run, False, None))
    for name, groups, compile, regroup_at in stages:
        if over_budget(name):
            continue
        try:
            wall, results = synced(lambda g=groups, c=compile, r=regroup_at:
                                   run_groups(g, compile=c, regroup_at=r))
        except Exception as error:  # noqa: BLE001 - recorded in the figures
            figures["stages"][name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            save()
            continue
        stage = describe(results, wall, flops, peak)
        if "per_fold" in figures["stages"]:
            # per FLOP: the per-fold stage may hold another mix of spectrogram and MFCC clips
            base = figures["stages"]["per_fold"]["train_flop_per_s"]
            stage["speedup"] = round(stage["train_flop_per_s"] / base, 3)
        figures["stages"][name] = stage
        save()
        print(json.dumps({name: stage}), flush=True)
    figures["total_s"] = round(time.perf_counter() - started, 1)
    save()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/serlib-inductor")
    main()
