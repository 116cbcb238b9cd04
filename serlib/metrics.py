"""The paper's metrics: overall accuracy (WA) and class accuracy (UA), confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
)


def weighted_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Overall accuracy: correct predictions / all (the paper's "overall accuracy", WA)."""
    return float(accuracy_score(y_true, y_pred))


def unweighted_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (the paper's "class
    accuracy", UA)."""
    return float(balanced_accuracy_score(y_true, y_pred))


def confusion_counts(y_true: Sequence[int], y_pred: Sequence[int], *, n_classes: int
                     ) -> np.ndarray:
    """Counts, shape (n_classes, n_classes): rows true class, columns predicted class."""
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def confusion_percent(counts: np.ndarray) -> np.ndarray:
    """Row-normalised confusion in percent (each row sums to 100); a class with no samples
    gets a row of zeros."""
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(100.0 * counts, totals, out=np.zeros_like(counts), where=totals > 0)


def classification_report_dict(y_true: Sequence[int], y_pred: Sequence[int], *,
                               class_names: Sequence[str]) -> dict:
    """WA, UA, macro-F1, per-class recall and confusion counts, JSON-ready.

    ``y_true``/``y_pred`` hold class indices into ``class_names``.
    """
    labels = list(range(len(class_names)))
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "wa": weighted_accuracy(y_true, y_pred),
        "ua": unweighted_accuracy(y_true, y_pred),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "per_class_recall": {name: float(r) for name, r in zip(class_names, recall,
                                                               strict=True)},
        "confusion": confusion_counts(y_true, y_pred, n_classes=len(class_names)).tolist(),
    }
