"""``serlib select``: the paper's selection table from a corpus on disk."""

from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "select",
        help="select the paper's utterances and write the selection table (CSV)",
        description="Read an IEMOCAP tree or a manifest CSV, apply the paper's selection and "
        "write the selection table that every later step reads.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--iemocap", metavar="ROOT",
                        help="IEMOCAP_full_release folder (real or generated) or its parent")
    source.add_argument("--manifest", metavar="CSV",
                        help="CSV with path,label,speaker[,session,gender] (paths relative to it)")
    parser.add_argument("--out", required=True, help="selection CSV to write")
    parser.add_argument("--merge-excited", action="store_true",
                        help="count IEMOCAP's 'exc' as happiness (off in the paper)")
    parser.add_argument("--scripted", action="store_true",
                        help="keep scripted dialogs too (the paper uses improvised only)")
    parser.add_argument("--min-agree", type=int, default=2,
                        help="external evaluators voting the majority label (default 2)")
    parser.add_argument("--max-seconds", type=float, default=6.0,
                        help="longer clips are kept and cut to this length later (default 6)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    import pandas as pd

    from serlib.corpora import load_iemocap, load_manifest, select_utterances, write_selection

    if args.iemocap:
        table = load_iemocap(args.iemocap, progress=not args.quiet)
    else:
        table = load_manifest(args.manifest)
    selected = select_utterances(
        table, improvised_only=not args.scripted, merge_excited=args.merge_excited,
        min_agree=args.min_agree, max_seconds=args.max_seconds,
    )
    if selected.empty:
        from serlib.errors import SerlibError

        raise SerlibError(f"{args.iemocap or args.manifest}: the selection is empty")
    out = write_selection(selected, args.out)
    corpus = selected["corpus"].iloc[0]
    print(f"wrote {out}: {len(selected)} of {len(table)} utterances ({corpus})")
    by = "session" if selected["session"].notna().all() else "speaker"
    print(pd.crosstab(selected["label"], selected[by], margins=True, margins_name="all"))
    shares = (selected["label"].value_counts(normalize=True) * 100).round(1)
    print("class shares (%): " + ", ".join(f"{k} {v}" for k, v in shares.items()))
    longer = int(selected["longer_than_max"].sum())
    print(f"{longer} clips longer than {args.max_seconds:g} s are kept and cut to it")
    return 0
