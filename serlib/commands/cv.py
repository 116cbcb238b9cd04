"""``serlib cv``: a whole K-fold cross-validation from a selection table to a run folder."""

from __future__ import annotations

from serlib.commands import add_folds_arguments, add_run_folder_arguments


def add_parser(subparsers):
    from serlib.config import CLASS_WEIGHTS, RECIPES, SAMPLERS, TrainConfig

    d = TrainConfig()
    parser = subparsers.add_parser(
        "cv",
        help="run (or resume) a K-fold cross-validation of the ResNet-18",
        description="Extract features (cached), train one ResNet-18 per fold and write the run "
        "folder: config, per-fold metrics, predictions, curves and summary.json. A rerun of "
        "the same command resumes after the last finished fold.",
    )
    parser.add_argument("--selection", required=True, help="selection CSV (serlib select)")
    parser.add_argument("--feature", choices=("spectrogram", "mfcc"), default=d.feature)
    parser.add_argument("--loss", choices=("focal", "softmax"), default=d.loss)
    parser.add_argument("--gamma", type=float, default=d.gamma, help="focal loss gamma")
    parser.add_argument("--alpha", type=float, nargs=4, default=None,
                        metavar=("NEU", "HAP", "SAD", "ANG"), help="per-class focal weights")
    add_folds_arguments(parser, protocol=d.protocol, folds=d.folds)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--width", type=int, default=d.width, help="ResNet base width (64)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default=d.optimizer)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--patience", type=int, default=d.patience,
                        help="early stopping on validation UA (0: off)")
    parser.add_argument("--class-weights", choices=CLASS_WEIGHTS, default=d.class_weights,
                        help="inverse: n / (C n_c); effective: Cui et al. with --beta; from "
                        "each fold's training part (softmax: weighted CE; focal: its alpha)")
    parser.add_argument("--beta", type=float, default=d.beta,
                        help="effective-number beta (default 0.999)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                        help="balanced: class-balanced draws with replacement each epoch")
    parser.add_argument("--select-epoch", choices=("best", "last"), default=d.select_epoch,
                        help="best: best validation UA (default); last: the final epoch, no "
                        "early stop (the paper's fixed number of epochs)")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="paper",
                        help="training recipe (serlib.config.RECIPES); flags left at their "
                        "defaults take the recipe's values")
    parser.add_argument("--min-steps", type=int, default=d.min_steps,
                        help="train at least this many optimizer steps (0: epochs only); the "
                        "learning-rate schedule is then stepped per batch")
    parser.add_argument("--seed-ensemble", type=int, default=d.seed_ensemble,
                        help="networks per fold, each trained alone with its own seed; "
                        "predictions are their mean (costs that many times the training)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 on CUDA instead of bf16 autocast (no effect on the CPU)")
    parser.add_argument("--float16", action="store_true", help="store features as float16")
    add_run_folder_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from serlib.config import RECIPES, TrainConfig
    from serlib.training import format_summary, run_cross_validation

    config = TrainConfig(
        feature=args.feature, loss=args.loss, gamma=args.gamma,
        alpha=None if args.alpha is None else tuple(args.alpha), protocol=args.protocol,
        folds=args.folds, epochs=args.epochs, width=args.width, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        patience=args.patience, seed=args.seed, device=args.device, amp=not args.no_amp,
        feature_dtype="float16" if args.float16 else "float32",
        class_weights=args.class_weights, beta=args.beta, sampler=args.sampler,
        select_epoch=args.select_epoch, min_steps=args.min_steps,
        seed_ensemble=args.seed_ensemble,
    )
    default = TrainConfig()
    given = config.to_dict()
    recipe = {k: v for k, v in RECIPES[args.recipe].items()
              if given[k] == getattr(default, k)}   # flags set to other values win
    config = TrainConfig.from_dict({**given, **recipe})
    summary = run_cross_validation(args.selection, config=config, out_dir=args.out,
                                   cache_dir=args.cache, progress=not args.quiet)
    print(format_summary(summary))
    print(f"run folder: {args.out}")
    return 0
