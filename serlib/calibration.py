"""Are the probabilities honest? Calibration metrics and temperature scaling of a run.

A classifier is calibrated when, among the clips it gives confidence ``p``, a share ``p`` is
right. The measures here (Guo et al., ICML 2017; Mukhoti et al., NeurIPS 2020 for focal loss):

- **ECE** (expected calibration error): the clips binned by confidence (the top probability),
  ``ECE = sum_b n_b / n |accuracy_b - confidence_b|``; bins of equal width on [0, 1]
  (``binning="width"``) or of equal numbers of clips (``binning="mass"``); 15 bins by default;
- **class-wise ECE**: the same for every class's own probability against "is it that class",
  averaged over classes (Kull et al., NeurIPS 2019);
- **Brier score**: ``mean_i sum_c (p_ic - y_ic)^2`` (0 is perfect, 2 the worst);
- **NLL**: ``mean_i -log p_i,y_i`` (natural log);
- **reliability diagram**: accuracy against confidence per bin (:func:`reliability_diagram`).

**Temperature scaling** divides the logits by one number ``T > 0`` (``T > 1`` softens,
``T < 1`` sharpens); the predicted class never changes. A run folder keeps probabilities, and
``softmax(log p / T)`` is the same as ``softmax(z / T)`` for the logits ``z`` behind ``p``
(``log p`` and ``z`` differ by one constant per clip). ``T`` is fitted per fold by minimising
the NLL of that fold's **validation** predictions (``fold_<k>/validation.csv``, from the
training part, never the test fold) over ``log T`` (:func:`fit_temperature`), then applied to
the fold's test predictions (:func:`scale_run`). Run folders written before validation
predictions were kept can be measured (:func:`calibration_table` without scaling) but not
scaled: :func:`fold_temperatures` raises and says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES

PROB_COLUMNS = tuple(f"p_{c}" for c in PAPER_CLASSES)
BINNINGS = ("width", "mass")
#: The search range of log T (T from 0.02 to 50).
LOG_T_BOUNDS = (-4.0, 4.0)


def _check(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or y.ndim != 1:
        raise SerlibError(f"probabilities must be (N, C) and labels (N,), got {p.shape} "
                          f"and {y.shape}")
    if len(y) == 0:
        raise SerlibError("no predictions to measure (N = 0)")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or \
            not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise SerlibError("probabilities must be finite, >= 0 and sum to 1 in every row")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise SerlibError(f"labels must be class indices in 0..{p.shape[1] - 1}")
    return p, y


def _bin_edges(confidence: np.ndarray, *, n_bins: int, binning: str) -> np.ndarray:
    if not isinstance(n_bins, int) or n_bins < 1:
        raise SerlibError(f"n_bins={n_bins!r} must be an integer >= 1")
    if binning == "width":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if binning == "mass":
        edges = np.quantile(confidence, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
        return edges
    raise SerlibError(f"binning={binning!r} must be one of {', '.join(BINNINGS)}")


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # bins (e_{b}, e_{b+1}]; 0 goes to the first bin
    return np.clip(np.searchsorted(edges, values, side="left") - 1, 0, len(edges) - 2)


def reliability_diagram(probabilities, labels, *, n_bins: int = 15, binning: str = "width"
                        ) -> pd.DataFrame:
    """Per-bin confidence and accuracy of the top-class predictions.

    Parameters
    ----------
    probabilities : array, shape (N, C)
    labels : array of int, shape (N,)
    n_bins : int
    binning : {"width", "mass"}
        Equal-width bins on [0, 1] or equal-mass bins (confidence quantiles).

    Returns
    -------
    DataFrame, one row per non-empty bin
        ``lower``, ``upper`` (bin edges), ``count``, ``confidence`` (mean top probability),
        ``accuracy`` (share right), ``gap`` (accuracy - confidence).
    """
    p, y = _check(probabilities, labels)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = _bin_edges(confidence, n_bins=n_bins, binning=binning)
    index = _bin_index(confidence, edges)
    rows = []
    for b in range(n_bins):
        inside = index == b
        if inside.any():
            rows.append({"lower": edges[b], "upper": edges[b + 1], "count": int(inside.sum()),
                         "confidence": float(confidence[inside].mean()),
                         "accuracy": float(correct[inside].mean())})
    table = pd.DataFrame(rows, columns=["lower", "upper", "count", "confidence", "accuracy"])
    table["gap"] = table["accuracy"] - table["confidence"]
    return table


def expected_calibration_error(probabilities, labels, *, n_bins: int = 15,
                               binning: str = "width") -> float:
    """ECE of the top-class confidence: ``sum_b n_b / N |accuracy_b - confidence_b|``.

    Parameters as :func:`reliability_diagram`. Returns a number in [0, 1].
    """
    table = reliability_diagram(probabilities, labels, n_bins=n_bins, binning=binning)
    return float((table["count"] * table["gap"].abs()).sum() / table["count"].sum())


def classwise_ece(probabilities, labels, *, n_bins: int = 15, binning: str = "width") -> float:
    """Class-wise ECE: for each class c, ``p_c`` binned against ``y == c``; the mean over
    classes of ``sum_b n_b / N |freq_b - mean p_c in b|``."""
    p, y = _check(probabilities, labels)
    errors = []
    for c in range(p.shape[1]):
        pc, hit = p[:, c], (y == c).astype(float)
        edges = _bin_edges(pc, n_bins=n_bins, binning=binning)
        index = _bin_index(pc, edges)
        total = 0.0
        for b in np.unique(index):
            inside = index == b
            total += inside.sum() * abs(hit[inside].mean() - pc[inside].mean())
        errors.append(total / len(y))
    return float(np.mean(errors))


def brier_score(probabilities, labels) -> float:
    """``mean_i sum_c (p_ic - [y_i = c])^2``, in [0, 2]."""
    p, y = _check(probabilities, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def negative_log_likelihood(probabilities, labels) -> float:
    """``mean_i -log p_i,y_i`` (probabilities clipped at 1e-12)."""
    p, y = _check(probabilities, labels)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def calibration_metrics(probabilities, labels, *, n_bins: int = 15) -> dict:
    """``ece`` (equal width), ``ece_mass`` (equal mass), ``classwise_ece``, ``brier``,
    ``nll`` and ``accuracy`` of one set of predictions."""
    p, y = _check(probabilities, labels)
    return {"ece": expected_calibration_error(p, y, n_bins=n_bins, binning="width"),
            "ece_mass": expected_calibration_error(p, y, n_bins=n_bins, binning="mass"),
            "classwise_ece": classwise_ece(p, y, n_bins=n_bins),
            "brier": brier_score(p, y), "nll": negative_log_likelihood(p, y),
            "accuracy": float((p.argmax(axis=1) == y).mean())}


# ----------------------------------------------------------------------------- temperature
def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``, shape (N, C); ``T = 1`` returns ``p`` (renormalised)."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise SerlibError(f"temperature={temperature!r} must be a finite number > 0")
    p = np.asarray(probabilities, dtype=np.float64)
    scores = np.log(np.clip(p, 1e-12, None)) / temperature
    scores -= scores.max(axis=1, keepdims=True)
    out = np.exp(scores)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probabilities, labels) -> float:
    """The temperature minimising the NLL of ``softmax(log p / T)`` on these predictions
    (meant for a fold's validation part), searched over ``log T`` in :data:`LOG_T_BOUNDS`
    with :func:`scipy.optimize.minimize_scalar` (bounded; the NLL is convex in 1 / T)."""
    from scipy.optimize import minimize_scalar

    p, y = _check(probabilities, labels)
    log_p = np.log(np.clip(p, 1e-12, None))

    def nll(log_t: float) -> float:
        scores = log_p / np.exp(log_t)
        scores = scores - scores.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(scores).sum(axis=1))
        return float((log_z - scores[np.arange(len(y)), y]).mean())

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-6})
    # never worse than leaving the predictions alone
    return float(np.exp(result.x)) if result.fun <= nll(0.0) else 1.0


def _labels(frame: pd.DataFrame) -> np.ndarray:
    return frame["label"].map(PAPER_CLASSES.index).to_numpy()


def read_validation(run_dir: str | os.PathLike, fold: int) -> pd.DataFrame:
    """``fold_<fold>/validation.csv`` of a run; raises :class:`SerlibError` saying why when a
    run has none (written before validation predictions were kept, trained without a
    validation part, or by a baseline)."""
    from serlib.runs import VALIDATION_FILE, fold_dir, read_run_csv

    path = fold_dir(run_dir, fold) / VALIDATION_FILE
    if not path.is_file():
        raise SerlibError(f"{path}: missing, so no temperature can be fitted for fold {fold}: "
                          "the run was trained without a validation part (val_fraction=0), "
                          "or written before runs kept their validation predictions, or is "
                          "not a trained run; its calibration before scaling is still "
                          "measurable")
    frame = read_run_csv(path)
    missing = [c for c in ("label", *PROB_COLUMNS) if c not in frame]
    if missing or frame.empty:
        raise SerlibError(f"{path}: lacks {', '.join(missing) or 'rows'}")
    return frame


def fold_temperatures(run_dir: str | os.PathLike, folds=None) -> dict[int, float]:
    """The fitted temperature of each fold of a run (fitted on its validation part).

    Parameters
    ----------
    run_dir : path
    folds : iterable of int, optional
        Default: every ``fold_<k>`` of the run.

    Raises
    ------
    SerlibError
        When a fold has no ``validation.csv`` (see :func:`read_validation`).
    """
    run_dir = Path(run_dir)
    if folds is None:
        folds = sorted(int(p.name.split("_")[1]) for p in run_dir.glob("fold_*")
                       if p.is_dir() and p.name.split("_")[1].isdigit())
    out = {}
    for k in folds:
        frame = read_validation(run_dir, int(k))
        out[int(k)] = fit_temperature(frame[list(PROB_COLUMNS)].to_numpy(), _labels(frame))
    return out


def has_validation(run_dir: str | os.PathLike) -> bool:
    """Whether every fold of a run folder kept its validation predictions."""
    from serlib.runs import VALIDATION_FILE

    folds = [p for p in Path(run_dir).glob("fold_*") if p.is_dir()]
    return bool(folds) and all((p / VALIDATION_FILE).is_file() for p in folds)


def scale_predictions(predictions: pd.DataFrame, temperatures: dict[int, float]
                      ) -> pd.DataFrame:
    """A run's test predictions with each fold's probabilities divided by its temperature
    (``softmax(log p / T_k)``); ``predicted`` is unchanged by construction."""
    out = predictions.copy()
    for k, t in temperatures.items():
        rows = (out["fold"] == k).to_numpy()
        out.loc[rows, list(PROB_COLUMNS)] = apply_temperature(
            out.loc[rows, list(PROB_COLUMNS)].to_numpy(), t)
    return out


@dataclass(frozen=True)
class FoldCalibration:
    """Calibration of one fold of one run, before and after temperature scaling."""

    fold: int
    temperature: float | None
    before: dict
    after: dict | None
    validation_nll_before: float | None = None
    validation_nll_after: float | None = None
    n_validation: int | None = None        # clips T was fitted on


def calibrate_run(run_or_dir, *, n_bins: int = 15, scale: bool = True
                  ) -> list[FoldCalibration]:
    """Per-fold calibration of a run's test predictions, before and (``scale``, when the run
    has validation predictions) after temperature scaling fitted on each fold's validation
    part. A run without them gives ``temperature=None, after=None``.

    ``run_or_dir``: a run folder or a :class:`serlib.results.Run` (e.g. a logit-adjusted one,
    whose probabilities are its adjusted ones; it is scaled with its source's validation
    predictions adjusted the same way only if it carries them, so posthoc runs are measured
    before scaling only).
    """
    from serlib.results import Run, load_run

    run = run_or_dir if isinstance(run_or_dir, Run) else load_run(run_or_dir)
    posthoc = "posthoc" in (run.config or {})
    can_scale = scale and not posthoc and has_validation(run.path)
    out = []
    for k, frame in run.predictions.groupby("fold"):
        p, y = frame[list(PROB_COLUMNS)].to_numpy(), _labels(frame)
        before = calibration_metrics(p, y, n_bins=n_bins)
        if not can_scale:
            out.append(FoldCalibration(fold=int(k), temperature=None, before=before,
                                       after=None))
            continue
        val = read_validation(run.path, int(k))
        pv, yv = val[list(PROB_COLUMNS)].to_numpy(), _labels(val)
        t = fit_temperature(pv, yv)
        out.append(FoldCalibration(
            fold=int(k), temperature=t, before=before,
            after=calibration_metrics(apply_temperature(p, t), y, n_bins=n_bins),
            validation_nll_before=negative_log_likelihood(pv, yv),
            validation_nll_after=negative_log_likelihood(apply_temperature(pv, t), yv),
            n_validation=len(yv)))
    return out


def calibration_table(runs: dict, *, n_bins: int = 15) -> pd.DataFrame:
    """One row per (run label, fold): ECE, class-wise ECE, Brier and NLL before and after
    temperature scaling (``*_ts`` columns; NaN where the run cannot be scaled), and T.

    ``runs``: ``{label: run folder or Run}``.
    """
    rows = []
    for label, run in runs.items():
        for fc in calibrate_run(run, n_bins=n_bins):
            row = {"run": label, "fold": fc.fold, "temperature": fc.temperature,
                   **fc.before}
            for key in ("ece", "ece_mass", "classwise_ece", "brier", "nll"):
                row[f"{key}_ts"] = fc.after[key] if fc.after else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["BINNINGS", "FoldCalibration", "apply_temperature", "brier_score",
           "calibrate_run", "calibration_metrics", "calibration_table", "classwise_ece",
           "expected_calibration_error", "fit_temperature", "fold_temperatures",
           "has_validation", "negative_log_likelihood", "read_validation",
           "reliability_diagram", "scale_predictions"]
