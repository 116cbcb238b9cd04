"""serlib.calibration: calibration measures on constructed predictions, temperature scaling
fitted on validation predictions, and the temperature carried by prediction."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from serlib.calibration import (
    apply_temperature,
    brier_score,
    calibrate_run,
    calibration_metrics,
    classwise_ece,
    expected_calibration_error,
    fit_temperature,
    fold_temperatures,
    negative_log_likelihood,
    reliability_diagram,
)
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES


def calibrated(n: int = 40000, *, seed: int = 0, concentration: float = 0.7):
    """Probabilities from a Dirichlet and labels drawn from them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([concentration] * 4, size=n)                         # (n, 4)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)        # y ~ Cat(p)
    return p, np.minimum(y, 3)


def test_calibrated_probabilities_have_ece_near_zero_and_a_diagonal_diagram():
    p, y = calibrated()
    for binning in ("width", "mass"):
        assert expected_calibration_error(p, y, binning=binning) < 0.01
    assert classwise_ece(p, y) < 0.01
    diagram = reliability_diagram(p, y, n_bins=15)
    busy = diagram[diagram["count"] >= 500]
    assert len(busy) >= 8
    np.testing.assert_allclose(busy["accuracy"], busy["confidence"], atol=0.03)
    assert diagram["count"].sum() == len(y)


def test_a_sharpened_copy_is_overconfident_and_has_a_larger_ece():
    p, y = calibrated()
    sharp = apply_temperature(p, 0.4)
    assert expected_calibration_error(sharp, y) > expected_calibration_error(p, y) + 0.05
    assert classwise_ece(sharp, y) > classwise_ece(p, y) + 0.01
    diagram = reliability_diagram(sharp, y)
    busy = diagram[diagram["count"] >= 500]
    assert (busy["gap"] < 0).mean() > 0.8                  # accuracy below confidence
    assert negative_log_likelihood(sharp, y) > negative_log_likelihood(p, y)


def test_equal_mass_bins_hold_equal_numbers_of_clips():
    p, y = calibrated(n=3000)
    diagram = reliability_diagram(p, y, n_bins=10, binning="mass")
    assert len(diagram) == 10
    assert diagram["count"].max() - diagram["count"].min() <= 2


def test_brier_and_nll_by_hand():
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    y = np.array([0, 2])
    assert brier_score(p, y) == pytest.approx(((0.09 + 0.03) + (0.5625 + 3 * 0.0625)) / 2)
    assert negative_log_likelihood(p, y) == pytest.approx(-(np.log(0.7) + np.log(0.25)) / 2)
    with pytest.raises(SerlibError, match="sum to 1"):
        brier_score(p * 2, y)
    with pytest.raises(SerlibError, match="n_bins"):
        expected_calibration_error(p, y, n_bins=0)


def test_temperature_one_is_the_identity_and_the_argmax_never_moves():
    p, _ = calibrated(n=500, seed=1)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    for t in (0.3, 3.0):
        np.testing.assert_array_equal(apply_temperature(p, t).argmax(1), p.argmax(1))
    with pytest.raises(SerlibError, match="temperature"):
        apply_temperature(p, 0.0)


def test_the_fitted_temperature_lowers_validation_nll_and_undoes_a_sharpening():
    p, y = calibrated(n=20000, seed=2)
    sharp = apply_temperature(p, 0.5)
    t = fit_temperature(sharp, y)
    assert t == pytest.approx(2.0, rel=0.05)
    assert negative_log_likelihood(apply_temperature(sharp, t), y) < \
        negative_log_likelihood(sharp, y) - 0.05
    soft = apply_temperature(p, 2.0)
    assert fit_temperature(soft, y) == pytest.approx(0.5, rel=0.05)


# ----------------------------------------------------------------------------- on a run
@pytest.fixture(scope="module")
def tiny_run(synthetic_selection, tmp_path_factory):
    from serlib.training import TrainConfig, run_cross_validation

    out = tmp_path_factory.mktemp("cal") / "mfcc_focal"
    config = TrainConfig(feature="mfcc", loss="focal", folds=2, epochs=2, width=4,
                         batch_size=16, patience=0, device="cpu")
    run_cross_validation(synthetic_selection, config=config, out_dir=out, progress=False)
    return out


def test_runs_keep_validation_predictions_from_the_training_part(tiny_run):
    predictions = pd.read_csv(tiny_run / "predictions.csv")
    for k in (1, 2):
        val = pd.read_csv(tiny_run / f"fold_{k}" / "validation.csv")
        test_ids = set(predictions.loc[predictions["fold"] == k, "utterance_id"])
        assert len(val) > 0 and not set(val["utterance_id"]) & test_ids
        np.testing.assert_allclose(val[[f"p_{c}" for c in PAPER_CLASSES]].sum(axis=1), 1,
                                   atol=1e-5)
    folds = calibrate_run(tiny_run)
    assert [f.fold for f in folds] == [1, 2]
    for f in folds:
        assert f.temperature > 0 and f.after is not None
        assert f.validation_nll_after <= f.validation_nll_before + 1e-9
        assert f.after["accuracy"] == f.before["accuracy"]


