"""``serlib fuse``: late fusion of a deep run and a baseline run, written as a run folder."""

from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "fuse",
        help="late fusion of a deep run's and a baseline run's probabilities (weights chosen "
        "on validation splits) into a run folder",
        description="Fuse two finished runs on the same folds: for each test fold k, "
        "w_k * p_deep + (1 - w_k) * p_baseline, with w_k in 0, 0.05, ..., 1 chosen (by UA, "
        "or by log-loss with --criterion log-loss) on fold k's training part only: its "
        "validation predictions when both runs keep them "
        "(fold_<k>/validation.csv), else the two runs' out-of-fold predictions of the other "
        "folds. No label of test fold k is used to choose w_k. The result is a run folder "
        "like the deep run's (same folds, seed and utterances: serlib.stats pairs it).",
    )
    parser.add_argument("--deep", required=True, help="the deep run's folder (serlib cv)")
    parser.add_argument("--baseline", required=True,
                        help="the baseline run's folder (serlib baseline), same folds")
    parser.add_argument("--source", choices=("auto", "validation", "other-folds"),
                        default="auto", help="where each fold's weight is chosen (default: "
                        "validation predictions when both runs have them, else other-folds)")
    parser.add_argument("--criterion", choices=("ua", "log-loss"), default="ua",
                        help="what each fold's weight is chosen by (default: UA; ties: "
                        "lower log-loss)")
    parser.add_argument("--out", required=True, help="the fused run folder to write")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from serlib.fusion import fuse_runs, write_fused_run

    fused = fuse_runs(args.deep, args.baseline, source=args.source,
                      criterion=args.criterion)
    write_fused_run(fused, args.out)
    summary, fusion = fused.summary, fused.summary["fusion"]
    weights = ", ".join(f"fold {k}: {w:g}" for k, w in fusion["weights"].items())
    print(f"fused {args.deep} (weight w) with {args.baseline} (1 - w), w chosen by "
          f"{fusion['criterion']} on {' / '.join(fusion['selection'])}: {weights}")
    print(f"  WA {100 * summary['wa_mean']:.1f} +- {100 * summary['wa_std']:.1f} %   "
          f"UA {100 * summary['ua_mean']:.1f} +- {100 * summary['ua_std']:.1f} %")
    print(f"run folder: {args.out}")
    return 0
