"""Late fusion of two runs on the same folds: a deep run's and a baseline's probabilities.

For test fold ``k`` the fused probabilities are a weighted mean of the two runs' test
probabilities::

    p_fused = w_k * p_deep + (1 - w_k) * p_baseline,      predicted = argmax p_fused

**The weight is chosen without test fold k.** ``w_k`` is the value of a grid (0, 0.05, ...,
1 by default) with the best score on a *selection set* of fold ``k``'s training part. The
score (``criterion``) is the UA (``"ua"``, the default; ties go to the lower log-loss, then to
the weight nearest 0.5) or the log-loss of the fused probabilities (``"log-loss"``, a smooth
proper score: every utterance counts, not only those whose argmax a weight flips; ties go to
the higher UA, then to the weight nearest 0.5). Two selection sets are supported:

- ``"validation"``: the fold's validation part (``fold_<k>/validation.csv`` in both run
  folders, as runs write it since issue 22), the utterances both runs predicted there;
- ``"other-folds"``: the two runs' test predictions of every other fold (cross-fitting):
  these utterances are fold ``k``'s training part, and each was predicted by a model that did
  not train on it. No run needs anything beyond its ``predictions.csv``, so this works for a
  baseline run (fitted on the whole training part, without a validation split) and for runs
  written before validation predictions were kept.

``"auto"`` (the default) takes ``"validation"`` when both runs have it for every fold, else
``"other-folds"``. Either way no label or prediction of test fold ``k`` is looked at to choose
``w_k``, so the fused run's test folds are as held out as the runs it fuses.

The result is a :class:`serlib.results.Run` with the deep run's folds, utterances, seed and
history (so :func:`serlib.stats.compare_runs` pairs it with either source), its config and
summary carrying a ``fusion`` section (sources, weights per fold, selection set), written as a
run folder by :func:`write_fused_run` (the layout of :func:`serlib.posthoc.write_run`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.metrics import classification_report_dict
from serlib.results import Run, load_run

PROB_COLUMNS = [f"p_{c}" for c in PAPER_CLASSES]
#: Weights of the deep run tried by default (0: the baseline alone, 1: the deep run alone).
DEFAULT_WEIGHTS = tuple(round(w, 2) for w in np.linspace(0, 1, 21))
SOURCES = ("auto", "validation", "other-folds")
#: What a weight is chosen by (module docstring).
CRITERIA = ("ua", "log-loss")
#: The per-fold validation predictions a run folder may keep (issue 22).
VALIDATION_FILE = "validation.csv"


def _as_run(run) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def _check_pair(deep: Run, baseline: Run) -> list[int]:
    """The folds both runs share (same test utterances in each); refuses anything else."""
    for run in (deep, baseline):
        missing = [c for c in ("utterance_id", "fold", "label", *PROB_COLUMNS)
                   if c not in run.predictions]
        if missing:
            raise SerlibError(f"{run.path}: predictions.csv lacks {', '.join(missing)}")
    for key in ("protocol", "n_folds"):
        if deep.summary.get(key) != baseline.summary.get(key):
            raise SerlibError(f"{deep.path} and {baseline.path} differ in {key} "
                              f"({deep.summary.get(key)!r} vs {baseline.summary.get(key)!r}): "
                              "fusion needs two runs on the same folds")
    folds = sorted(int(k) for k in deep.predictions["fold"].unique())
    for k in folds:
        a = set(deep.predictions.loc[deep.predictions["fold"] == k, "utterance_id"])
        b = set(baseline.predictions.loc[baseline.predictions["fold"] == k, "utterance_id"])
        if a != b:
            raise SerlibError(f"fold {k}: {deep.path} and {baseline.path} test different "
                              f"utterances ({len(a ^ b)} differ): fusion needs the same folds")
    labels = deep.predictions.set_index("utterance_id")["label"]
    other = baseline.predictions.set_index("utterance_id")["label"].reindex(labels.index)
    if not (labels == other).all():
        raise SerlibError(f"{deep.path} and {baseline.path} disagree on some labels")
    return folds


def _validation(run: Run, fold: int) -> pd.DataFrame | None:
    path = Path(run.path) / f"fold_{fold}" / VALIDATION_FILE
    if not path.is_file():
        return None
    from serlib.runs import read_run_csv

    return read_run_csv(path)


def _joined(deep_rows: pd.DataFrame, base_rows: pd.DataFrame):
    """(labels (N,), p_deep (N, C), p_base (N, C)) of the utterances both tables hold."""
    merged = deep_rows[["utterance_id", "label", *PROB_COLUMNS]].merge(
        base_rows[["utterance_id", *PROB_COLUMNS]], on="utterance_id",
        suffixes=("_deep", "_base"))
    y = merged["label"].map(PAPER_CLASSES.index).to_numpy()
    return (y, merged[[f"{c}_deep" for c in PROB_COLUMNS]].to_numpy(float),
            merged[[f"{c}_base" for c in PROB_COLUMNS]].to_numpy(float))


def selection_set(deep: Run, baseline: Run, fold: int, *, source: str):
    """Fold ``fold``'s selection set (module docstring): labels (N,), the two runs'
    probabilities (N, C) each, and the source used. Never holds a test utterance of
    ``fold``."""
    if source not in SOURCES:
        raise SerlibError(f"source={source!r} is not one of {', '.join(SOURCES)}")
    if source in ("auto", "validation"):
        a, b = _validation(deep, fold), _validation(baseline, fold)
        if a is not None and b is not None:
            y, pd_, pb = _joined(a, b)
            if len(y):
                return y, pd_, pb, "validation"
        if source == "validation":
            lacking = [str(r.path) for r, t in ((deep, a), (baseline, b)) if t is None]
            raise SerlibError(
                f"fold {fold}: no shared validation predictions ({VALIDATION_FILE} missing in "
                f"{', '.join(lacking) or 'neither, but they share no utterance'}); use "
                "source='other-folds'")
    keep_deep = deep.predictions[deep.predictions["fold"] != fold]
    keep_base = baseline.predictions[baseline.predictions["fold"] != fold]
    y, pd_, pb = _joined(keep_deep, keep_base)
    return y, pd_, pb, "other-folds"


def choose_weight(labels: np.ndarray, p_deep: np.ndarray, p_base: np.ndarray, *,
                  weights=DEFAULT_WEIGHTS, criterion: str = "ua") -> tuple[float, float]:
    """The deep run's weight with the best score of ``w p_deep + (1 - w) p_base`` on these
    utterances. Returns (weight, its UA).

    Parameters
    ----------
    labels : np.ndarray of int, shape (N,)
    p_deep, p_base : np.ndarray, shape (N, C)
    weights : sequence of float in [0, 1]
    criterion : {"ua", "log-loss"}
        ``"ua"``: the highest UA; ties: lower log-loss, then nearest 0.5. ``"log-loss"``: the
        lowest mean negative log-probability of the true class; ties: higher UA, then nearest
        0.5.
    """
    if criterion not in CRITERIA:
        raise SerlibError(f"criterion={criterion!r} is not one of {', '.join(CRITERIA)}")
    weights = [float(w) for w in weights]
    if not weights or any(not 0 <= w <= 1 for w in weights):
        raise SerlibError(f"weights={weights!r}: expected numbers in [0, 1]")
    if len(labels) == 0:
        raise SerlibError("no utterance to choose a fusion weight on")
    best = None
    for w in weights:
        p = w * p_deep + (1 - w) * p_base
        ua = classification_report_dict(labels, p.argmax(1), class_names=PAPER_CLASSES)["ua"]
        nll = -float(np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))
        nll = round(nll, 9)                           # rounded: equal up to float error
        key = (-ua, nll, abs(w - 0.5)) if criterion == "ua" else (nll, -ua, abs(w - 0.5))
        if best is None or key < best[0]:
            best = (key, w, ua)
    return best[1], float(best[2])


def fusion_weights(deep, baseline, *, source: str = "auto", weights=DEFAULT_WEIGHTS,
                   criterion: str = "ua") -> pd.DataFrame:
    """Each fold's weight of the deep run, chosen on its selection set only, by
    ``criterion`` (:func:`choose_weight`).

    Returns
    -------
    DataFrame
        One row per fold: ``fold``, ``weight``, ``selection_ua``, ``n_selection``,
        ``source`` (``"validation"`` or ``"other-folds"``).
    """
    deep, baseline = _as_run(deep), _as_run(baseline)
    folds = _check_pair(deep, baseline)
    if source == "auto":   # one source for every fold: validation only when all have it
        have = all(_validation(r, k) is not None for r in (deep, baseline) for k in folds)
        source = "validation" if have else "other-folds"
    rows = []
    for k in folds:
        y, p_deep, p_base, used = selection_set(deep, baseline, k, source=source)
        w, ua = choose_weight(y, p_deep, p_base, weights=weights, criterion=criterion)
        rows.append({"fold": k, "weight": w, "selection_ua": ua, "n_selection": len(y),
                     "source": used})
    return pd.DataFrame(rows)


def fuse_runs(deep, baseline, *, source: str = "auto", weights=DEFAULT_WEIGHTS,
              criterion: str = "ua") -> Run:
    """The fused run (module docstring) of a deep run and a baseline run on the same folds.

    Parameters
    ----------
    deep, baseline : Run or run folder
    source : {"auto", "validation", "other-folds"}
        Where each fold's weight is chosen.
    weights : sequence of float
        The deep run's weights tried.
    criterion : {"ua", "log-loss"}
        What each fold's weight is chosen by (:func:`choose_weight`).

    Returns
    -------
    Run
        Predictions of the deep run's test utterances with the fused probabilities; per-fold
        metrics; ``config`` and ``summary`` with a ``fusion`` section.
    """
    deep, baseline = _as_run(deep), _as_run(baseline)
    chosen = fusion_weights(deep, baseline, source=source, weights=weights, criterion=criterion)
    w_by_fold = dict(zip(chosen["fold"], chosen["weight"], strict=True))
    preds = deep.predictions.copy()
    base = baseline.predictions.set_index("utterance_id")[PROB_COLUMNS] \
        .reindex(preds["utterance_id"]).to_numpy(float)                  # (N, C)
    w = preds["fold"].map(w_by_fold).to_numpy(float)[:, None]            # (N, 1)
    fused = w * preds[PROB_COLUMNS].to_numpy(float) + (1 - w) * base
    preds[PROB_COLUMNS] = fused
    predicted = fused.argmax(axis=1)
    preds["predicted"] = [PAPER_CLASSES[i] for i in predicted]
    y = preds["label"].map(PAPER_CLASSES.index).to_numpy()
    folds = []
    for source_metrics in deep.folds:
        k = int(source_metrics["fold"])
        test = (preds["fold"] == k).to_numpy()
        metrics = classification_report_dict(y[test], predicted[test], class_names=PAPER_CLASSES)
        keep = {key: source_metrics[key] for key in ("best_epoch", "n_train", "n_val", "n_test")
                if key in source_metrics}
        folds.append({"fold": k, **metrics, **keep, "fusion_weight": w_by_fold[k]})
    fusion = {
        "method": "late fusion: w * p_deep + (1 - w) * p_baseline, w per fold",
        "deep": str(deep.path), "baseline": str(baseline.path),
        "baseline_model": (baseline.config.get("baseline") or {}).get("model"),
        "weights": {str(k): float(v) for k, v in w_by_fold.items()},
        "selection": sorted(set(chosen["source"])),
        "selection_ua": {str(k): float(v) for k, v in zip(chosen["fold"], chosen["selection_ua"],
                                                          strict=True)},
        "criterion": criterion,
        "rule": ("best UA on the fold's selection set (never its test part); ties: lower "
                 "log-loss, then nearest 0.5") if criterion == "ua" else
                ("lowest log-loss on the fold's selection set (never its test part); ties: "
                 "higher UA, then nearest 0.5"),
    }

    from serlib.posthoc import derived_run

    return derived_run(deep, folds=folds, predictions=preds, key="fusion", record=fusion)


def write_fused_run(run: Run, out_dir: str | os.PathLike) -> Path:
    """Write a fused run as a run folder, atomically (:func:`serlib.posthoc.write_run`)."""
    from serlib.posthoc import write_run

    return write_run(run, out_dir)


__all__ = ["CRITERIA", "DEFAULT_WEIGHTS", "SOURCES", "choose_weight", "fuse_runs", "fusion_weights",
           "selection_set", "write_fused_run"]
