"""Subcommands of the ``serlib`` command line (see :mod:`serlib.cli`)."""
