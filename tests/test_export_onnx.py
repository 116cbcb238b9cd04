"""ONNX export of the runs the book recommends: own-frame, mean+std-pooled strong-recipe runs
and seed ensembles; the ONNX predictor equals the torch predictor on the run's test clips."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from serlib.cli import main
from serlib.features import extract_file
from serlib.inference import Predictor
from serlib.training import TrainConfig, run_cross_validation

pytestmark = pytest.mark.usefixtures("one_thread")   # torch on one thread (conftest.py)


def strong_run(selection, out, **overrides):
    config = TrainConfig.from_recipe("strong", folds=2, epochs=1, width=4, batch_size=16,
                                     device="cpu", **overrides)
    assert config.own_frames and config.pooling == "meanstd"
    assert config.normalisation == overrides.get("normalisation", "speaker")
    run_cross_validation(selection, config=config, out_dir=out, progress=False)
    return out


def speaker_of(predictor, selection, utterance_id):
    """``predictor`` for the speaker of ``utterance_id``: a run normalised per speaker gets
    every recording of that speaker (as training normalised the clip); others as they are."""
    if predictor.input_normalisation != "speaker":
        return predictor
    table = selection.set_index("utterance_id")
    own = table["speaker"] == table.loc[utterance_id, "speaker"]
    return predictor.for_speaker(table.loc[own, "path"])


@pytest.fixture(scope="module")
def strong_runs(synthetic_selection, tmp_path_factory):
    """A tiny own-frame strong-recipe run, and a 2-seed ensemble of it, by seed_ensemble."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    return {n: strong_run(synthetic_selection, tmp_path_factory.mktemp(f"strong{n}"),
                          seed_ensemble=n) for n in (1, 2)}


def test_run_without_a_validation_part_writes_none_and_predicts_uncalibrated(
        synthetic_selection, tmp_path):
    """val_fraction=0: every training clip is fitted on, no fold has validation.csv, and the
    predictor (torch and ONNX) is the uncalibrated one instead of failing."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from serlib.calibration import has_validation, read_validation
    from serlib.errors import SerlibError

    run_dir = strong_run(synthetic_selection, tmp_path / "whole", val_fraction=0)
    assert not has_validation(run_dir)
    assert not list(run_dir.glob("fold_*/validation.csv"))
    metrics = json.loads((run_dir / "fold_1" / "metrics.json").read_text())
    assert metrics["n_val"] == 0
    with pytest.raises(SerlibError, match="without a validation part"):
        read_validation(run_dir, 1)
    first = synthetic_selection["utterance_id"].iloc[0]
    calibrated, raw = (speaker_of(Predictor.from_run(run_dir, calibrated=c), synthetic_selection,
                                  first) for c in (True, False))
    path = synthetic_selection["path"].iloc[0]
    np.testing.assert_array_equal(calibrated.predict_file(path).probabilities,
                                  raw.predict_file(path).probabilities)
    onnx = tmp_path / "whole.onnx"
    assert main(["export", "--run", str(run_dir), "--onnx", str(onnx)]) == 0
    exported = speaker_of(Predictor.from_onnx(onnx), synthetic_selection, first)
    np.testing.assert_allclose(exported.predict_file(path).probabilities,
                               raw.predict_file(path).probabilities, atol=1e-5)


@pytest.mark.parametrize("seed_ensemble", [1, 2])
def test_own_frame_strong_run_exports_and_equals_torch(synthetic_selection, strong_runs,
                                                       tmp_path, seed_ensemble):
    run_dir = strong_runs[seed_ensemble]
    path = tmp_path / "strong.onnx"
    assert main(["export", "--run", str(run_dir), "--onnx", str(path)]) == 0
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["lengths"]["name"] == "lengths" and meta["format_version"] == 2
    assert meta["train_config"]["seed_ensemble"] == seed_ensemble
    # normalised per speaker outside the graph, as Predictor.from_onnx does
    assert meta["input_normalisation"] == "speaker" and meta["input"]["normalised"]

    # the run's test clips, at their own lengths (short clips: most of the matrix is padding)
    tested = pd.read_csv(run_dir / "predictions.csv")["utterance_id"]
    # one speaker's statistics for every clip (a speaker run), the same for both predictors
    torch_predictor, onnx_predictor = (speaker_of(p, synthetic_selection, tested.iloc[0])
                                       for p in (Predictor.from_run(run_dir),
                                                 Predictor.from_onnx(path)))
    rows = synthetic_selection.set_index("utterance_id").loc[tested]
    features = np.stack([extract_file(p, config=torch_predictor.feature_config)
                         for p in rows["path"]])
    durations = rows["duration_s"].to_numpy()
    want = torch_predictor.predict_features(features, durations_s=durations)
    got = onnx_predictor.predict_features(features, durations_s=durations)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(onnx_predictor.speaker[0], torch_predictor.speaker[0])
    # the lengths matter: the same matrices seen whole give other probabilities
    whole = onnx_predictor.predict_features(features)
    assert np.abs(whole - got).max() > 1e-3
    np.testing.assert_allclose(whole, torch_predictor.predict_features(features), atol=1e-5,
                               rtol=0)


def test_one_fold_of_an_own_frame_run_reproduces_its_test_predictions(synthetic_selection,
                                                                      strong_runs, tmp_path):
    """The exported fold model, uncalibrated, gives the run's own test probabilities
    (predictions.csv)."""
    run_dir = strong_runs[1]
    path = tmp_path / "fold1.onnx"
    assert main(["export", "--run", str(run_dir), "--onnx", str(path), "--folds", "1",
                 "--uncalibrated"]) == 0
    exported = Predictor.from_onnx(path)
    predictions = pd.read_csv(run_dir / "predictions.csv")
    rows = predictions[predictions["fold"] == 1]
    paths = synthetic_selection.set_index("utterance_id")["path"]
    for row in rows.head(4).itertuples():
        predictor = speaker_of(exported, synthetic_selection, row.utterance_id)
        got = predictor.predict_file(paths[row.utterance_id], long="cut").probabilities
        want = [getattr(row, f"p_{c}") for c in predictor.class_names]
        np.testing.assert_allclose(got, want, atol=1e-5)

