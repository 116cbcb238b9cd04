"""Baselines: a run folder like a ResNet run's, numbers equal to scikit-learn's on the folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from serlib.baselines import (
    fit_baseline_folds,
    mfcc_statistics,
    run_baseline,
    speaker_standardise,
)
from serlib.errors import SerlibError
from serlib.features import FeatureConfig, extract_corpus
from serlib.labels import PAPER_CLASSES
from serlib.splits import make_folds
from serlib.training import summarise

RESNET_FOLD_FILES = ("checkpoint.pt", "metrics.json", "predictions.csv", "history.csv")
RESNET_RUN_FILES = ("config.json", "predictions.csv", "history.csv", "summary.json")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def logreg_run(synthetic_selection, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("logreg")
    summary = run_baseline(synthetic_selection, model="logreg", protocol="session", n_folds=5,
                           out_dir=out, cache_dir=cache, progress=False)
    return out, summary


def test_folder_has_every_file_of_a_resnet_run(logreg_run, synthetic_selection):
    out, summary = logreg_run
    for name in RESNET_RUN_FILES:
        assert (out / name).is_file(), name
    for k in range(1, 6):
        for name in RESNET_FOLD_FILES:
            assert (out / f"fold_{k}" / name).is_file(), (k, name)
    # the same keys as a ResNet run's summary, plus the baseline's name
    from serlib.config import TrainConfig

    resnet_keys = set(summarise([summary["folds"][0]], config=TrainConfig(), corpus="x",
                                n_utterances=1, device="cpu"))
    assert set(summary) == resnet_keys | {"model"}
    assert summary["feature"] == "mfcc-stats" and summary["loss"] == "logreg"
    assert summary == json.loads((out / "summary.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    assert sorted(predictions["utterance_id"]) == sorted(synthetic_selection["utterance_id"])
    assert list(pd.read_csv(out / "history.csv").columns) == [
        "fold", "epoch", "train_loss", "val_loss", "val_wa", "val_ua", "lr"]
    fold = json.loads((out / "fold_1" / "metrics.json").read_text())
    assert set(fold) >= {"fold", "wa", "ua", "macro_f1", "per_class_recall", "confusion",
                         "best_epoch", "n_train", "n_val", "n_test"}
    checkpoint = torch.load(out / "fold_1" / "checkpoint.pt", weights_only=True)
    assert checkpoint["model"]["coef"].shape == (4, 80)
    assert checkpoint["baseline"] == "logreg"


def test_numbers_equal_a_direct_scikit_learn_computation(logreg_run, synthetic_selection,
                                                         cache):
    out, summary = logreg_run
    config = FeatureConfig.preset("mfcc")
    features = extract_corpus(synthetic_selection, config=config, cache_dir=cache,
                              progress=False).features
    # by hand: each clip's own frames from its duration, their mean and std per coefficient
    frames = np.ceil(np.round(np.minimum(synthetic_selection["duration_s"], 6) * 22050)
                     / 512).astype(int)
    x = np.stack([np.concatenate([f[:, :n].mean(1), f[:, :n].std(1)])
                  for f, n in zip(features.astype(np.float64), frames, strict=True)])
    labels = synthetic_selection["label"].map(PAPER_CLASSES.index).to_numpy()
    folds = make_folds(synthetic_selection, protocol="session", n_folds=5, seed=0)
    predictions = pd.read_csv(out / "predictions.csv").set_index("utterance_id")
    for k, (train, test) in enumerate(folds, start=1):
        scaler = StandardScaler().fit(x[train])
        model = LogisticRegression(C=0.5, max_iter=5000).fit(scaler.transform(x[train]),
                                                             labels[train])
        probs = model.predict_proba(scaler.transform(x[test]))
        ids = synthetic_selection["utterance_id"].to_numpy()[test]
        written = predictions.loc[ids, [f"p_{c}" for c in PAPER_CLASSES]].to_numpy()
        np.testing.assert_allclose(written, probs, rtol=1e-6, atol=1e-9)
        ua = balanced_accuracy_score(labels[test], probs.argmax(1))
        assert summary["folds"][k - 1]["ua"] == pytest.approx(ua, abs=1e-12)


def test_mfcc_statistics_ignore_padding():
    rng = np.random.default_rng(0)
    clip = rng.normal(size=(1, 3, 10))
    padded = np.concatenate([clip, np.full((1, 3, 7), -80.0)], axis=-1)
    np.testing.assert_allclose(mfcc_statistics(padded, np.array([10])),
                               mfcc_statistics(clip, np.array([10])))


def test_speaker_normalised_logreg_sees_each_speaker_relative_to_itself():
    """Speakers far apart whose classes differ by the same shift around each speaker's own
    level: the per-speaker baseline learns the shift, and a test speaker scaled and shifted
    as a whole keeps every probability."""
    rng = np.random.default_rng(0)
    speakers = np.repeat([f"s{i}" for i in range(8)], 40)
    labels = np.tile(np.arange(4), 80)
    level = rng.normal(0, 5, size=(8, 6))                      # each speaker's own level
    x = level[np.repeat(np.arange(8), 40)] + 0.8 * np.eye(4, 6)[labels] \
        + rng.normal(0, 0.3, size=(320, 6))
    selection = pd.DataFrame({"label": np.array(PAPER_CLASSES)[labels], "speaker": speakers})
    z = speaker_standardise(x, speakers)
    for speaker in ("s0", "s7"):
        np.testing.assert_allclose(z[speakers == speaker].mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(z[speakers == speaker].std(0), 1, atol=1e-12)
    folds = [(np.flatnonzero(speakers != s), np.flatnonzero(speakers == s))
             for s in ("s0", "s1")]
    plain = fit_baseline_folds(selection, model="logreg", folds=folds, x=x)
    own = fit_baseline_folds(selection, model="logreg-speaker", folds=folds, x=x)
    ua = {name: np.mean([f["metrics"]["ua"] for f in result])
          for name, result in (("plain", plain), ("own", own))}
    assert ua["own"] > 0.9 and ua["own"] > ua["plain"] + 0.2, ua
    moved = x.copy()
    moved[speakers == "s0"] = x[speakers == "s0"] * 3.0 - 7.0
    again = fit_baseline_folds(selection, model="logreg-speaker", folds=folds[:1], x=moved)
    np.testing.assert_allclose(again[0]["probabilities"], own[0]["probabilities"], atol=1e-9)
    with pytest.raises(SerlibError, match="one per row"):
        speaker_standardise(x, speakers[:-1])


def test_unknown_model_is_refused(synthetic_selection, tmp_path):
    with pytest.raises(SerlibError, match="model='svm2'"):
        run_baseline(synthetic_selection, model="svm2", protocol="session", n_folds=5,
                     out_dir=tmp_path)


def test_egemaps_svm(synthetic_selection, tmp_path):
    pytest.importorskip("opensmile")
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    from serlib.baselines import egemaps_matrix

    summary = run_baseline(synthetic_selection, model="egemaps-svm", protocol="session",
                           n_folds=5, out_dir=tmp_path, progress=False)
    assert summary["feature"] == "egemaps" and summary["model"] == "egemaps-svm"
    for k in range(1, 6):
        assert torch.load(tmp_path / f"fold_{k}" / "checkpoint.pt",
                          weights_only=True)["model"]["support_vectors"].shape[1] == 88
    x, _ = egemaps_matrix(synthetic_selection)
    labels = synthetic_selection["label"].map(PAPER_CLASSES.index).to_numpy()
    train, test = make_folds(synthetic_selection, protocol="session", n_folds=5, seed=0)[0]
    scaler = StandardScaler().fit(x[train])
    svm = CalibratedClassifierCV(SVC(C=1.0, kernel="rbf"), cv=5, ensemble=False)
    probs = svm.fit(scaler.transform(x[train]), labels[train]).predict_proba(
        scaler.transform(x[test]))
    written = pd.read_csv(tmp_path / "fold_1" / "predictions.csv")
    np.testing.assert_allclose(written[[f"p_{c}" for c in PAPER_CLASSES]].to_numpy(), probs,
                               rtol=1e-6, atol=1e-9)


def test_cli_baseline(synthetic_selection, tmp_path, capsys):
    from serlib.cli import main
    from serlib.corpora import write_selection

    csv = write_selection(synthetic_selection, tmp_path / "selection.csv")
    assert main(["baseline", "--selection", str(csv), "--protocol", "session", "--folds", "5",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "UA" in capsys.readouterr().out
    assert (tmp_path / "run" / "summary.json").is_file()
