"""Post-hoc logit adjustment of a finished run (Menon et al., ICLR 2021), no retraining.

A model trained on imbalanced data leans toward the frequent classes; subtracting ``tau`` times
the log of the training prior from its scores undoes that lean::

    adjusted_c = log p_c - tau * log prior_c,     predicted = argmax_c adjusted_c

``tau = 0`` leaves the predictions as they are; ``tau = 1`` is the Bayes-optimal correction for
the balanced error (UA) when ``p`` is calibrated.

**The priors.** A run folder keeps every utterance's test prediction; the training part of
fold ``k`` is every utterance *not* in fold ``k``'s test part of ``predictions.csv`` (its fit
and validation parts together, which is what K-fold cross-validation trains on). Its class
shares are the priors of fold ``k``; the test fold's own labels are never used. A run whose
training parts were subsampled to fixed class shares (``TrainConfig.imbalance``,
:mod:`serlib.imbalance`) uses those shares instead.

:func:`logit_adjust` returns a :class:`serlib.results.Run` in memory (same folds, utterances
and seed as its source, so it pairs with :func:`serlib.stats.compare_runs`); :func:`write_run`
writes it as a run folder in the layout of a trained run (without checkpoints).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from serlib._io import atomic_directory
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.metrics import classification_report_dict
from serlib.results import Run, load_run

PROB_COLUMNS = tuple(f"p_{c}" for c in PAPER_CLASSES)


def training_priors(predictions: pd.DataFrame) -> pd.DataFrame:
    """Class shares of each fold's training part (every utterance outside its test fold).

    Parameters
    ----------
    predictions : DataFrame
        A run's ``predictions.csv``: ``fold`` and ``label`` per utterance.

    Returns
    -------
    DataFrame, shape (n_folds, 4)
        Index: fold; columns: :data:`serlib.labels.PAPER_CLASSES`; rows sum to 1.
    """
    counts = pd.crosstab(predictions["fold"], predictions["label"]).reindex(
        columns=list(PAPER_CLASSES), fill_value=0)
    training = counts.sum(axis=0) - counts                  # all folds but k
    empty = [(k, c) for k in training.index for c in PAPER_CLASSES if training.loc[k, c] == 0]
    if empty:
        k, c = empty[0]
        raise SerlibError(f"fold {k}'s training part has no {c!r} utterance: its prior is 0 "
                          "and log prior undefined")
    return training.div(training.sum(axis=1), axis=0)


def logit_adjust(run: Run | str | os.PathLike, *, tau: float = 1.0) -> Run:
    """The run's predictions re-decided with ``log p - tau * log prior`` (see module doc).

    Parameters
    ----------
    run : Run or run folder
        Needs ``p_<class>`` columns in ``predictions.csv``.
    tau : float
        Strength of the adjustment, >= 0 (0: unchanged).

    Returns
    -------
    Run
        Same ``path``, config (plus ``posthoc``), folds and history as the source; predictions
        with the adjusted class probabilities (softmax of the adjusted scores) and labels;
        per-fold metrics from :func:`serlib.metrics.classification_report_dict` (sizes and
        best epoch kept); ``summary`` recomputed, with ``posthoc`` naming the method and tau.
    """
    if not isinstance(run, Run):
        run = load_run(run)
    if not (np.isfinite(tau) and tau >= 0):
        raise SerlibError(f"tau={tau!r} must be a finite number >= 0")
    missing = [c for c in PROB_COLUMNS if c not in run.predictions]
    if missing:
        raise SerlibError(f"{run.path}: predictions.csv lacks {', '.join(missing)}")
    train = (run.config or {}).get("train") or {}
    if train.get("imbalance", "none") != "none":    # subsampled training parts (issue 22)
        from serlib.imbalance import training_priors as subsampled_priors

        priors = subsampled_priors(run.predictions, name=train["imbalance"],
                                   fraction=float(train["imbalance_fraction"]))
    else:
        priors = training_priors(run.predictions)
    preds = run.predictions.copy()
    probs = preds[list(PROB_COLUMNS)].to_numpy(dtype=float)              # (N, C)
    log_prior = np.log(priors.loc[preds["fold"]].to_numpy())             # (N, C)
    scores = np.log(np.clip(probs, np.finfo(float).tiny, None)) - tau * log_prior
    adjusted = np.exp(scores - scores.max(axis=1, keepdims=True))
    adjusted /= adjusted.sum(axis=1, keepdims=True)
    predicted = scores.argmax(axis=1)
    preds["predicted"] = [PAPER_CLASSES[i] for i in predicted]
    preds[list(PROB_COLUMNS)] = adjusted
    y = preds["label"].map(PAPER_CLASSES.index).to_numpy()

    folds = []
    for source in run.folds:
        k = int(source["fold"])
        test = (preds["fold"] == k).to_numpy()
        metrics = classification_report_dict(y[test], predicted[test],
                                             class_names=PAPER_CLASSES)
        keep = {key: source[key] for key in ("best_epoch", "n_train", "n_val", "n_test")
                if key in source}
        folds.append({"fold": k, **metrics, **keep})
    posthoc = {"method": "logit_adjustment", "tau": float(tau), "source": str(run.path),
               "priors": "class shares of each fold's training part (all other folds)"}
    return derived_run(run, folds=folds, predictions=preds, key="posthoc", record=posthoc)


def derived_run(source: Run, *, folds: list[dict], predictions: pd.DataFrame, key: str,
                record: dict) -> Run:
    """A run computed from ``source``'s predictions (no training): its fold ``metrics``,
    ``predictions`` and the summary's means recomputed from them, and ``record`` (what was
    done) kept under ``key`` in both the summary and the config (``"posthoc"``, ``"fusion"``)."""
    summary = copy.deepcopy(source.summary)

    def mean_std(name):
        v = np.array([m[name] for m in folds])
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    summary.update({
        "wa_mean": mean_std("wa")[0], "wa_std": mean_std("wa")[1],
        "ua_mean": mean_std("ua")[0], "ua_std": mean_std("ua")[1],
        "macro_f1_mean": mean_std("macro_f1")[0], "folds": folds,
        "confusion": np.sum([m["confusion"] for m in folds], axis=0).tolist(),
        # it trains nothing: the source's training time is the source's, not this run's
        "wall_seconds": None,
        key: record})
    config = {**copy.deepcopy(source.config), key: record}
    return Run(path=source.path, summary=summary, config=config, folds=folds,
               predictions=predictions, history=source.history.copy())


def write_run(run: Run, out_dir: str | os.PathLike) -> Path:
    """Write a run (e.g. from :func:`logit_adjust`) as a run folder, atomically.

    Same layout as a trained run (``config.json``, ``summary.json``, ``predictions.csv``,
    ``history.csv``, ``fold_<k>/{metrics.json, predictions.csv, history.csv}``), without
    checkpoints; :func:`serlib.results.load_run` reads it back. An existing folder is replaced.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        for m in run.folds:
            k = int(m["fold"])
            sub = tmp / f"fold_{k}"
            sub.mkdir()
            run.predictions[run.predictions["fold"] == k].to_csv(sub / "predictions.csv",
                                                                 index=False)
            if "fold" in run.history:
                run.history[run.history["fold"] == k].to_csv(sub / "history.csv", index=False)
            (sub / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        run.predictions.to_csv(tmp / "predictions.csv", index=False)
        run.history.to_csv(tmp / "history.csv", index=False)
        (tmp / "config.json").write_text(json.dumps(run.config, indent=2, default=str) + "\n")
        (tmp / "summary.json").write_text(json.dumps(run.summary, indent=2, default=str) + "\n")
    return out_dir


__all__ = ["derived_run", "logit_adjust", "training_priors", "write_run"]
