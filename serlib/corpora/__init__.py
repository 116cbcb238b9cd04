"""Corpora: from a corpus on disk to the selection table every later step reads.

- :func:`load_iemocap`: a real (or generated) ``IEMOCAP_full_release`` tree.
- :func:`load_manifest`: any corpus described by a ``path,label,speaker`` CSV.
- :func:`load_ravdess`, :func:`load_crema_d`, :func:`load_tess`, :func:`load_savee`,
  :func:`load_emodb`, :func:`load_emovo`: the public corpora by their file names
  (:mod:`serlib.corpora.public`); :func:`load_corpus` reads any of them, or IEMOCAP, by name;
  :func:`class_mapping` gives each one's emotion -> paper class table.
- :func:`select_utterances`: the paper's selection; :func:`selection_steps`: its counts;
  :func:`label_counts`: every label of a corpus table, kept or left out.
- :func:`write_selection` / :func:`read_selection`: the selection table on disk.
- :mod:`serlib.corpora.synthetic`: the built-in generated IEMOCAP-shaped corpus.
"""

from serlib.corpora.iemocap import COLUMNS, load_iemocap, parse_utterance_id
from serlib.corpora.manifest import load_manifest
from serlib.corpora.public import (
    CORPORA,
    CORPUS_NAMES,
    class_mapping,
    load_corpus,
    load_crema_d,
    load_emodb,
    load_emovo,
    load_ravdess,
    load_savee,
    load_tess,
)
from serlib.corpora.selection import (
    label_counts,
    read_selection,
    select_utterances,
    selection_steps,
    write_selection,
)

__all__ = [
    "COLUMNS",
    "CORPORA",
    "CORPUS_NAMES",
    "class_mapping",
    "label_counts",
    "load_corpus",
    "load_crema_d",
    "load_emodb",
    "load_emovo",
    "load_iemocap",
    "load_manifest",
    "load_ravdess",
    "load_savee",
    "load_tess",
    "parse_utterance_id",
    "read_selection",
    "select_utterances",
    "selection_steps",
    "write_selection",
]
