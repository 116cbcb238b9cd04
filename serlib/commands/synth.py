"""``serlib synth``: write the built-in generated IEMOCAP-shaped corpus."""

from __future__ import annotations


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "synth",
        help="write a generated IEMOCAP-shaped corpus of speech-like audio",
        description="Write OUT/IEMOCAP_full_release: a generated corpus that serlib select "
        "--iemocap reads like the real release.",
    )
    parser.add_argument("--out", required=True, help="parent folder of the generated tree")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    parser.add_argument("--size", choices=("tiny", "small", "iemocap"), default="small",
                        help="80, 360 (default) or the real 2,280 selected utterances")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    import pandas as pd

    from serlib.corpora import load_iemocap, select_utterances
    from serlib.corpora.synthetic import generate_corpus

    root = generate_corpus(args.out, seed=args.seed, size=args.size, progress=not args.quiet)
    table = load_iemocap(root)
    selected = select_utterances(table)
    print(f"wrote {root}: {len(table)} utterances, {len(selected)} in the paper's selection")
    print(pd.crosstab(selected["label"], selected["session"], margins=True, margins_name="all"))
    return 0
