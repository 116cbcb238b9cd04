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
        "(batch,): each clip's own frames; seed ensembles export as their mean probabilities. "
        "Runs normalised per utterance or per speaker (normalisation='utterance'/'speaker') take "
        "features normalised that way outside the graph, as Predictor.from_onnx does (a speaker "
        "run: after Predictor.for_speaker).",
    )
    parser.add_argument("--run", required=True, help="run folder (serlib cv)")
    parser.add_argument("--onnx", required=True, help="the .onnx file to write")
    parser.add_argument("--folds", type=int, nargs="+", default=None, metavar="K",
                        help="fold models to include (default: all)")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="leave out the folds' fitted temperatures: the raw probabilities, "
                        "as in the run's predictions.csv (default: calibrated when the run "
                        "kept its validation predictions)")
    parser.add_argument("--no-check", action="store_true",
                        help="do not compare onnxruntime's output with torch's")
    parser.set_defaults(func=run)
    return parser


def _is_export_description(path) -> bool:
    import json

    from serlib.inference import ONNX_FORMAT

    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == ONNX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_export_targets(run, onnx) -> None:
    """Refuse, before any work, to write the ``.onnx`` file or its ``.json`` description
    over a file that is not an earlier export (a run's ``config.json``, anything of the
    user's), or into the run folder itself, and check the folder can be written."""
    from pathlib import Path

    from serlib._io import check_output_file
    from serlib.errors import SerlibError

    onnx = Path(onnx)
    description = onnx.with_suffix(".json")
    if Path(run).is_dir() and onnx.resolve().parent.is_relative_to(Path(run).resolve()):
        raise SerlibError(f"--onnx {onnx}: inside the run folder {run}; serlib never writes "
                          "over a run's files (its config.json, folds): write it elsewhere")
    if description.exists() and not _is_export_description(description):
        raise SerlibError(f"--onnx {onnx}: would overwrite {description}, which is not an "
                          "ONNX description serlib wrote; choose another file name")
    if onnx.exists() and not description.exists():
        raise SerlibError(f"--onnx {onnx}: exists and has no serlib description beside it "
                          f"({description}); serlib does not overwrite a file it did not "
                          "write: choose another file name")
    check_output_file(onnx, what="ONNX file")


def run(args) -> int:
    from pathlib import Path

    from serlib.inference import Predictor

    check_export_targets(args.run, args.onnx)
    predictor = Predictor.from_run(args.run, folds=args.folds, device="cpu",
                                   calibrated=not args.uncalibrated)
    meta = predictor.to_onnx(args.onnx, check=not args.no_check)
    n_features, n_frames = predictor.feature_config.shape
    normalised = ("unnormalised" if meta["input_normalisation"] == "corpus" else
                  f"normalised per {meta['input_normalisation']} (Predictor.from_onnx does it)")
    print(f"wrote {args.onnx} and {Path(args.onnx).with_suffix('.json')}: "
          f"fold(s) {', '.join(map(str, meta['folds']))} of {args.run}, "
          f"input features (batch, 1, {n_features}, {n_frames}) {normalised}, "
          f"output probabilities (batch, {len(meta['class_names'])}) "
          f"[{', '.join(meta['class_names'])}]")
    if meta["max_abs_diff"] is not None:
        print(f"onnxruntime check: max |p_onnx - p_torch| = {meta['max_abs_diff']:.1e} "
              "on 2 random feature matrices")
    elif not args.no_check:
        print("onnxruntime is not installed: output not checked (pip install 'serlib[onnx]')")
    return 0
