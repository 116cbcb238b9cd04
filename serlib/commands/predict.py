"""``serlib predict``: class probabilities of a trained run for new recordings."""

from __future__ import annotations

#: File name endings taken from a folder (any format libsndfile reads; case-insensitive).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "predict",
        help="predict the emotion of recordings with a trained run (its fold ensemble)",
        description="Compute the run's features for each recording, normalise them per fold and "
        "average the fold models' probabilities. Recordings longer than the model input (6 s) "
        "are cut into windows of that length every --hop seconds and averaged; shorter ones are "
        "padded as in training. One row per file: path, predicted class, one probability per "
        "class, duration and number of windows. Unreadable files are reported by name and the "
        "others predicted; the exit code is 1 if any failed.",
    )
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_FOLDER",
                        help="audio files, or folders searched recursively for "
                        + ", ".join(AUDIO_SUFFIXES))
    parser.add_argument("--run", required=True, help="run folder (serlib cv)")
    parser.add_argument("--out", default=None,
                        help="write the rows to this .csv or .json file (default: print them)")
    parser.add_argument("--windows", action="store_true",
                        help="one row per window (path, window, start_s, end_s, predicted, "
                        "p_<class>...) instead of one per file")
    parser.add_argument("--folds", type=int, nargs="+", default=None, metavar="K",
                        help="fold models to ensemble (default: all)")
    parser.add_argument("--hop", type=float, default=None,
                        help="seconds between windows of a long recording (default: half a "
                        "window)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="the raw probabilities: without each fold's temperature fitted on "
                        "its validation part (used by default when the run kept them)")
    parser.add_argument("--speaker-reference", nargs="+", default=None,
                        metavar="FILE_OR_FOLDER",
                        help="runs trained with normalisation='speaker' only: recordings of "
                        "the one speaker of FILE_OR_FOLDER (files, or folders searched as "
                        "above; the recordings to predict may be given again), whose "
                        "statistics normalise every recording, as training normalised each "
                        "clip by its speaker's")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def audio_files(paths) -> tuple[list[str], list[str]]:
    """The files to predict, in the order given (folders: sorted, recursive), and an error
    message for each path that is neither a file nor a folder with audio files."""
    from pathlib import Path

    files, errors = [], []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                errors.append(f"{path}: folder holds no audio file ({', '.join(AUDIO_SUFFIXES)})")
            files.extend(found)
        else:
            files.append(str(path))   # a missing file is reported when it is read
    return files, errors


def write_rows(rows, out) -> None:
    """``rows`` (a DataFrame) to ``out`` (.csv or .json, atomically)."""
    from pathlib import Path

    from serlib._io import atomic_path, atomic_write_json
    from serlib.errors import SerlibError

    out = Path(out)
    if out.suffix.lower() == ".csv":
        with atomic_path(out) as tmp:
            rows.to_csv(tmp, index=False)
    elif out.suffix.lower() == ".json":
        atomic_write_json(out, rows.to_dict(orient="records"))
    else:
        raise SerlibError(f"--out {out}: expected a .csv or .json file name")


def run(args) -> int:
    import sys
    from pathlib import Path

    import pandas as pd
    from tqdm import tqdm

    from serlib._io import check_ours, check_output_file
    from serlib.errors import SerlibError
    from serlib.inference import Predictor

    if args.out is not None and Path(args.out).suffix.lower() not in (".csv", ".json"):
        raise SerlibError(f"--out {args.out}: expected a .csv or .json file name")
    files, failures = audio_files(args.paths)
    if args.out is not None:   # before any recording is read: writable, and not an input
        check_output_file(args.out, what="predictions file", inputs=tuple(files))
        check_ours(args.out, what="predictions file", header=("path", "predicted"))
        if Path(args.run).is_dir() and Path(args.out).resolve().parent.is_relative_to(
                Path(args.run).resolve()):
            raise SerlibError(f"--out {args.out}: inside the run folder {args.run}; serlib "
                              "never writes over a run's files: write it elsewhere")
    predictor = Predictor.from_run(args.run, folds=args.folds, device=args.device,
                                   hop_seconds=args.hop, calibrated=not args.uncalibrated)
    if predictor.input_normalisation == "speaker" and args.speaker_reference is None:
        raise SerlibError(f"--run {args.run}: trained with normalisation='speaker' (each clip "
                          "normalised by its speaker's statistics): give recordings of the "
                          "speaker with --speaker-reference FILE_OR_FOLDER...")
    if args.speaker_reference is not None:
        references, errors = audio_files(args.speaker_reference)
        if errors:
            raise SerlibError(f"--speaker-reference: {'; '.join(errors)}")
        predictor = predictor.for_speaker(references)
    for message in failures:
        tqdm.write(f"serlib predict: {message}", file=sys.stderr)
    rows, n_file_failures = [], 0
    for path in tqdm(files, desc="predict", unit="file", disable=args.quiet):
        try:
            prediction = predictor.predict_file(path)
        except SerlibError as error:
            tqdm.write(f"serlib predict: {error}", file=sys.stderr)
            failures.append(str(error))
            n_file_failures += 1
            continue
        rows.append(prediction.window_rows() if args.windows
                    else pd.DataFrame([prediction.row()]))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if args.out is not None:
        write_rows(table, args.out)
        print(f"{len(table)} row(s) for {len(rows)} file(s) written to {args.out}")
    elif rows:
        with pd.option_context("display.max_rows", None, "display.width", 200,
                               "display.max_colwidth", 60, "display.precision", 3):
            print(table.to_string(index=False))
    if failures:
        n_inputs = len(files) + len(failures) - n_file_failures
        print(f"serlib predict: {len(failures)} of {n_inputs} input(s) failed, "
              f"{len(rows)} predicted", file=sys.stderr)
        return 1
    return 0
