"""Cross-validation folds: the paper's stratified K-fold, or speaker-independent folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from serlib.config import PROTOCOLS
from serlib.errors import SerlibError


def make_folds(selection: pd.DataFrame, *, protocol: str, n_folds: int, seed: int
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a selection into (train, test) folds of positional row indices.

    Parameters
    ----------
    selection : pandas.DataFrame
        Needs ``label``; ``session`` and/or ``speaker`` for the session protocol.
    protocol : {"stratified", "session"}
        "stratified": the paper's protocol, stratified K-fold over utterances (shuffled,
        seeded); the same speakers appear in train and test. "session": speaker-independent:
        leave-one-session-out when every row has a session (``n_folds`` must equal the number
        of sessions), else speakers grouped into ``n_folds`` speaker-disjoint folds.
    n_folds : int
    seed : int

    Returns
    -------
    list of (train_idx, test_idx)
        Sorted int arrays; the test parts are disjoint and cover every row.
    """
    if protocol not in PROTOCOLS:
        raise SerlibError(f"protocol={protocol!r} must be one of {', '.join(PROTOCOLS)}")
    if not isinstance(n_folds, int) or n_folds < 2:
        raise SerlibError(f"n_folds={n_folds!r} must be an integer >= 2")
    labels = selection["label"].to_numpy()
    index = np.arange(len(selection))
    if protocol == "stratified":
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(index, labels)
    elif "session" in selection and selection["session"].notna().all():
        sessions = selection["session"].to_numpy()
        unique = np.unique(sessions)
        if len(unique) != n_folds:
            raise SerlibError(
                f"protocol='session' leaves one session out per fold: n_folds={n_folds} must "
                f"equal the number of sessions ({len(unique)})"
            )
        splits = ((index[sessions != s], index[sessions == s]) for s in unique)
    else:
        speakers = selection["speaker"].astype(str).to_numpy()
        n_speakers = len(np.unique(speakers))
        if n_speakers < n_folds:
            corpus = (f"corpus {selection['corpus'].iloc[0]!r}" if "corpus" in selection
                      and len(selection) else "this selection")
            raise SerlibError(
                f"protocol='session' (speaker-independent) needs at least n_folds={n_folds} "
                f"speakers, one group per fold, but {corpus} has {n_speakers} "
                f"speaker(s) and no sessions: refused; use "
                + (f"n_folds <= {n_speakers} or " if n_speakers >= 2 else "")
                + "protocol='stratified' (which shares speakers between train and test)"
            )
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(index, labels, groups=speakers)
    return [(np.sort(train), np.sort(test)) for train, test in splits]


def validation_split(train_idx: np.ndarray, labels: np.ndarray, *, fraction: float, seed: int,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Carve a validation part out of a training part (never the test fold).

    Parameters
    ----------
    train_idx : np.ndarray of int, shape (n_train,)
        Positional indices of the training part.
    labels : np.ndarray, shape (N,)
        Labels of every row (indexed by ``train_idx``).
    fraction : float
        Share of ``train_idx`` held out for validation, in (0, 1).
    seed : int
        Without ``groups``: the seed of the random split. With ``groups``: only breaks ties
        between speakers (see below).
    groups : np.ndarray, shape (N,), optional
        Speakers of every row. When given, the validation part is speaker-disjoint from the
        rest: whole speakers are held out (stratified by label as far as speakers allow), about
        ``fraction`` of the training part, at least one speaker. Needs >= 2 speakers in the
        training part. The speakers held out are the first fold of scikit-learn's
        ``StratifiedGroupKFold``, which places speakers by how spread their label
        distributions are; its shuffling (seeded with ``seed``) only reorders speakers that
        tie. So on real corpora the same speakers are held out for every seed (on EmoDB's
        five speaker folds: speaker 12 or 09, whatever the seed): repeating a run over seeds
        varies its training, not its validation speakers.

    Returns
    -------
    (fit_idx, val_idx)
        Sorted, disjoint subsets of ``train_idx`` that together cover it.
    """
    if not 0 < fraction < 1:
        raise SerlibError(f"val_fraction={fraction!r} must be between 0 and 1")
    train_idx = np.asarray(train_idx)
    y = labels[train_idx]
    if groups is not None:
        speakers = np.asarray(groups)[train_idx].astype(str)
        n_speakers = len(np.unique(speakers))
        if n_speakers < 2:
            raise SerlibError(
                f"a speaker-disjoint validation split needs >= 2 speakers in the training "
                f"part, got {n_speakers}"
            )
        # one of round(1 / fraction) speaker-disjoint folds is the validation part
        n_splits = min(max(2, round(1 / fraction)), n_speakers)
        # scikit-learn refuses more splits than the largest class has members (a small,
        # e.g. subsampled, training part): fewer, larger validation folds then
        n_splits = max(2, min(n_splits, int(np.unique(y, return_counts=True)[1].max())))
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        fit, val = next(splitter.split(train_idx, y, groups=speakers))
        return np.sort(train_idx[fit]), np.sort(train_idx[val])
    classes, counts = np.unique(y, return_counts=True)
    n_val = int(np.ceil(fraction * len(y)))
    # stratify when every class can appear on both sides, else a plain seeded split
    can_stratify = counts.min() >= 2 and min(n_val, len(y) - n_val) >= len(classes)
    stratify = y if can_stratify else None
    fit, val = train_test_split(train_idx, test_size=fraction, random_state=seed,
                                stratify=stratify)
    return np.sort(fit), np.sort(val)
