"""``serlib cv``: a whole K-fold cross-validation from a selection table to a run folder."""

from __future__ import annotations

from serlib.commands import add_folds_arguments, add_run_folder_arguments

#: Command-line flags (argparse dest) that set a TrainConfig field of the same name. Their
#: argparse default is None ("not given"), so that a recipe fills only what was not given.
TRAIN_FLAGS = ("feature", "loss", "gamma", "alpha", "protocol", "folds", "epochs", "width",
               "batch_size", "optimizer", "lr", "weight_decay", "patience", "class_weights",
               "beta", "sampler", "select_epoch", "imbalance", "imbalance_fraction", "min_steps",
               "seed_ensemble", "normalisation", "seed", "device")


def add_parser(subparsers):
    from serlib.config import CLASS_WEIGHTS, NORMALISATIONS, RECIPES, SAMPLERS, TrainConfig

    shown = TrainConfig()            # the defaults, for the help text
    parser = subparsers.add_parser(
        "cv",
        help="run (or resume) a K-fold cross-validation of the ResNet-18",
        description="Extract features (cached), train one ResNet-18 per fold and write the run "
        "folder: config, per-fold metrics, predictions, curves and summary.json. A rerun of "
        "the same command resumes after the last finished fold. Flags not given take the "
        "recipe's value, else TrainConfig's default: "
        + ", ".join(f"{k} {getattr(shown, k)}" for k in TRAIN_FLAGS if k != "alpha") + ".",
    )
    parser.add_argument("--selection", required=True, help="selection CSV (serlib select)")
    parser.add_argument("--feature", choices=("spectrogram", "mfcc"), default=None)
    parser.add_argument("--loss", choices=("focal", "softmax"), default=None)
    parser.add_argument("--gamma", type=float, default=None, help="focal loss gamma")
    parser.add_argument("--alpha", type=float, nargs=4, default=None,
                        metavar=("NEU", "HAP", "SAD", "ANG"), help="per-class focal weights")
    add_folds_arguments(parser, protocol=None, folds=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--width", type=int, default=None, help="ResNet base width (64)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--patience", type=int, default=None,
                        help="early stopping on validation UA (0: off)")
    parser.add_argument("--class-weights", choices=CLASS_WEIGHTS, default=None,
                        help="inverse: n / (C n_c); effective: Cui et al. with --beta; from "
                        "each fold's training part (softmax: weighted CE; focal: its alpha)")
    parser.add_argument("--beta", type=float, default=None,
                        help="effective-number beta (default 0.999)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help="balanced: class-balanced draws with replacement each epoch")
    parser.add_argument("--select-epoch", choices=("best", "last"), default=None,
                        help="best: best validation UA (default); last: the final epoch, no "
                        "early stop (the paper's fixed number of epochs)")
    parser.add_argument("--imbalance", default=None, metavar="PROFILE",
                        help="subsample each fold's training part to fixed class shares: "
                        "balanced, iemocap, ratio<k> (serlib.imbalance); default: none")
    parser.add_argument("--imbalance-fraction", type=float, default=None,
                        help="share of each training part kept with --imbalance (0.5)")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="paper",
                        help="training recipe (serlib.config.RECIPES); flags not given take "
                        "the recipe's values, a flag given always wins")
    parser.add_argument("--min-steps", type=int, default=None,
                        help="train at least this many optimizer steps (0: epochs only); the "
                        "learning-rate schedule is then stepped per batch")
    parser.add_argument("--seed-ensemble", type=int, default=None,
                        help="networks per fold, each trained alone with its own seed; "
                        "predictions are their mean (costs that many times the training)")
    parser.add_argument("--normalisation", choices=NORMALISATIONS, default=None,
                        help="corpus: per band, the training part's statistics (the paper); "
                        "utterance: each clip by its own; speaker: each clip by its speaker's, "
                        "over all the speaker's clips (the strong recipe; predicting then needs "
                        "several recordings of a speaker)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 on CUDA instead of bf16 autocast (no effect on the CPU)")
    parser.add_argument("--float16", action="store_true", help="store features as float16")
    add_run_folder_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def given_fields(args) -> dict:
    """The TrainConfig fields the command line gave (a flag left out is not here, whatever
    value it would have had)."""
    fields = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    if "alpha" in fields:
        fields["alpha"] = tuple(fields["alpha"])
    if args.no_amp:
        fields["amp"] = False
    if args.float16:
        fields["feature_dtype"] = "float16"
    return fields


def run(args) -> int:
    from serlib.config import TrainConfig
    from serlib.training import format_summary, run_cross_validation

    # the recipe fills what the command line did not give; an explicit flag always wins
    config = TrainConfig.from_recipe(args.recipe, **given_fields(args))
    summary = run_cross_validation(args.selection, config=config, out_dir=args.out,
                                   cache_dir=args.cache, progress=not args.quiet)
    print(format_summary(summary))
    print(f"run folder: {args.out}")
    return 0
