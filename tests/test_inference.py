"""serlib.inference and the predict/export commands, on a tiny finished run of the generated
corpus (trained once per module)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from serlib.cli import main
from serlib.corpora.speech import synthesize_speech
from serlib.errors import SerlibError
from serlib.features import FeatureConfig, extract_file
from serlib.inference import Predictor
from serlib.training import TrainConfig, run_cross_validation

SR = 16000


@pytest.fixture(scope="module")
def tiny_run(synthetic_selection, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "mfcc_focal"
    config = TrainConfig(feature="mfcc", loss="focal", folds=2, epochs=1, width=4,
                         batch_size=16, patience=0, device="cpu")
    run_cross_validation(synthetic_selection, config=config, out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    """A 30-s recording (six 5-s utterances), a 1-s one, a 3-s one, and a corrupt file."""
    folder = tmp_path_factory.mktemp("recordings")
    emotions = ["neutral", "anger", "sadness", "happiness", "neutral", "anger"]
    long = np.concatenate([synthesize_speech(duration_s=5.0, emotion=e, seed=k, sample_rate=SR)
                           for k, e in enumerate(emotions)])
    files = {"long": folder / "long_30s.wav", "one": folder / "one_second.wav",
             "three": folder / "three_seconds.wav", "corrupt": folder / "corrupt.wav"}
    sf.write(files["long"], long, SR)
    sf.write(files["one"], synthesize_speech(duration_s=1.0, sample_rate=SR, seed=7), SR)
    sf.write(files["three"], synthesize_speech(duration_s=3.0, emotion="sadness",
                                               sample_rate=SR, seed=8), SR)
    files["corrupt"].write_bytes(b"RIFF\x10\x00\x00\x00WAVEthis is not audio")
    return files


def _p_columns(names):
    return [f"p_{c}" for c in names]


# ----------------------------------------------------------------------------- consistency
def test_each_fold_reproduces_the_runs_test_predictions(tiny_run, synthetic_selection):
    predictions = pd.read_csv(tiny_run / "predictions.csv")
    path_of = dict(zip(synthetic_selection["utterance_id"], synthetic_selection["path"],
                       strict=True))
    duration_of = dict(zip(synthetic_selection["utterance_id"],
                           synthetic_selection["duration_s"], strict=True))
    n_short = 0
    for fold in sorted(predictions["fold"].unique()):
        predictor = Predictor.from_run(tiny_run, folds=[int(fold)], calibrated=False)
        rows = predictions[predictions["fold"] == fold]
        assert len(rows) > 0
        for row in rows.itertuples(index=False):
            expected = np.array([getattr(row, c) for c in _p_columns(predictor.class_names)])
            path = path_of[row.utterance_id]
            got = predictor.predict_file(path, long="cut")
            np.testing.assert_allclose(got.probabilities, expected, atol=1e-5, rtol=0)
            assert got.predicted == row.predicted
            if duration_of[row.utterance_id] <= 6.0 and n_short < 6:
                # a clip within the model input is one window: the default mode agrees
                n_short += 1
                windowed = predictor.predict_file(path)
                assert windowed.n_windows == 1
                np.testing.assert_allclose(windowed.probabilities, expected, atol=1e-5,
                                           rtol=0)
    assert n_short > 0


def test_ensemble_is_the_mean_of_the_fold_models(tiny_run, recordings):
    ensemble = Predictor.from_run(tiny_run)
    assert ensemble.folds == [1, 2]
    folds = [Predictor.from_run(tiny_run, folds=[k]) for k in (1, 2)]
    for name in ("three", "long"):
        want = np.mean([p.predict_file(recordings[name]).windows[
            _p_columns(p.class_names)].to_numpy() for p in folds], axis=0)
        got = ensemble.predict_file(recordings[name])
        np.testing.assert_allclose(got.windows[_p_columns(got.class_names)].to_numpy(), want,
                                   atol=1e-6)


def test_features_and_normalisation_are_the_runs(tiny_run, recordings):
    # uncalibrated: the softmax of the logits as trained (no fitted temperature)
    predictor = Predictor.from_run(tiny_run, folds=[1], calibrated=False)
    config = json.loads((tiny_run / "config.json").read_text())
    assert predictor.feature_config == FeatureConfig.from_dict(config["features"])
    # by hand: the fold's checkpoint, its normalisation, softmax of the logits
    checkpoint = torch.load(tiny_run / "fold_1" / "checkpoint.pt", weights_only=True)
    from serlib.training import load_checkpoint

    model, _ = load_checkpoint(tiny_run / "fold_1" / "checkpoint.pt")
    features = extract_file(recordings["three"], config=predictor.feature_config)
    x = (features - checkpoint["mean"].numpy()[:, None]) / checkpoint["std"].numpy()[:, None]
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)[None, None]), dim=-1)[0].numpy()
    np.testing.assert_allclose(predictor.predict_file(recordings["three"]).probabilities,
                               want, atol=1e-5)


# ----------------------------------------------------------------------------- windows
def test_long_recording_is_windowed(tiny_run, recordings):
    predictor = Predictor.from_run(tiny_run)
    window, hop = 6.0, 3.0
    prediction = predictor.predict_file(recordings["long"])
    assert prediction.duration_s == pytest.approx(30.0)
    # the documented count: 1 + ceil((D - W) / H)
    assert prediction.n_windows == 1 + math.ceil((30.0 - window) / hop)
    np.testing.assert_allclose(prediction.windows["start_s"], np.arange(prediction.n_windows)
                               * hop)
    np.testing.assert_allclose(prediction.windows["end_s"],
                               np.minimum(prediction.windows["start_s"] + window, 30.0))
    rows = prediction.windows[_p_columns(prediction.class_names)].to_numpy()
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(prediction.probabilities, rows.mean(axis=0), atol=1e-6)
    # windows see different audio: not all rows alike
    assert np.ptp(rows, axis=0).max() > 1e-4
    # a window of the recording is the prediction of that stretch on its own
    y, sr = sf.read(recordings["long"], dtype="float32")
    cut = predictor.predict_waveform(y, sample_rate=sr, long="cut")
    np.testing.assert_allclose(cut.probabilities, rows[0], atol=1e-4)

    wide = Predictor.from_run(tiny_run, hop_seconds=6.0).predict_file(recordings["long"])
    assert wide.n_windows == 1 + math.ceil((30.0 - window) / 6.0)


def test_short_recording_is_one_padded_window(tiny_run, recordings):
    prediction = Predictor.from_run(tiny_run).predict_file(recordings["one"])
    assert prediction.n_windows == 1
    assert prediction.windows["start_s"].tolist() == [0.0]
    assert prediction.windows["end_s"].iloc[0] == pytest.approx(1.0)
    assert prediction.duration_s == pytest.approx(1.0)


def test_bad_arguments_are_refused(tiny_run, recordings):
    with pytest.raises(SerlibError, match="folds"):
        Predictor.from_run(tiny_run, folds=[3])
    with pytest.raises(SerlibError, match="hop_seconds"):
        Predictor.from_run(tiny_run, hop_seconds=7.0)
    predictor = Predictor.from_run(tiny_run, folds=[1])
    with pytest.raises(SerlibError, match="long="):
        predictor.predict_file(recordings["one"], long="first")
    with pytest.raises(SerlibError, match="corrupt.wav"):
        predictor.predict_file(recordings["corrupt"])
    with pytest.raises(SerlibError, match="NaN"):
        predictor.predict_waveform(np.full(SR, np.nan, dtype=np.float32), sample_rate=SR)


def _copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


def test_unfinished_run_needs_explicit_folds(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "run")
    (run / "fold_2" / "metrics.json").unlink()
    with pytest.raises(SerlibError, match=r"fold\(s\) \[2\]"):
        Predictor.from_run(run)
    assert Predictor.from_run(run, folds=[1]).folds == [1]


class _Payload:
    """Unpickling this would create the marker file (code execution)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_crafted_pickle_checkpoint_is_refused(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "run")
    marker = tmp_path / "code_was_run"
    checkpoint = torch.load(run / "fold_1" / "checkpoint.pt", weights_only=True)
    checkpoint["metrics"] = _Payload(marker)
    torch.save(checkpoint, run / "fold_1" / "checkpoint.pt")
    with pytest.raises(SerlibError, match="weights-only"):
        Predictor.from_run(run, folds=[1])
    assert not marker.exists()
    # the same object unpickled without weights_only does run the code: the test can fail
    torch.load(run / "fold_1" / "checkpoint.pt", weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def onnx_model(tiny_run, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", "--run", str(tiny_run), "--onnx", str(path)]) == 0
    return path


def test_onnx_equals_torch(tiny_run, onnx_model, recordings, synthetic_selection):
    torch_predictor = Predictor.from_run(tiny_run)
    onnx_predictor = Predictor.from_onnx(onnx_model)
    assert onnx_predictor.class_names == torch_predictor.class_names
    assert onnx_predictor.feature_config == torch_predictor.feature_config
    paths = list(synthetic_selection["path"][:12])
    features = np.stack([extract_file(p, config=torch_predictor.feature_config)
                         for p in paths])                         # (12, F, T)
    np.testing.assert_allclose(onnx_predictor.predict_features(features),
                               torch_predictor.predict_features(features), atol=1e-4, rtol=0)
    for name in ("long", "one"):
        got = onnx_predictor.predict_file(recordings[name])
        want = torch_predictor.predict_file(recordings[name])
        assert got.n_windows == want.n_windows
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-4, rtol=0)


def test_onnx_description_holds_features_normalisation_and_classes(tiny_run, onnx_model):
    meta = json.loads(onnx_model.with_suffix(".json").read_text())
    config = json.loads((tiny_run / "config.json").read_text())
    assert meta["features"] == config["features"]
    assert meta["folds"] == [1, 2]
    assert meta["input"]["shape"] == ["batch", 1, 40, 259]
    for k in (1, 2):
        checkpoint = torch.load(tiny_run / f"fold_{k}" / "checkpoint.pt", weights_only=True)
        assert meta["class_names"] == checkpoint["class_names"]
        np.testing.assert_allclose(meta["normalisation"]["per_fold"][str(k)]["mean"],
                                   checkpoint["mean"].numpy())
        np.testing.assert_allclose(meta["normalisation"]["per_fold"][str(k)]["std"],
                                   checkpoint["std"].numpy())


def test_ensemble_run_exports_to_onnx(synthetic_selection, tmp_path):
    """An ensemble per fold (mean probabilities of its members) exports and predicts alike."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    config = TrainConfig(feature="mfcc", loss="focal", folds=2, epochs=1, width=4,
                         batch_size=16, patience=0, device="cpu", ensemble=2)
    run_dir = tmp_path / "ensemble"
    run_cross_validation(synthetic_selection, config=config, out_dir=run_dir, progress=False)
    path = tmp_path / "ensemble.onnx"
    assert main(["export", "--run", str(run_dir), "--onnx", str(path)]) == 0
    paths = list(synthetic_selection["path"][:6])
    want = Predictor.from_run(run_dir)
    features = np.stack([extract_file(p, config=want.feature_config) for p in paths])
    np.testing.assert_allclose(Predictor.from_onnx(path).predict_features(features),
                               want.predict_features(features), atol=1e-4, rtol=0)


def test_onnx_needs_its_description(onnx_model, tmp_path):
    lone = tmp_path / "lone.onnx"
    shutil.copy(onnx_model, lone)
    with pytest.raises(SerlibError, match="lone.json"):
        Predictor.from_onnx(lone)


# ----------------------------------------------------------------------------- commands
def test_predict_command_reports_a_corrupt_file_and_predicts_the_rest(tiny_run, recordings,
                                                                      tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    folder = recordings["long"].parent
    code = main(["predict", "--run", str(tiny_run), str(folder), "--out", str(out),
                 "--quiet"])
    assert code != 0
    err = capsys.readouterr().err
    assert str(recordings["corrupt"]) in err
    table = pd.read_csv(out)
    names = [Path(p).name for p in table["path"]]
    assert names == sorted(p.name for k, p in recordings.items() if k != "corrupt")
    assert list(table.columns) == ["path", "predicted", "p_neutral", "p_happiness",
                                   "p_sadness", "p_anger", "duration_s", "windows"]
    long_row = table[table["path"] == str(recordings["long"])].iloc[0]
    assert long_row["windows"] == 9
    direct = Predictor.from_run(tiny_run).predict_file(recordings["long"])
    np.testing.assert_allclose(long_row[_p_columns(direct.class_names)].to_numpy(float),
                               direct.probabilities, atol=1e-6)


def test_predict_command_windows_as_json(tiny_run, recordings, tmp_path):
    out = tmp_path / "windows.json"
    code = main(["predict", "--run", str(tiny_run), str(recordings["long"]),
                 str(recordings["one"]), "--windows", "--folds", "1", "--out", str(out),
                 "--quiet"])
    assert code == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 9 + 1
    assert [r["window"] for r in rows] == [*range(9), 0]
    assert rows[8]["start_s"] == pytest.approx(24.0) and rows[8]["end_s"] == pytest.approx(30.0)


def test_predict_command_refuses_an_unknown_output_format(tiny_run, recordings, tmp_path,
                                                          capsys):
    code = main(["predict", "--run", str(tiny_run), str(recordings["one"]),
                 "--out", str(tmp_path / "p.xlsx")])
    assert code == 2
    assert "p.xlsx" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "p.xlsx")


@pytest.mark.parametrize("ensemble", [1, 2])
def test_own_frame_recipe_run_is_predicted_as_trained(tmp_path, synthetic_selection, ensemble):
    """A run trained on each clip's own frames (masked convolutions, mean+std pooling,
    per-utterance normalisation; one network or an ensemble per fold) is predicted from its
    files exactly as training predicted."""
    from serlib.inference import Predictor
    from serlib.training import TrainConfig, run_cross_validation

    config = TrainConfig(feature="mfcc", loss="focal", folds=2, epochs=1, width=4,
                         batch_size=16, patience=0, device="cpu", own_frames=True,
                         pooling="meanstd", normalisation="utterance", ensemble=ensemble)
    run_dir = tmp_path / "own"
    run_cross_validation(synthetic_selection, config=config, out_dir=run_dir, progress=False)
    predictions = pd.read_csv(run_dir / "predictions.csv")
    paths = synthetic_selection.set_index("utterance_id")["path"]
    for fold in (1, 2):
        predictor = Predictor.from_run(run_dir, folds=[fold], calibrated=False)
        rows = predictions[predictions["fold"] == fold].head(6)
        for row in rows.itertuples():
            got = predictor.predict_file(paths[row.utterance_id], long="cut").probabilities
            want = [getattr(row, f"p_{c}") for c in predictor.class_names]
            np.testing.assert_allclose(got, want, atol=1e-5)
    if ensemble == 1 and importlib.util.find_spec("onnxruntime") \
            and importlib.util.find_spec("onnxscript"):
        # normalised per utterance outside the graph, as the torch predictor does
        exported = Predictor.from_run(run_dir).to_onnx(tmp_path / "m.onnx")
        assert exported["input_normalisation"] == "utterance" and exported["max_abs_diff"] < 1e-5
        path = paths[predictions["utterance_id"].iloc[0]]
        np.testing.assert_allclose(
            Predictor.from_onnx(tmp_path / "m.onnx").predict_file(path).probabilities,
            Predictor.from_run(run_dir).predict_file(path).probabilities, atol=1e-5)


def test_speaker_normalised_run_is_predicted_from_the_speakers_recordings(
        tmp_path, synthetic_selection, tiny_run, capsys):
    """A run trained with normalisation='speaker' predicts a clip as training did once it is
    given every recording of the clip's speaker (serlib predict --speaker-reference), and
    refuses to predict without them."""
    from serlib.inference import Predictor
    from serlib.training import TrainConfig, run_cross_validation

    config = TrainConfig.from_recipe("strong", folds=2, epochs=1, width=4, batch_size=16,
                                     device="cpu", normalisation="speaker")
    run_dir = tmp_path / "speaker"
    run_cross_validation(synthetic_selection, config=config, out_dir=run_dir, progress=False)
    predictions = pd.read_csv(run_dir / "predictions.csv")
    table = synthetic_selection.set_index("utterance_id")
    speaker = table.loc[predictions["utterance_id"].iloc[0], "speaker"]
    own = table.index[table["speaker"] == speaker]
    predictor = Predictor.from_run(run_dir, folds=[1], calibrated=False)
    with pytest.raises(SerlibError, match="for_speaker"):
        predictor.predict_file(table.loc[own[0], "path"])
    with pytest.raises(SerlibError, match="no recording"):
        predictor.for_speaker([])
    mine = predictor.for_speaker(table.loc[own, "path"])
    rows = predictions[(predictions["fold"] == 1) & predictions["utterance_id"].isin(own)]
    assert len(rows)
    for row in rows.itertuples():
        got = mine.predict_file(table.loc[row.utterance_id, "path"], long="cut").probabilities
        want = [getattr(row, f"p_{c}") for c in predictor.class_names]
        np.testing.assert_allclose(got, want, atol=1e-5)
    # another speaker's statistics give other probabilities
    clip = str(table.loc[rows["utterance_id"].iloc[0], "path"])
    other = table.index[table["speaker"] != speaker][:8]
    moved = predictor.for_speaker(table.loc[other, "path"]).predict_file(clip, long="cut")
    assert np.abs(moved.probabilities - mine.predict_file(clip, long="cut").probabilities
                  ).max() > 1e-4
    with pytest.raises(SerlibError, match="std has 1 value"):
        predictor.with_speaker_statistics(mean=np.zeros(predictor.feature_config.n_features),
                                          std=np.r_[0.0, np.ones(
                                              predictor.feature_config.n_features - 1)])
    # the command line: refused without the reference, the run's probabilities with it
    assert main(["predict", "--run", str(run_dir), "--folds", "1", "--uncalibrated",
                 "--quiet", clip]) == 2
    assert "--speaker-reference" in capsys.readouterr().err
    # a run normalised otherwise refuses speaker recordings before reading any
    with pytest.raises(SerlibError, match="takes no speaker recordings"):
        Predictor.from_run(tiny_run).for_speaker(["never-read.wav"])
    out = tmp_path / "p.csv"
    assert main(["predict", "--run", str(run_dir), "--folds", "1", "--uncalibrated", "--quiet",
                 clip, "--out", str(out), "--speaker-reference",
                 *map(str, table.loc[own, "path"])]) == 0
    first = rows.iloc[0]
    np.testing.assert_allclose(pd.read_csv(out)[[f"p_{c}" for c in predictor.class_names]]
                               .to_numpy()[0],
                               [first[f"p_{c}"] for c in predictor.class_names], atol=1e-5)
