"""The paper's numbers as data: consistent with GUIDE.md section 1."""

from __future__ import annotations

import numpy as np

from serlib import paper
from serlib.labels import PAPER_CLASSES


def test_confusion_rows_sum_to_100():
    for table in (paper.TABLE2, paper.TABLE3):
        assert list(table.index) == list(PAPER_CLASSES) == list(table.columns)
        np.testing.assert_allclose(table.sum(axis=1), 100, atol=0.15)


def test_known_values():
    assert paper.TABLE3.loc["anger", "happiness"] == 5.4  # printed "54" in the paper
    assert paper.TABLE2.loc["neutral", "neutral"] == 89.1
    t1 = paper.TABLE1.set_index("model")
    assert (t1.loc["Proposed: MFCC + focal loss", "WA"], t1.loc["Satt et al. (2017)", "UA"]) \
        == (74.6, 59.4)
    t4 = paper.TABLE4.set_index(["feature", "loss"])
    assert tuple(t4.loc[("spectrogram", "softmax")]) == (70.2, 55.8)
    # the proposed models of Table 1 are the focal rows of Table 4
    assert t4.loc[("mfcc", "focal"), "UA"] == t1.loc["Proposed: MFCC + focal loss", "UA"]
    assert sum(paper.CLASS_SHARES.values()) == 100.0


def test_implied_accuracies_of_the_paper_tables():
    # Table 2 weighted by the paper's class shares gives its Table 4 WA (70.7); Table 3 gives
    # 73.8, not the printed 74.6
    from serlib import paper

    t2 = paper.implied_accuracies(paper.TABLE2)
    t3 = paper.implied_accuracies(paper.TABLE3)
    assert round(t2["WA"], 1) == 70.7
    assert round(t3["WA"], 1) == 73.8
    assert round(t3["UA"], 1) == round((80.2 + 52.0 + 81.6 + 52.9) / 4, 1)
