"""Run folders in the layout of serlib.training, written directly (no training) for tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from serlib.labels import PAPER_CLASSES


def write_fake_run(folder: Path, *, feature: str, loss: str, seed: int = 0,
                   n_folds: int = 2, corpus: str = "generated") -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    folds, predictions, history = [], [], []
    for fold in range(1, n_folds + 1):
        confusion = rng.integers(1, 20, size=(4, 4)) + np.diag([30, 10, 20, 10])
        recall = np.diag(confusion) / confusion.sum(axis=1)
        metrics = {
            "fold": fold, "wa": float(np.trace(confusion) / confusion.sum()),
            "ua": float(recall.mean()), "macro_f1": float(recall.mean() - 0.02),
            "per_class_recall": dict(zip(PAPER_CLASSES, recall.tolist(), strict=True)),
            "confusion": confusion.tolist(), "best_epoch": 2, "n_train": 90, "n_val": 10,
            "n_test": int(confusion.sum()),
        }
        folds.append(metrics)
        (folder / f"fold_{fold}").mkdir()
        (folder / f"fold_{fold}" / "metrics.json").write_text(json.dumps(metrics))
        for epoch in (1, 2, 3):
            history.append({"fold": fold, "epoch": epoch, "train_loss": 1.5 / epoch,
                            "val_loss": 1.4 / epoch, "val_wa": 0.4 + 0.05 * epoch,
                            "val_ua": 0.3 + 0.05 * epoch, "lr": 1e-3})
        predictions.append({"utterance_id": f"u{fold}", "fold": fold, "speaker": "Ses01F",
                            "label": "neutral", "predicted": "neutral", "p_neutral": 0.7,
                            "p_happiness": 0.1, "p_sadness": 0.1, "p_anger": 0.1})
    wa = [m["wa"] for m in folds]
    ua = [m["ua"] for m in folds]
    summary = {
        "wa_mean": float(np.mean(wa)), "wa_std": float(np.std(wa, ddof=1)),
        "ua_mean": float(np.mean(ua)), "ua_std": float(np.std(ua, ddof=1)),
        "macro_f1_mean": 0.5, "folds": folds,
        "confusion": np.sum([m["confusion"] for m in folds], axis=0).tolist(),
        "class_names": list(PAPER_CLASSES), "protocol": "stratified", "n_folds": n_folds,
        "feature": feature, "loss": loss, "gamma": 2.0 if loss == "focal" else 0.0,
        "width": 8, "epochs": 3, "corpus": corpus, "n_utterances": 300,
        "commit": "abc123", "device": "cpu (test)",
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.json").write_text(json.dumps({"train": {"feature": feature}}))
    pd.DataFrame(predictions).to_csv(folder / "predictions.csv", index=False)
    pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    return folder


def write_fake_grid(runs_dir: Path, **kwargs) -> Path:
    for i, (feature, loss) in enumerate([("spectrogram", "softmax"), ("spectrogram", "focal"),
                                         ("mfcc", "softmax"), ("mfcc", "focal")]):
        write_fake_run(runs_dir / f"{feature}_{loss}", feature=feature, loss=loss, seed=i,
                       **kwargs)
    return runs_dir
