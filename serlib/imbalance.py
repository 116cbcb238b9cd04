"""Controlled class imbalance: each fold's training part subsampled to fixed class shares.

The paper's mechanism (focal loss helps the rare classes) can only be tested where the
imbalance is known and varied while everything else stays put. :func:`subsample_training_part`
cuts a fold's training part down to ``fraction`` of its size with exactly the class shares of
a named **profile**; the test fold is untouched, and so are the speaker folds (rows are only
left out of the training part). Every ratio keeps the same total size, so that only the
imbalance changes between them.

Profiles (:func:`class_shares`), in :data:`serlib.labels.PAPER_CLASSES` order
(neutral, happiness, sadness, anger)::

    balanced    25 / 25 / 25 / 25 %                    majority / minority 1
    iemocap     48.8 / 12.3 / 26.9 / 12.0 %            IEMOCAP improvised (the paper's data), 4.07
    ratio<k>    neutral k, sadness sqrt(k), happiness and anger 1 (normalised); ratio10:
                66.0 / 6.6 / 20.9 / 6.6 %               majority / minority k

The ``ratio<k>`` family keeps IEMOCAP's roles (neutral the majority, sadness in between,
happiness and anger rare; IEMOCAP's own sadness / minority ratio 2.2 is close to the
sqrt(4.07) = 2.0 that ``ratio4.07`` would give), so ``balanced`` is ``ratio1``.

Training uses it through :class:`serlib.config.TrainConfig` ``imbalance`` (a profile name;
``"none"``: the corpus as it is) and ``imbalance_fraction`` (the share of each training part
kept), applied in :func:`serlib.training.prepare_run`'s fold split.

This module imports only the standard library at import time (the command line's parser
validates ``TrainConfig`` without numpy).
"""

from __future__ import annotations

import math
import re

from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES

#: IEMOCAP improvised, 4 classes: the paper's section on data (neu, hap, sad, ang).
IEMOCAP_SHARES = (0.488, 0.123, 0.269, 0.120)
#: Named profiles besides ``ratio<k>``.
NAMED_PROFILES = ("none", "balanced", "iemocap")
_RATIO = re.compile(r"^ratio(?P<k>\d+(?:\.\d+)?)$")


def is_profile(name) -> bool:
    """Whether ``name`` is a valid imbalance profile (``"none"`` included)."""
    if not isinstance(name, str):
        return False
    match = _RATIO.match(name)
    return name in NAMED_PROFILES or (match is not None and float(match["k"]) >= 1)


def class_shares(name: str) -> tuple[float, ...]:
    """The class shares of an imbalance profile, in ``PAPER_CLASSES`` order; they sum to 1.

    Raises :class:`SerlibError` for ``"none"`` (no profile) or an unknown name.
    """
    if name == "balanced":
        return tuple(1 / len(PAPER_CLASSES) for _ in PAPER_CLASSES)
    if name == "iemocap":
        total = sum(IEMOCAP_SHARES)
        return tuple(s / total for s in IEMOCAP_SHARES)
    match = _RATIO.match(name) if isinstance(name, str) else None
    if match is None or float(match["k"]) < 1:
        raise SerlibError(f"imbalance={name!r}: expected one of balanced, iemocap or "
                          "ratio<k> with k >= 1 (e.g. ratio10)")
    k = float(match["k"])
    weights = {"neutral": k, "happiness": 1.0, "sadness": math.sqrt(k), "anger": 1.0}
    total = sum(weights.values())
    return tuple(weights[c] / total for c in PAPER_CLASSES)


def imbalance_ratio(name: str) -> float:
    """Majority / minority share of a profile (1 for ``balanced``)."""
    shares = class_shares(name)
    return max(shares) / min(shares)


