"""``serlib baseline``: a simple baseline on the same folds as a run, written as a run folder."""

from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "baseline",
        help="cross-validate a simple baseline (logistic regression on MFCC statistics, or "
        "eGeMAPS + SVM) into a run folder",
        description="Fit a scikit-learn baseline on every fold's training part and write a "
        "run folder with the same files as serlib cv (config, per-fold metrics, predictions, "
        "summary.json), so that tables and statistics can place it beside the ResNet runs. "
        "logreg: mean and std of the 40 MFCCs over each clip's own frames, standard scaling, "
        "C = 0.5. egemaps-svm (needs serlib[opensmile]): eGeMAPSv02 functionals, standard "
        "scaling, RBF SVM with C = 1.",
    )
    parser.add_argument("--selection", required=True, help="selection CSV (serlib select)")
    parser.add_argument("--model", choices=("logreg", "egemaps-svm"), default="logreg")
    parser.add_argument("--protocol", choices=("stratified", "session"), default="stratified",
                        help="stratified: the paper's folds; session: speaker-independent")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="fold shuffling (stratified)")
    parser.add_argument("--cache", default=None, help="feature store folder (default: none)")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from serlib.baselines import run_baseline
    from serlib.training import format_summary

    summary = run_baseline(args.selection, model=args.model, protocol=args.protocol,
                           n_folds=args.folds, seed=args.seed, out_dir=args.out,
                           cache_dir=args.cache, progress=not args.quiet)
    print(format_summary({**summary, "loss": summary["model"], "width": "-"}))
    print(f"run folder: {args.out}")
    return 0
