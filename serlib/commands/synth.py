"""``serlib synth``: placeholder, replaced by its implementation."""


def add_parser(subparsers):
    parser = subparsers.add_parser("synth", help="(not yet implemented)")
    parser.set_defaults(func=lambda args: 1)
    return parser