def allocate(total: int, shares) -> list[int]:
    """Integer class counts that sum to ``total`` and are nearest to ``total * shares``
    (largest remainder; ties to the earlier class). Exact when ``total * shares`` are integers.
    """
    if not isinstance(total, int) or total < 0:
        raise SerlibError(f"total={total!r} must be an integer >= 0")
    ideal = [total * s for s in shares]
    counts = [math.floor(x + 1e-9) for x in ideal]
    order = sorted(range(len(ideal)), key=lambda i: (-(ideal[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


def target_counts(n_training: int, *, name: str, fraction: float) -> list[int]:
    """Per-class counts of a training part of ``n_training`` rows subsampled to profile
    ``name`` at ``fraction`` of its size: ``allocate(round(fraction * n_training), shares)``."""
    if not 0 < fraction <= 1:
        raise SerlibError(f"imbalance_fraction={fraction!r} must be in (0, 1]")
    return allocate(int(round(fraction * n_training)), class_shares(name))


def shortfall(train_labels, *, name: str, fraction: float) -> str | None:
    """Why a training part (class indices, shape (n,)) cannot be subsampled to profile
    ``name`` at ``fraction``, or None when it can: the first class with too few clips."""
    available = [0] * len(PAPER_CLASSES)
    for c in train_labels:
        available[int(c)] += 1
    wanted = target_counts(len(train_labels), name=name, fraction=fraction)
    for c, (want, have) in enumerate(zip(wanted, available, strict=True)):
        if want > have:
            return (f"{PAPER_CLASSES[c]}: {want} clips needed "
                    f"({100 * class_shares(name)[c]:.1f} % of {sum(wanted)}), {have} available")
        if want == 0:
            return (f"{PAPER_CLASSES[c]}: 0 clips at {sum(wanted)} in all; every class needs "
                    "at least one")
    return None


def subsample_training_part(train_idx, labels, *, name: str, fraction: float, seed: int,
                            fold: int):
    """A fold's training part cut to profile ``name``'s class shares at ``fraction`` of its
    size, drawn without replacement (seeded by ``seed`` and ``fold``).

    Parameters
    ----------
    train_idx : np.ndarray of int, shape (n,)
        Positional rows of the fold's training part.
    labels : np.ndarray of int, shape (N,)
        Class indices (``PAPER_CLASSES``) of every row of the selection.
    name : str
        Imbalance profile (:func:`class_shares`).
    fraction : float
        Share of the training part kept, in (0, 1].
    seed, fold : int
        The draw is ``numpy.random.default_rng([seed, fold, 22])``: the same rows for every
        loss and remedy of a seed, so that runs differ in their imbalance remedy only.

    Returns
    -------
    np.ndarray of int, shape (round(fraction * n),)
        Sorted subset of ``train_idx`` with exactly :func:`target_counts` rows per class.

    Raises
    ------
    SerlibError
        When a class has too few clips in the training part (:func:`shortfall`).
    """
    import numpy as np

    train_idx = np.asarray(train_idx)
    train_labels = np.asarray(labels)[train_idx]
    problem = shortfall(train_labels, name=name, fraction=fraction)
    if problem is not None:
        raise SerlibError(f"imbalance={name!r} at imbalance_fraction={fraction:g}: fold {fold}'s "
                          f"training part ({len(train_idx)} clips) is too small: {problem}")
    wanted = target_counts(len(train_idx), name=name, fraction=fraction)
    rng = np.random.default_rng([seed, fold, 22])
    keep = [rng.choice(train_idx[train_labels == c], size=n, replace=False)
            for c, n in enumerate(wanted)]
    return np.sort(np.concatenate(keep))


def apply_to_folds(folds, labels, *, name: str, fraction: float, seed: int):
    """Every fold's training part subsampled (:func:`subsample_training_part`), test parts
    as they are; ``name="none"`` returns ``folds`` unchanged."""
    if name == "none":
        return folds
    return [(subsample_training_part(train, labels, name=name, fraction=fraction, seed=seed,
                                     fold=k), test)
            for k, (train, test) in enumerate(folds, start=1)]


def feasibility(selection, *, name: str, fraction: float, protocol: str, n_folds: int,
                seed: int) -> str | None:
    """None when every fold's training part of ``selection`` can be subsampled to profile
    ``name``; else why not (the first fold that cannot)."""
    import numpy as np

    from serlib.splits import make_folds

    kept = selection[selection["label"].isin(PAPER_CLASSES)].reset_index(drop=True)
    labels = kept["label"].map(PAPER_CLASSES.index).to_numpy()
    folds = make_folds(kept, protocol=protocol, n_folds=n_folds, seed=seed)
    for k, (train, _) in enumerate(folds, start=1):
        problem = shortfall(np.asarray(labels)[train], name=name, fraction=fraction)
        if problem is not None:
            return f"fold {k}'s training part ({len(train)} clips): {problem}"
    return None


def feasible_runs(runs, selection, *, say=print) -> list:
    """``runs`` ((name, TrainConfig) pairs) without those whose imbalance profile the
    selection cannot give; each one left out is named, with the reason, through ``say``."""
    out = []
    for name, config in runs:
        if getattr(config, "imbalance", "none") != "none":
            problem = feasibility(selection, name=config.imbalance,
                                  fraction=config.imbalance_fraction, protocol=config.protocol,
                                  n_folds=config.folds, seed=config.seed)
            if problem is not None:
                say(f"[imbalance] {name}: skipped, the corpus has too few clips for "
                    f"imbalance={config.imbalance!r} at fraction "
                    f"{config.imbalance_fraction:g} ({problem})")
                continue
        out.append((name, config))
    return out


def training_priors(predictions, *, name: str, fraction: float):
    """Class shares of each fold's subsampled training part, from a run's ``predictions.csv``
    (every utterance once: the training part of fold k is everything outside its test fold).

    Returns
    -------
    DataFrame, shape (n_folds, 4)
        Index: fold; columns: ``PAPER_CLASSES``; rows sum to 1.
    """
    import pandas as pd

    sizes = predictions.groupby("fold").size()
    rows = {}
    for fold, n_test in sizes.items():
        counts = target_counts(int(len(predictions) - n_test), name=name, fraction=fraction)
        rows[fold] = [c / sum(counts) for c in counts]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(PAPER_CLASSES))


__all__ = ["IEMOCAP_SHARES", "NAMED_PROFILES", "allocate", "apply_to_folds", "class_shares",
           "feasibility", "feasible_runs", "imbalance_ratio", "is_profile", "shortfall",
           "subsample_training_part", "target_counts", "training_priors"]
