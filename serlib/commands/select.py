"""``serlib select``: the paper's selection table from a corpus on disk."""

from __future__ import annotations


def add_parser(subparsers):
    from serlib.corpora.public import CORPUS_NAMES

    parser = subparsers.add_parser(
        "select",
        help="select the paper's utterances and write the selection table (CSV)",
        description="Read a corpus by name (IEMOCAP or a public corpus: "
        f"{', '.join(CORPUS_NAMES[1:])}) or a manifest CSV, apply the paper's selection and "
        "write the selection table that every later step reads.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-root", metavar="DIR",
                        help="the corpus folder as unpacked, or a folder below it holding the "
                        "audio (the corpus is named by --corpus)")
    source.add_argument("--iemocap", metavar="ROOT",
                        help="same as --corpus iemocap --data-root ROOT: IEMOCAP_full_release "
                        "folder (real or generated) or its parent")
    source.add_argument("--manifest", metavar="CSV",
                        help="CSV with path,label,speaker[,session,gender] (paths relative to it)")
    parser.add_argument("--corpus", default=None, metavar="NAME",
                        help=f"with --data-root: one of {', '.join(CORPUS_NAMES)} "
                        "(default iemocap)")
    parser.add_argument("--keep-calm", action="store_true",
                        help="RAVDESS: keep the calm clips in the corpus table (label 'calm', "
                        "left out by the selection; default: dropped)")
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


def load_table(args):
    """The corpus table the arguments name (``--data-root``/``--iemocap``/``--manifest``)."""
    from serlib.corpora import load_corpus, load_manifest
    from serlib.errors import SerlibError

    if args.manifest:
        if args.corpus or args.keep_calm:
            raise SerlibError("--corpus and --keep-calm name a corpus read by its file names; "
                              "a --manifest CSV already says what each file is")
        return load_manifest(args.manifest), args.manifest
    if args.iemocap:
        if args.corpus not in (None, "iemocap"):
            raise SerlibError(f"--iemocap reads IEMOCAP, not --corpus {args.corpus}: use "
                              f"--corpus {args.corpus} --data-root DIR")
        name, root = "iemocap", args.iemocap
    else:
        name, root = args.corpus or "iemocap", args.data_root
    table = load_corpus(name, root, keep_calm=True if args.keep_calm else None,
                        progress=not args.quiet)
    return table, root


def run(args) -> int:
    import pandas as pd

    from serlib._io import check_ours, check_output_file
    from serlib.corpora import label_counts, select_utterances, write_selection
    from serlib.corpora.selection import _check_options
    from serlib.errors import SerlibError

    # checked before the corpus is read: the options, and that --out can be written and is
    # not the manifest this command reads
    _check_options(("neutral",), min_agree=args.min_agree, max_seconds=args.max_seconds)
    check_output_file(args.out, what="selection CSV", inputs=(args.manifest,))
    check_ours(args.out, what="selection CSV", header=("utterance_id", "path", "label"))
    table, source = load_table(args)
    selected = select_utterances(
        table, improvised_only=not args.scripted, merge_excited=args.merge_excited,
        min_agree=args.min_agree, max_seconds=args.max_seconds,
    )
    if selected.empty:
        raise SerlibError(f"{source}: the selection is empty")
    out = write_selection(selected, args.out)
    corpus = selected["corpus"].iloc[0]
    print(f"wrote {out}: {len(selected)} of {len(table)} utterances ({corpus})")
    skipped = table.attrs.get("skipped", {})
    if skipped:
        print("skipped files: " + ", ".join(f"{n} {why}" for why, n in skipped.items()))
    counts = label_counts(table)
    left_out = counts[~counts["selected"]]["n_utterances"]
    if not left_out.empty:
        print("left out (other labels): " + ", ".join(f"{k} {v}" for k, v in left_out.items()))
    by = "session" if selected["session"].notna().all() else "speaker"
    print(pd.crosstab(selected["label"], selected[by], margins=True, margins_name="all"))
    if by == "speaker" and selected["gender"].notna().all():
        genders = selected.groupby("speaker")["gender"].first().value_counts()
        print(f"{selected['speaker'].nunique()} speakers: " +
              ", ".join(f"{n} {g}" for g, n in genders.sort_index().items()))
    shares = (selected["label"].value_counts(normalize=True) * 100).round(1)
    print("class shares (%): " + ", ".join(f"{k} {v}" for k, v in shares.items()))
    longer = int(selected["longer_than_max"].sum())
    print(f"{longer} clips longer than {args.max_seconds:g} s are kept and cut to it")
    return 0
