"""WA, UA and confusion matrices on hand-made examples."""

from __future__ import annotations

import numpy as np
import pytest

from serlib.metrics import (
    classification_report_dict,
    confusion_counts,
    confusion_percent,
    unweighted_accuracy,
    weighted_accuracy,
)

Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 3]
Y_PRED = [0, 0, 0, 1, 1, 0, 2, 0]


def test_wa_and_ua():
    assert weighted_accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 8)
    # recalls: 3/4, 1/2, 1, 0
    assert unweighted_accuracy(Y_TRUE, Y_PRED) == pytest.approx((0.75 + 0.5 + 1 + 0) / 4)


def test_confusion():
    counts = confusion_counts(Y_TRUE, Y_PRED, n_classes=4)
    assert counts.tolist() == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    percent = confusion_percent(counts)
    np.testing.assert_allclose(percent.sum(axis=1), 100)
    assert percent[0, 0] == 75
    # a class without samples gets a zero row rather than NaN
    assert confusion_percent(np.array([[2, 0], [0, 0]])).tolist() == [[100, 0], [0, 0]]


def test_report():
    report = classification_report_dict(Y_TRUE, Y_PRED, class_names=["n", "h", "s", "a"])
    assert report["per_class_recall"] == {"n": 0.75, "h": 0.5, "s": 1.0, "a": 0.0}
    assert report["confusion"][0] == [3, 1, 0, 0]
    assert 0 < report["macro_f1"] < 1
