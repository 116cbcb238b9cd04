"""Realistic fake run folders for the statistics and report tests (no training).

An IEMOCAP-shaped utterance table (10 speakers, two a session, the paper's class shares) and
run folders in the layout of :func:`serlib.training.run_cross_validation` whose metrics are
computed from their predictions with :mod:`serlib.metrics`, so every file agrees.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from serlib.labels import PAPER_CLASSES
from serlib.metrics import classification_report_dict

SHARES = np.array([0.488, 0.123, 0.269, 0.120])
#: EmoDB's four classes as the book selects them (neutral 79, happiness 71, sadness 62,
#: anger 127 of 339): anger is the largest class.
EMODB_SHARES = np.array([79, 71, 62, 127]) / 339


def utterances(*, n_per_speaker: int = 40, seed: int = 0, shares: np.ndarray = SHARES
               ) -> pd.DataFrame:
    """utterance_id, speaker, session, label: 5 sessions x 2 speakers, classes drawn with
    ``shares`` (``PAPER_CLASSES`` order)."""
    rng = np.random.default_rng(seed)
    rows = []
    for session in range(1, 6):
        for gender in "FM":
            speaker = f"Ses{session:02d}{gender}"
            labels = rng.choice(len(PAPER_CLASSES), size=n_per_speaker, p=shares)
            for i, c in enumerate(labels):
                rows.append({"utterance_id": f"Ses{session:02d}F_impro01_{gender}{i:03d}",
                             "speaker": speaker, "session": session,
                             "label": PAPER_CLASSES[c]})
    return pd.DataFrame(rows)


def assign_folds(table: pd.DataFrame, *, protocol: str, seed: int = 0) -> np.ndarray:
    """Fold number (1..5) of each row: by session, or shuffled stratified-like."""
    if protocol == "session":
        return table["session"].to_numpy()
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(len(table)) % 5) + 1


def predict(table: pd.DataFrame, *, accuracy: float | np.ndarray, seed: int) -> pd.DataFrame:
    """Predictions (with probabilities) that are right with probability ``accuracy`` (scalar
    or one per row); wrong ones pick another class at random."""
    rng = np.random.default_rng(seed)
    y = table["label"].map(PAPER_CLASSES.index).to_numpy()
    right = rng.random(len(y)) < np.broadcast_to(accuracy, y.shape)
    wrong = (y + rng.integers(1, len(PAPER_CLASSES), size=len(y))) % len(PAPER_CLASSES)
    predicted = np.where(right, y, wrong)
    probs = rng.dirichlet(np.ones(len(PAPER_CLASSES)), size=len(y)) * 0.4
    probs[np.arange(len(y)), predicted] += 0.6
    return probs


def write_run(folder: Path, table: pd.DataFrame, folds: np.ndarray, probs: np.ndarray, *,
              feature: str = "mfcc", loss: str = "softmax", seed: int = 0,
              protocol: str = "session", gamma: float = 2.0, extra: dict | None = None
              ) -> Path:
    """A run folder whose files agree with each other (metrics from the predictions)."""
    folder.mkdir(parents=True)
    predicted = probs.argmax(axis=1)
    y = table["label"].map(PAPER_CLASSES.index).to_numpy()
    preds = pd.DataFrame({
        "utterance_id": table["utterance_id"], "fold": folds, "speaker": table["speaker"],
        "label": table["label"], "predicted": [PAPER_CLASSES[i] for i in predicted],
        **{f"p_{c}": probs[:, k] for k, c in enumerate(PAPER_CLASSES)}})
    fold_metrics, history = [], []
    n_folds = int(folds.max())
    for k in range(1, n_folds + 1):
        test = folds == k
        metrics = {"fold": k, **classification_report_dict(y[test], predicted[test],
                                                           class_names=PAPER_CLASSES),
                   "best_epoch": 2, "n_train": int((~test).sum()) - 10, "n_val": 10,
                   "n_test": int(test.sum())}
        fold_metrics.append(metrics)
        sub = folder / f"fold_{k}"
        sub.mkdir()
        (sub / "metrics.json").write_text(json.dumps(metrics))
        preds[test].to_csv(sub / "predictions.csv", index=False)
        h = pd.DataFrame({"fold": k, "epoch": [1, 2], "train_loss": [1.2, 1.0],
                          "val_loss": [1.3, 1.1], "val_wa": [0.5, 0.6], "val_ua": [0.4, 0.5],
                          "lr": [1e-3, 1e-3]})
        h.to_csv(sub / "history.csv", index=False)
        history.append(h)
    wa = [m["wa"] for m in fold_metrics]
    ua = [m["ua"] for m in fold_metrics]
    train = {"feature": feature, "loss": loss, "gamma": gamma, "protocol": protocol,
             "folds": n_folds, "seed": seed, "epochs": 3, "width": 8, **(extra or {})}
    summary = {
        "wa_mean": float(np.mean(wa)), "wa_std": float(np.std(wa, ddof=1)),
        "ua_mean": float(np.mean(ua)), "ua_std": float(np.std(ua, ddof=1)),
        "macro_f1_mean": float(np.mean([m["macro_f1"] for m in fold_metrics])),
        "folds": fold_metrics,
        "confusion": np.sum([m["confusion"] for m in fold_metrics], axis=0).tolist(),
        "class_names": list(PAPER_CLASSES), "protocol": protocol, "n_folds": n_folds,
        "feature": feature, "loss": loss, "gamma": gamma if loss == "focal" else 0.0,
        "width": 8, "epochs": 3, "corpus": "generated", "n_utterances": len(table),
        "commit": "abc123", "device": "cpu (test)",
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.json").write_text(json.dumps({
        "train": train, "selection": {"n_utterances": len(table), "corpus": "generated",
                                      "fingerprint": "f" * 16}}))
    preds.to_csv(folder / "predictions.csv", index=False)
    pd.concat(history).to_csv(folder / "history.csv", index=False)
    return folder


def write_study_runs(runs_dir: Path, *, studies: dict, base_training: dict,
                     seeds=(0,), n_per_speaker: int = 40, shares: np.ndarray = SHARES,
                     rare: tuple[str, ...] = ("happiness", "anger")) -> Path:
    """Every run the studies need, as fake folders: stratified runs are more accurate than
    session ones (leakage), focal and remedies move the ``rare`` classes up."""
    from serlib.studies import expand_studies

    table = utterances(n_per_speaker=n_per_speaker, seed=0, shares=shares)
    y = table["label"].to_numpy()
    rare = np.isin(y, list(rare))
    for i, (name, o) in enumerate(expand_studies(studies, base_training=base_training,
                                                 seeds=seeds)):
        accuracy = np.full(len(table), 0.75 if o["protocol"] == "stratified" else 0.55)
        boost = 0.25 if (o["loss"] == "focal" or "class_weights" in o or "sampler" in o) else 0
        accuracy = np.where(rare, accuracy - 0.2 + boost, accuracy)
        folds = assign_folds(table, protocol=o["protocol"], seed=o["seed"])
        write_run(runs_dir / name, table, folds,
                  predict(table, accuracy=np.clip(accuracy, 0, 1), seed=100 + i),
                  feature=o["feature"], loss=o["loss"], seed=o["seed"],
                  protocol=o["protocol"], gamma=o.get("gamma", 2.0),
                  extra={k: v for k, v in o.items()
                         if k in ("class_weights", "sampler")})
    return runs_dir


if __name__ == "__main__":                       # fake runs for executing the chapters
    import sys

    from serlib.studies import DEFAULT_STUDIES

    write_study_runs(Path(sys.argv[1]), studies=DEFAULT_STUDIES,
                     base_training={"gamma": 2.0, "protocol": "stratified", "seed": 0},
                     seeds=[int(s) for s in sys.argv[2:]] or [0])
