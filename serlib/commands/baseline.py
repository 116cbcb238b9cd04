"""``serlib baseline``: a simple baseline on the same folds as a run, written as a run folder."""

from __future__ import annotations

from serlib.commands import add_folds_arguments, add_run_folder_arguments


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "baseline",
        help="cross-validate a simple baseline (logistic regression on MFCC statistics, or "
        "eGeMAPS + SVM) into a run folder",
        description="Fit a scikit-learn baseline on every fold's training part and write a "
        "run folder with the same files as serlib cv (config, per-fold metrics, predictions, "
        "summary.json), so that tables and statistics can place it beside the ResNet runs. "
        "logreg: mean and std of the 40 MFCCs over each clip's own frames, standard scaling, "
        "C = 0.5. logreg-speaker: the same, each statistic first z-normalised over its "
        "speaker's clips (as the strong recipe normalises per speaker). egemaps-svm (needs "
        "serlib[opensmile]): eGeMAPSv02 functionals, standard "
        "scaling, RBF SVM with C = 1.",
    )
    parser.add_argument("--selection", required=True, help="selection CSV (serlib select)")
    parser.add_argument("--model", choices=("logreg", "logreg-speaker", "egemaps-svm"),
                        default="logreg")
    add_folds_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="fold shuffling (stratified)")
    add_run_folder_arguments(parser)
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
