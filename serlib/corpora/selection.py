"""The paper's utterance selection, and the selection table on disk.

The selection table records the clip length it was made with in a column ``max_seconds`` (the
same value on every row): the features of a selection are computed at that length
(:func:`serlib.features.feature_config_for`), so that ``serlib select --max-seconds 2`` is
followed by 2-s features, never by a 6-s store. A table without the column (written by an
older serlib) means the paper's 6 s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from serlib._io import atomic_path, read_text_csv
from serlib.corpora.iemocap import COLUMNS, as_corpus_table
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    classes = tuple(classes)
    if not classes or len(set(classes)) != len(classes):
        raise SerlibError(f"classes={classes!r} must be a non-empty list of distinct names")
    return classes


#: Longest clip length a selection may ask for: 10 minutes (the paper cuts at 6 s; each clip
#: of the feature store takes max_seconds x 128 bands x 43 frames/s x 4 bytes).
MAX_CLIP_SECONDS = 600.0


def _check_options(classes: Sequence[str], *, min_agree: int, max_seconds: float
                   ) -> tuple[str, ...]:
    classes = _check_classes(classes)
    if min_agree < 0:
        raise SerlibError(f"min_agree={min_agree!r} must be >= 0")
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) \
            or not math.isfinite(max_seconds) or not 0 < max_seconds <= MAX_CLIP_SECONDS:
        raise SerlibError(f"max_seconds={max_seconds!r} must be a number of seconds in "
                          f"(0, {MAX_CLIP_SECONDS:g}] (every clip is cut or padded to it, so "
                          "the feature store grows with it)")
    return classes


def _relabel(table: pd.DataFrame, *, merge_excited: bool) -> pd.DataFrame:
    missing = [c for c in ("label", "improvised", "n_agree", "duration_s") if c not in table]
    if missing:
        raise SerlibError(f"corpus table lacks column(s) {', '.join(missing)}")
    table = table.copy()
    if merge_excited:
        table.loc[table["raw_label"] == "exc", "label"] = "happiness"
    return table


def _filters(table: pd.DataFrame, *, classes: tuple[str, ...], improvised_only: bool,
             merge_excited: bool, min_agree: int):
    """Yield (step name, rows kept so far) for each filter of the paper's selection, in order.

    The one place where the selection's filters live: :func:`select_utterances` keeps the last
    frame, :func:`selection_steps` counts every one.
    """
    frame = _relabel(table, merge_excited=merge_excited)
    yield "all utterances", frame
    if improvised_only:
        frame = frame[frame["improvised"]]
        yield "improvised dialogs", frame
    frame = frame[frame["label"].isin(classes)]
    yield f"{len(classes)} classes", frame
    if min_agree > 0:
        # rows without agreement data (manifest corpora) are not filtered
        frame = frame[frame["n_agree"].isna() | (frame["n_agree"].fillna(0) >= min_agree)]
        yield f">= {min_agree} evaluators agree", frame


def selection_steps(
    table: pd.DataFrame,
    *,
    classes: Sequence[str] = PAPER_CLASSES,
    improvised_only: bool = True,
    merge_excited: bool = False,
    min_agree: int = 2,
    max_seconds: float = 6.0,
) -> pd.DataFrame:
    """Counts after each step of :func:`select_utterances` (same arguments).

    Returns
    -------
    pandas.DataFrame
        One row per step (all utterances, improvised, four classes, agreement, then the number
        of clips longer than ``max_seconds``, which are kept and cut), columns ``step``,
        ``n_utterances`` and one count column per class.
    """
    classes = _check_options(classes, min_agree=min_agree, max_seconds=max_seconds)
    steps = []
    for name, frame in _filters(table, classes=classes, improvised_only=improvised_only,
                                merge_excited=merge_excited, min_agree=min_agree):
        steps.append((name, frame))
    steps.append((f"of which longer than {max_seconds:g} s (kept, cut)",
                  frame[frame["duration_s"] > max_seconds]))
    rows = []
    for name, frame in steps:
        counts = frame["label"].value_counts()
        rows.append({"step": name, "n_utterances": len(frame),
                     **{c: int(counts.get(c, 0)) for c in classes}})
    return pd.DataFrame(rows)


def label_counts(table: pd.DataFrame, *, classes: Sequence[str] = PAPER_CLASSES
                 ) -> pd.DataFrame:
    """How many utterances of a corpus table carry each label, and whether the selection
    keeps that label.

    Parameters
    ----------
    table : pandas.DataFrame
        A corpus table (any loader).
    classes : sequence of str
        The classes the selection keeps.

    Returns
    -------
    pandas.DataFrame
        One row per label, indexed by label: the classes first (in ``classes`` order, 0 where
        absent), then the others by count; columns ``n_utterances`` and ``selected`` (False:
        left out by :func:`select_utterances`).
    """
    classes = _check_classes(classes)
    counts = table["label"].value_counts()
    others = sorted((label for label in counts.index if label not in classes),
                    key=lambda label: (-counts[label], label))
    order = [*classes, *others]
    return pd.DataFrame({
        "n_utterances": [int(counts.get(label, 0)) for label in order],
        "selected": [label in classes for label in order],
    }, index=pd.Index(order, name="label"))


def select_utterances(
    table: pd.DataFrame,
    *,
    classes: Sequence[str] = PAPER_CLASSES,
    improvised_only: bool = True,
    merge_excited: bool = False,
    min_agree: int = 2,
    max_seconds: float = 6.0,
) -> pd.DataFrame:
    """The paper's selection of utterances from a corpus table.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`serlib.corpora.load_iemocap` or :func:`serlib.corpora.load_manifest`.
    classes : sequence of str
        Classes kept, in label order; the paper's four by default.
    improvised_only : bool
        Keep improvised dialogs only (the paper's choice); scripted ones are dropped.
    merge_excited : bool
        Relabel IEMOCAP's ``exc`` (excited) as happiness. Off by default, as in the paper;
        the common alternative set of peers (scripted + improvised, merged) turns it on.
    min_agree : int
        Keep utterances where at least this many external evaluators voted the majority
        label. Rows without agreement data (manifest corpora) are not filtered.
    max_seconds : float
        Clips longer than this are KEPT, not dropped: feature extraction cuts them to their
        first ``max_seconds``. The column ``longer_than_max`` marks them.

    Returns
    -------
    pandas.DataFrame
        The selected rows (columns of the corpus table plus ``longer_than_max``); ``label`` is
        always one of ``classes``. On a real IEMOCAP release the defaults give 2,280
        utterances: neutral 1,099, happiness 284, sadness 608, anger 289.
    """
    classes = _check_options(classes, min_agree=min_agree, max_seconds=max_seconds)
    steps = list(_filters(table, classes=classes, improvised_only=improvised_only,
                          merge_excited=merge_excited, min_agree=min_agree))
    selected = steps[-1][1].copy()
    if selected.empty and len(table):
        raise SerlibError(_why_empty(table, steps, classes))
    selected["longer_than_max"] = selected["duration_s"] > max_seconds
    selected["max_seconds"] = float(max_seconds)
    return selected.reset_index(drop=True)


def _why_empty(table: pd.DataFrame, steps: list, classes: tuple[str, ...]) -> str:
    """Why no utterance is left: the step that removed the last ones, and what it saw."""
    corpus = str(table["corpus"].iloc[0]) if "corpus" in table else "the corpus"
    (_, before), (step, _) = next(
        (steps[i - 1], steps[i]) for i in range(1, len(steps)) if steps[i][1].empty
    )
    seen = before["label"].value_counts()
    labels = ", ".join(f"{label} {count}" for label, count in seen.items())
    message = (f"the selection of {corpus} is empty: none of its {len(before)} utterances "
               f"passes the step {step!r}")
    if step.endswith("classes"):
        message += f"; labels seen: {labels}; allowed: {', '.join(classes)}"
        if "exc" in seen and "happiness" in classes:
            message += " (--merge-excited counts 'exc' as happiness)"
    elif step.startswith("improvised"):
        message += " (all are scripted; --scripted keeps them)"
    else:
        message += f" (labels seen: {labels}; lower --min-agree to keep more)"
    return message


#: Columns of a selection table: the corpus table's, ``longer_than_max`` and ``max_seconds``.
SELECTION_COLUMNS = (*COLUMNS, "longer_than_max", "max_seconds")
#: Columns read as numbers (an empty cell is missing); every other column stays a string.
_NUMERIC = ("session", "n_agree", "duration_s", "start_s", "end_s", "max_seconds")
_BOOLEAN = ("improvised", "longer_than_max")
#: Text columns where an empty cell means "not known" (None), not the empty string.
_OPTIONAL_TEXT = ("gender", "dialog")
_TRUTH = {"true": True, "1": True, "false": False, "0": False}


def write_selection(selection: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a selection table as CSV, atomically (every later step reads this file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        selection.to_csv(tmp, index=False)
    return path


def read_selection(path: str | os.PathLike) -> pd.DataFrame:
    """Read a selection CSV written by :func:`write_selection` (or ``serlib select``).

    Raises :class:`SerlibError` naming the file if it is missing or lacks columns.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SerlibError(f"{path}: selection CSV does not exist (write one with serlib select)")
    # every cell a string (a file null.wav, a speaker NA stay what they are), numbers converted
    frame = read_text_csv(path, what="selection CSV", numeric=_NUMERIC)
    for column in _BOOLEAN:
        if column in frame:
            frame[column] = _as_bool(frame[column], path=path, column=column)
    for column in _OPTIONAL_TEXT:
        if column in frame:
            frame[column] = frame[column].where(frame[column] != "", None)
    required = ("utterance_id", "path", "speaker", "label")
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise SerlibError(
            f"{path}: not a selection table: missing column(s) {', '.join(absent)} "
            "(write one with serlib select)"
        )
    extra = [c for c in frame.columns if c not in SELECTION_COLUMNS]
    table = as_corpus_table(frame)
    if "longer_than_max" in frame:
        table["longer_than_max"] = frame["longer_than_max"].to_numpy()
    if "max_seconds" in frame:
        table["max_seconds"] = frame["max_seconds"].astype(float).to_numpy()
    for column in extra:
        table[column] = frame[column].to_numpy()
    return table


def _as_bool(values: pd.Series, *, path: Path, column: str) -> pd.Series:
    truth = values.str.strip().str.lower().map(_TRUTH)
    if truth.isna().any():
        line = int(truth.isna().to_numpy().nonzero()[0][0]) + 2
        raise SerlibError(f"{path}, line {line}: {column}={values.iloc[line - 2]!r} is not "
                          "True or False")
    return truth.astype(bool)


def selection_max_seconds(selection: pd.DataFrame | str | os.PathLike) -> float:
    """The clip length (s) a selection was made with: its ``max_seconds`` column.

    A table without the column (written before serlib recorded it) gives the paper's 6 s.

    Raises
    ------
    SerlibError
        When the rows disagree (a table concatenated from selections of other lengths) or the
        value is not a positive number.
    """
    if isinstance(selection, (str, os.PathLike)):
        selection = read_selection(selection)
    if "max_seconds" not in selection:
        return 6.0
    values = pd.unique(pd.to_numeric(selection["max_seconds"], errors="coerce"))
    if len(values) != 1 or not values[0] > 0:
        raise SerlibError(
            f"selection column max_seconds has the values {sorted(map(str, values))}; "
            "expected one positive number of seconds (one selection, one clip length)"
        )
    return float(values[0])
