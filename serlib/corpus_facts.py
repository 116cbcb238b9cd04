"""What the book says about its corpus, measured from the build's own selection.

Class names, which classes are the majority and the minority, whether folds are sessions or
speaker folds, and whether the corpus is IEMOCAP at all: every class- or corpus-dependent
sentence of the chapters is built from a :class:`CorpusFacts`, never typed for IEMOCAP.

- **minority**: the classes whose share is below half the majority's share (on IEMOCAP's
  improvised set: happiness and anger; on EmoDB's four classes: sadness, while anger is the
  majority); the smallest class when no class is that rare.
- **fold unit**: ``"session"`` when every selected utterance has a session (IEMOCAP, the
  generated corpus, a manifest with sessions): the session protocol leaves one session out;
  else ``"speaker fold"``: the protocol groups whole speakers into folds
  (:func:`serlib.splits.make_folds`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from serlib._io import read_text_csv
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES, SHORT_NAMES

#: Corpora that have sessions whatever the selection file says.
SESSION_CORPORA = ("iemocap", "generated")


@dataclass(frozen=True)
class CorpusFacts:
    """Facts of one selection (see the module docstring).

    Attributes
    ----------
    corpus : str
        As recorded in the selection (``"iemocap"``, ``"generated"``, ``"emodb"``,
        ``"manifest:<folder>"``).
    counts : dict of str to int
        Utterances per class, in ``PAPER_CLASSES`` order (classes absent: 0).
    majority : str
        The largest class.
    minority : tuple of str
        The rare classes, in ``PAPER_CLASSES`` order.
    has_sessions : bool
        Every utterance has a session.
    """

    corpus: str
    counts: dict
    majority: str
    minority: tuple[str, ...]
    has_sessions: bool

    @property
    def n(self) -> int:
        return int(sum(self.counts.values()))

    @property
    def is_iemocap(self) -> bool:
        return self.corpus == "iemocap"

    @property
    def generated(self) -> bool:
        return self.corpus == "generated"

    @property
    def fold_unit(self) -> str:
        """``"session"`` or ``"speaker fold"``: what one fold of the session protocol holds."""
        return "session" if self.has_sessions else "speaker fold"

    @property
    def fold_units(self) -> str:
        return self.fold_unit + "s"

    @property
    def name(self) -> str:
        """Readable corpus name for prose."""
        if self.generated:
            return "the generated IEMOCAP-shaped corpus (not IEMOCAP)"
        return {"iemocap": "IEMOCAP", "emodb": "EmoDB", "ravdess": "RAVDESS",
                "crema-d": "CREMA-D", "savee": "SAVEE", "emovo": "EMOVO",
                "tess": "TESS"}.get(self.corpus, self.corpus)

    @property
    def short_name(self) -> str:
        """Short corpus name for table cells (``"generated (not IEMOCAP)"``, ``"EmoDB"``)."""
        return "generated (not IEMOCAP)" if self.generated else self.name

    def protocol_short(self, protocol: str, n_folds: int) -> str:
        """``"stratified, 5 folds"``, ``"5 sessions"`` or ``"5 speaker folds"``: table cells."""
        if protocol == "session":
            return f"{n_folds} {self.fold_units} (speaker-independent)"
        if protocol == "stratified":
            return f"stratified, {n_folds} folds (speakers shared)"
        return f"{protocol}, {n_folds} folds"

    def share(self, label: str) -> float:
        return self.counts.get(label, 0) / self.n if self.n else 0.0

    def minority_phrase(self) -> str:
        """``"happiness and anger"`` (the rare classes of this selection)."""
        names = list(self.minority)
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    def minority_short(self) -> str:
        return " / ".join(SHORT_NAMES[c] for c in self.minority)

    def class_summary(self) -> str:
        """``"anger 127 (37.5 %), neutral 79 (23.3 %), ..."``, largest first."""
        order = sorted(self.counts, key=lambda c: -self.counts[c])
        return ", ".join(f"{c} {self.counts[c]} ({100 * self.share(c):.1f} %)" for c in order)

    def protocol_phrase(self, protocol: str, n_folds: int) -> str:
        """How a protocol forms its folds on this corpus, for provenance lines."""
        if protocol == "session":
            if self.has_sessions:
                return f"leave-one-session-out ({n_folds} sessions, speaker-independent)"
            return f"{n_folds} speaker folds (whole speakers grouped, speaker-independent)"
        if protocol == "stratified":
            return (f"{n_folds}-fold stratified (utterance folds: the same speakers in "
                    "training and test)")
        return f"{n_folds}-fold {protocol}"

    def not_iemocap_warning(self) -> str:
        """A MyST warning box for every page where our numbers stand beside the paper's, on a
        corpus that is not IEMOCAP (empty on IEMOCAP)."""
        if self.is_iemocap:
            return ""
        if self.generated:
            body = ("These numbers come from the **generated IEMOCAP-shaped corpus** built into "
                    "serlib, with the profile's narrow network and few epochs. They show that "
                    "the pipeline runs end to end; they are **not IEMOCAP results** and are not "
                    "comparable with the paper's numbers.")
        else:
            body = (f"These numbers come from **{self.name}**, not IEMOCAP: the paper's rows "
                    "beside them are on another corpus, with other speakers, recordings and "
                    f"class shares (here: {self.class_summary()}; IEMOCAP's improvised set: "
                    "neutral 48.8 %, sadness 26.9 %, happiness 12.3 %, anger 12.0 %). Read "
                    "each side on its own; the differences between them are not a "
                    "replication result.")
        return f"```{{warning}}\n{body}\n```"


def corpus_facts(selection: pd.DataFrame, *, corpus: str | None = None) -> CorpusFacts:
    """The facts of a selection table (``label``; ``session`` and ``corpus`` when present).

    Parameters
    ----------
    selection : DataFrame, one row per utterance
        Needs ``label`` with values in ``PAPER_CLASSES``.
    corpus : str, optional
        Overrides the ``corpus`` column.
    """
    if "label" not in selection or selection.empty:
        raise SerlibError("corpus_facts needs a non-empty selection with a 'label' column")
    unknown = sorted(set(selection["label"].astype(str)) - set(PAPER_CLASSES))
    if unknown:
        raise SerlibError(f"labels {unknown} are not among {', '.join(PAPER_CLASSES)}")
    if corpus is None:
        corpus = str(selection["corpus"].iloc[0]) if "corpus" in selection else "unknown"
    counts = selection["label"].astype(str).value_counts()
    counts = {c: int(counts.get(c, 0)) for c in PAPER_CLASSES}
    present = [c for c in PAPER_CLASSES if counts[c] > 0]
    majority = max(present, key=lambda c: counts[c])
    minority = tuple(c for c in present if counts[c] < counts[majority] / 2)
    if not minority:
        minority = (min(present, key=lambda c: counts[c]),)
    if "session" in selection:
        sessions = selection["session"].replace("", None)
        has_sessions = bool(sessions.notna().all())
    else:
        has_sessions = corpus in SESSION_CORPORA
    return CorpusFacts(corpus=corpus, counts=counts, majority=majority, minority=minority,
                       has_sessions=has_sessions)


@functools.lru_cache(maxsize=16)
def _selection(path: str, mtime: float) -> pd.DataFrame:
    return read_text_csv(path, what="selection CSV")


def run_facts(run) -> CorpusFacts:
    """The facts of the selection a run was trained on: its ``config.json`` selection CSV when
    readable, else the run's own predictions (every utterance is predicted once) and its
    corpus name (sessions for IEMOCAP and the generated corpus)."""
    corpus = str(run.summary.get("corpus") or
                 ((run.config or {}).get("selection") or {}).get("corpus") or "unknown")
    path = ((run.config or {}).get("selection") or {}).get("path")
    if path and Path(path).is_file():
        table = _selection(str(path), os.path.getmtime(path))
        if "label" in table:
            return corpus_facts(table, corpus=corpus)
    predictions = run.predictions
    seeds = predictions.drop_duplicates("utterance_id")
    return corpus_facts(seeds[["label"]], corpus=corpus)


__all__ = ["SESSION_CORPORA", "CorpusFacts", "corpus_facts", "run_facts"]
