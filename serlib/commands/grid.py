"""``serlib grid``: every run of a profile, fold by fold, on a local pool or Ray."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers):
    from serlib.engines import DEFAULT_JOBS_PER_GPU, ENGINES

    parser = subparsers.add_parser(
        "grid",
        help="train every run of a profile in parallel (local process pool or Ray), resumably",
        description="Make the selection and the features once, then train every fold of "
        "every run of the profile that is not finished on disk (one run folder per "
        "configuration and seed under OUT/runs), writing each run's summary when its folds "
        "are done. A rerun resumes; a failed fold is reported and retried by the next run.",
    )
    parser.add_argument("--profile", default="smoke",
                        help="smoke (default), paper, tiny, or a profile YAML path")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-root", default=None,
                        help="an IEMOCAP release (default: the built-in generated corpus)")
    source.add_argument("--manifest", default=None, help="a manifest CSV instead of IEMOCAP")
    parser.add_argument("--corpus", default="iemocap", metavar="NAME",
                        help="which corpus --data-root holds: iemocap (default), ravdess, "
                        "crema-d, tess, savee, emodb or emovo")
    parser.add_argument("--study", action="append", default=None, metavar="NAME",
                        help="train only this study of the profile (leakage, imbalance, "
                        "controlled_imbalance; repeatable); default: the whole profile")
    parser.add_argument("--out", default="_build",
                        help="output folder: selection.csv, cache/, runs/ (default: _build); "
                        "on a cluster it must be on a filesystem every node sees")
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="local (process pool, default) or ray (pip install serlib[ray])")
    parser.add_argument("--jobs", type=int, default=None,
                        help="CPU workers (default: cores / 2); threads per worker = "
                        "cores / jobs")
    parser.add_argument("--jobs-per-gpu", type=int, default=None,
                        help=f"workers per GPU on CUDA (default {DEFAULT_JOBS_PER_GPU})")
    parser.add_argument("--address", default=None,
                        help="ray: 'auto' joins a running cluster; none starts a local one")
    parser.add_argument("--batched", action=argparse.BooleanOptionalAction, default=None,
                        help="train the folds of runs that agree in input and network as one "
                        "grouped network (serlib.batched); default: the profile's engine "
                        "setting, else on CUDA only")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or lines")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from serlib.book import run_profile_grid

    result = run_profile_grid(args.profile, out_dir=args.out, data_root=args.data_root,
                              manifest=args.manifest, corpus=args.corpus,
                              studies=args.study, engine=args.engine, jobs=args.jobs,
                              jobs_per_gpu=args.jobs_per_gpu, address=args.address,
                              quiet=args.quiet, batched=args.batched)
    for name, summary in result.summaries.items():
        print(f"{name}: WA {100 * summary['wa_mean']:.1f} +- {100 * summary['wa_std']:.1f} %"
              f"   UA {100 * summary['ua_mean']:.1f} +- {100 * summary['ua_std']:.1f} %")
    if not result.ok:
        print(f"serlib grid: {len(result.failures)} fold(s) failed: "
              f"{result.describe_failures()}; rerun to retry only those", file=sys.stderr)
        return 1
    return 0
