"""Corpora: from a corpus on disk to the selection table every later step reads.

- :func:`load_iemocap`: a real (or generated) ``IEMOCAP_full_release`` tree.
- :func:`load_manifest`: any corpus described by a ``path,label,speaker`` CSV.
- :func:`select_utterances`: the paper's selection; :func:`selection_steps`: its counts.
- :func:`write_selection` / :func:`read_selection`: the selection table on disk.
- :mod:`serlib.corpora.synthetic`: the built-in generated IEMOCAP-shaped corpus.
"""

from serlib.corpora.iemocap import COLUMNS, load_iemocap, parse_utterance_id
from serlib.corpora.manifest import load_manifest
from serlib.corpora.selection import (
    read_selection,
    select_utterances,
    selection_steps,
    write_selection,
)

__all__ = [
    "COLUMNS",
    "load_iemocap",
    "load_manifest",
    "parse_utterance_id",
    "read_selection",
    "select_utterances",
    "selection_steps",
    "write_selection",
]
