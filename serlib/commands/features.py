"""``serlib features``: extract (or reuse) the features of a selection into a feature store."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "features",
        help="compute the paper's features of a selection (cached)",
        description=(
            "Compute the log-mel spectrogram or MFCC of every clip of a selection CSV, in "
            "parallel, into a store under OUT/<config fingerprint>/, at the clip length the "
            "selection was made with (serlib select --max-seconds). Clips already stored with "
            "the same config and an unchanged file are reused; finished clips are stored as "
            "the run goes, so an interrupted run resumes."
        ),
    )
    parser.add_argument("--selection", required=True, help="selection CSV (utterance_id, path)")
    parser.add_argument("--kind", required=True, choices=("spectrogram", "mfcc"))
    parser.add_argument("--out", required=True, help="cache directory holding the stores")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: cores)")
    parser.add_argument("--float16", action="store_true", help="store float16 (half the size)")
    parser.add_argument(
        "--skip-errors", action="store_true", help="leave bad audio files out and list them"
    )
    parser.add_argument("--backend", choices=("librosa", "torch"), default="librosa")
    parser.add_argument("--device", default=None, help="torch device for --backend torch")
    parser.add_argument("--commit-every", type=int, default=256, metavar="N",
                        help="store the finished clips every N clips (default 256; a kill "
                        "loses at most N)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from serlib.corpora import read_selection
    from serlib.features import extract_corpus, feature_config_for

    selection = read_selection(args.selection)
    config = feature_config_for(selection, args.kind)
    result = extract_corpus(
        selection,
        config=config,
        cache_dir=args.out,
        n_jobs=args.jobs,
        dtype="float16" if args.float16 else "float32",
        skip_errors=args.skip_errors,
        progress=not args.quiet,
        backend=args.backend,
        device=args.device,
        commit_every=args.commit_every,
    )
    print(
        f"{args.kind}: {len(result)} clips of shape {config.shape} "
        f"({config.max_seconds:g} s) "
        f"(computed {result.n_computed}, reused {result.n_reused}, "
        f"skipped {len(result.skipped)})"
    )
    for path, reason in result.skipped:
        # the reason names the file already ("PATH: unreadable audio file ...")
        print(f"skipped {reason}" if str(reason).startswith(f"{path}") else
              f"skipped {path}: {reason}")
    print(f"store: {result.store_path}")
    return 0
