"""``serlib export``: a run's fold ensemble as one ONNX graph, servable without torch."""

from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a run's fold ensemble (or one fold) to ONNX (pip install 'serlib[onnx]')",
        description="Write the fold models of a run as one ONNX graph: input 'features', the "
        "unnormalised feature matrices (batch, 1, F, T) as serlib computes them; each fold's "
        "mean and std are applied inside the graph; output 'probabilities' (batch, C), averaged "
        "over the folds. A JSON file beside it (same name, .json) holds the feature config, the "
        "normalisation and the class names. Predictor.from_onnx serves it with onnxruntime. Runs "
        "trained on each clip's own frames (the strong recipe) take a second input, 'lengths' "
        "(batch,): each clip's own frames; seed ensembles export as their mean probabilities.",
    )
    parser.add_argument("--run", required=True, help="run folder (serlib cv)")
    parser.add_argument("--onnx", required=True, help="the .onnx file to write")
    parser.add_argument("--folds", type=int, nargs="+", default=None, metavar="K",
                        help="fold models to include (default: all)")
    parser.add_argument("--no-check", action="store_true",
                        help="do not compare onnxruntime's output with torch's")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from pathlib import Path

    from serlib.inference import Predictor

    predictor = Predictor.from_run(args.run, folds=args.folds, device="cpu")
    meta = predictor.to_onnx(args.onnx, check=not args.no_check)
    n_features, n_frames = predictor.feature_config.shape
    print(f"wrote {args.onnx} and {Path(args.onnx).with_suffix('.json')}: "
          f"fold(s) {', '.join(map(str, meta['folds']))} of {args.run}, "
          f"input features (batch, 1, {n_features}, {n_frames}) unnormalised, "
          f"output probabilities (batch, {len(meta['class_names'])}) "
          f"[{', '.join(meta['class_names'])}]")
    if meta["max_abs_diff"] is not None:
        print(f"onnxruntime check: max |p_onnx - p_torch| = {meta['max_abs_diff']:.1e} "
              "on 2 random feature matrices")
    elif not args.no_check:
        print("onnxruntime is not installed: output not checked (pip install 'serlib[onnx]')")
    return 0
