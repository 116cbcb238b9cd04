"""The paper's reported numbers, as data (Tripathi et al., 2019, arXiv:1906.05682).

All in percent. Confusion matrices: rows are the true class, columns the predicted class, in
:data:`serlib.labels.PAPER_CLASSES` order (neutral, happiness, sadness, anger).
"""

from __future__ import annotations

import pandas as pd

from serlib.labels import PAPER_CLASSES

#: Class shares (%) of the paper's IEMOCAP selection (improvised, four classes).
CLASS_SHARES = {"neutral": 48.8, "happiness": 12.3, "sadness": 26.9, "anger": 12.0}

#: Table 1: overall accuracy (WA) and class accuracy (UA) of earlier work and the paper's models.
TABLE1 = pd.DataFrame(
    [
        ("Lee & Tashev (2015)", "baseline", 62.8, 63.9),
        ("Satt et al. (2017)", "baseline", 68.8, 59.4),
        ("Yenigalla et al. (2018)", "baseline", 71.2, 61.9),
        ("Proposed: Spectrogram + focal loss", "paper", 74.2, 64.3),
        ("Proposed: MFCC + focal loss", "paper", 74.6, 66.7),
    ],
    columns=["model", "kind", "WA", "UA"],
)

#: Table 2: MFCC + softmax (cross-entropy) loss, confusion in % (rows sum to 100).
TABLE2 = pd.DataFrame(
    [[89.1, 5.4, 3.7, 1.8], [70.5, 25.2, 4.3, 0.0], [24.6, 2.7, 70.5, 2.2],
     [48.7, 5.6, 2.9, 42.8]],
    index=list(PAPER_CLASSES), columns=list(PAPER_CLASSES),
)

#: Table 3: MFCC + focal loss, confusion in %. The paper prints "54" for anger -> happiness;
#: 5.4 makes the row sum to 100.
TABLE3 = pd.DataFrame(
    [[80.2, 3.2, 15.2, 1.4], [34.7, 52.0, 8.5, 4.8], [16.4, 1.2, 81.6, 0.8],
     [39.4, 5.4, 2.3, 52.9]],
    index=list(PAPER_CLASSES), columns=list(PAPER_CLASSES),
)

#: Table 4: the ablation, WA / UA of each feature and loss.
TABLE4 = pd.DataFrame(
    [
        ("spectrogram", "softmax", 70.2, 55.8),
        ("spectrogram", "focal", 74.2, 64.3),
        ("mfcc", "softmax", 70.7, 56.9),
        ("mfcc", "focal", 74.6, 66.7),
    ],
    columns=["feature", "loss", "WA", "UA"],
)

#: Focal loss at p_t = 0.8 and gamma = 2 is this much lower than cross-entropy (the paper: 96 %).
FOCAL_EXAMPLE = {"p_t": 0.8, "gamma": 2.0, "reduction_percent": 96.0}


def implied_accuracies(confusion_percent: pd.DataFrame,
                       shares: dict[str, float] = CLASS_SHARES) -> dict[str, float]:
    """WA and UA (%) that a row-normalised confusion matrix implies under given class shares.

    WA is the share-weighted mean of the diagonal (each row's recall weighted by how common
    its class is), UA the plain mean of the diagonal. The paper's Table 2 implies a WA of
    70.7, as its Table 4 prints; its Table 3 implies 73.8, not the 74.6 of Table 4.

    Parameters
    ----------
    confusion_percent : DataFrame, shape (4, 4)
        Rows true, columns predicted, in % (rows sum to 100), ``PAPER_CLASSES`` order.
    shares : dict
        Class shares in % (default: the paper's selection, :data:`CLASS_SHARES`).

    Returns
    -------
    dict
        ``{"WA": ..., "UA": ...}`` in %.
    """
    recall = pd.Series(confusion_percent.to_numpy().diagonal(), index=confusion_percent.index)
    weights = pd.Series(shares).reindex(recall.index)
    return {"WA": float((recall * weights).sum() / weights.sum()), "UA": float(recall.mean())}
