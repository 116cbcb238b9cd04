"""``serlib book``: execute every chapter with papermill and render the book's HTML."""

from __future__ import annotations

import argparse


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "book",
        help="execute every chapter (papermill) and build the HTML book (Jupyter Book)",
        description="Generate the built-in corpus (unless --data-root is given), select, run "
        "every chapter with the profile's parameters (the training chapter once per "
        "configuration) and render OUT/html/index.html.",
    )
    parser.add_argument("--profile", default="smoke",
                        help="smoke (default; generated corpus, CPU, ~10 min), paper (real "
                        "IEMOCAP, GPU), tiny (tests), or a profile YAML path")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data-root", default=None,
                        help="the corpus folder: an IEMOCAP release (IEMOCAP_full_release or "
                        "its parent), or the folder of the corpus named by --corpus")
    source.add_argument("--manifest", default=None, help="a manifest CSV instead of a corpus")
    parser.add_argument("--corpus", default="iemocap", metavar="NAME",
                        help="which corpus --data-root holds: iemocap (default), ravdess, "
                        "crema-d, tess, savee, emodb or emovo")
    parser.add_argument("--out", default="_build", help="build folder (default: _build)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    from serlib.engines import ENGINES

    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="how the grid trains before the chapters run (default: the "
                        "profile's engine, else local)")
    parser.add_argument("--jobs", type=int, default=None, help="CPU workers of the grid")
    parser.add_argument("--jobs-per-gpu", type=int, default=None, help="grid workers per GPU")
    parser.add_argument("--address", default=None, help="ray cluster address ('auto')")
    parser.add_argument("--batched", action=argparse.BooleanOptionalAction, default=None,
                        help="train the folds of runs that agree in input and network as one "
                        "grouped network (serlib.batched); default: the profile's engine "
                        "setting, else on CUDA only")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from serlib.book import build_book

    html = build_book(profile=args.profile, out_dir=args.out, data_root=args.data_root,
                      manifest=args.manifest, corpus=args.corpus, quiet=args.quiet,
                      engine=args.engine, jobs=args.jobs, jobs_per_gpu=args.jobs_per_gpu,
                      address=args.address, batched=args.batched)
    print(f"book: {html / 'index.html'}")
    return 0