def test_predictor_carries_each_folds_temperature(tiny_run, synthetic_selection):
    from serlib.inference import Predictor

    temperatures = fold_temperatures(tiny_run)
    predictions = pd.read_csv(tiny_run / "predictions.csv")
    paths = synthetic_selection.set_index("utterance_id")["path"]
    columns = [f"p_{c}" for c in PAPER_CLASSES]
    for k in (1, 2):
        predictor = Predictor.from_run(tiny_run, folds=[k])
        assert predictor.temperatures == [pytest.approx(temperatures[k])]
        rows = predictions[predictions["fold"] == k].head(3)
        want = apply_temperature(rows[columns].to_numpy(), temperatures[k])
        got = np.stack([predictor.predict_file(paths[u], long="cut").probabilities
                        for u in rows["utterance_id"]])
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_old_run_folders_are_measured_but_not_scaled(tiny_run, tmp_path):
    from serlib.inference import Predictor

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    for k in (1, 2):
        (old / f"fold_{k}" / "validation.csv").unlink()
    folds = calibrate_run(old)
    assert all(f.after is None and f.temperature is None for f in folds)
    assert folds[0].before == calibrate_run(tiny_run)[0].before
    with pytest.raises(SerlibError, match="validation.csv: missing, so no temperature"):
        fold_temperatures(old)
    assert Predictor.from_run(old).temperatures is None


def test_calibration_metrics_keys():
    p, y = calibrated(n=200)
    assert set(calibration_metrics(p, y)) == {"ece", "ece_mass", "classwise_ece", "brier",
                                              "nll", "accuracy"}


def test_onnx_export_carries_the_fitted_temperatures(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from serlib.inference import Predictor

    torch_predictor = Predictor.from_run(tiny_run)
    meta = torch_predictor.to_onnx(tmp_path / "m.onnx")
    assert meta["temperatures"] == pytest.approx(list(fold_temperatures(tiny_run).values()))
    assert meta["max_abs_diff"] < 1e-4
    onnx_predictor = Predictor.from_onnx(tmp_path / "m.onnx")
    raw = Predictor.from_run(tiny_run, calibrated=False)
    features = np.random.default_rng(0).normal(size=(3, *raw.feature_config.shape)) * 10
    scaled = onnx_predictor.predict_features(features)
    np.testing.assert_allclose(scaled, torch_predictor.predict_features(features), atol=1e-4)
    assert not np.allclose(scaled, raw.predict_features(features), atol=1e-4)


def test_paired_verdicts_and_their_intervals_agree():
    from serlib.calibration_report import paired_test

    rng = np.random.default_rng(0)
    lower = paired_test(-0.05 + 0.01 * rng.standard_normal(10), test_train_ratio=0.25,
                        direction=-1)
    assert lower.verdict == "agrees" and lower.interval[1] < 0
    higher = paired_test(0.05 + 0.01 * rng.standard_normal(10), test_train_ratio=0.25,
                         direction=-1)
    assert higher.verdict == "contradicts" and higher.interval[0] > 0
    noise = paired_test(0.05 * rng.standard_normal(10), test_train_ratio=0.25, direction=-1)
    assert noise.verdict == "inconclusive"
    assert noise.interval[0] < 0 < noise.interval[1]
    assert noise.detectable > 0


@pytest.mark.slow
def test_focal_against_softmax_pairs_on_folds(tiny_run, synthetic_selection, tmp_path):
    from serlib.calibration_report import calibration_verdict
    from serlib.results import load_run
    from serlib.training import TrainConfig, run_cross_validation

    softmax = tmp_path / "mfcc_softmax"
    run_cross_validation(synthetic_selection, config=TrainConfig(
        feature="mfcc", loss="softmax", folds=2, epochs=2, width=4, batch_size=16,
        patience=0, device="cpu"), out_dir=softmax, progress=False)
    for scaled in (False, True):
        test = calibration_verdict([load_run(softmax)], [load_run(tiny_run)], scaled=scaled)
        assert test.n == 2 and test.verdict in ("agrees", "contradicts", "inconclusive")
    other_folds = tmp_path / "three_folds"
    run_cross_validation(synthetic_selection, config=TrainConfig(
        feature="mfcc", loss="softmax", folds=3, epochs=1, width=4, batch_size=16,
        patience=0, device="cpu"), out_dir=other_folds, progress=False)
    with pytest.raises(SerlibError, match="cannot pair"):
        calibration_verdict([load_run(other_folds)], [load_run(tiny_run)])
