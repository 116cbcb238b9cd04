"""``serlib cv`` through the command line: one command from a selection CSV to results."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serlib.cli import main
from serlib.corpora import write_selection
from serlib.labels import PAPER_CLASSES

RUN_FILES = ("config.json", "summary.json", "predictions.csv", "history.csv")
FOLD_FILES = ("checkpoint.pt", "metrics.json", "predictions.csv", "history.csv")


pytestmark = pytest.mark.usefixtures("one_thread")   # torch on one thread (conftest.py)


def test_cv_command_and_rerun(synthetic_selection, tmp_path, capsys):
    selection = write_selection(synthetic_selection, tmp_path / "selection.csv")
    args = ["cv", "--selection", str(selection), "--feature", "mfcc", "--loss", "softmax",
            "--folds", "2", "--epochs", "1", "--width", "4", "--batch-size", "16",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--quiet",
            "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    n = len(synthetic_selection)
    assert f"mfcc + softmax loss, 2-fold stratified CV on generated ({n} utterances" in first
    assert "WA " in first and "UA " in first
    for name in RUN_FILES:
        assert (tmp_path / "run" / name).is_file()
    for k in (1, 2):
        for name in FOLD_FILES:
            assert (tmp_path / "run" / f"fold_{k}" / name).is_file()
    assert main(args) == 0  # finished: no training, same summary
    assert capsys.readouterr().out == first
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["amp"] is True


def test_cv_no_amp_is_recorded(synthetic_selection, tmp_path, capsys):
    selection = write_selection(synthetic_selection, tmp_path / "selection.csv")
    assert main(["cv", "--selection", str(selection), "--folds", "2", "--epochs", "1",
                 "--width", "4", "--batch-size", "16", "--out", str(tmp_path / "run"),
                 "--quiet", "--device", "cpu", "--no-amp"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["amp"] is False


def test_cv_strong_recipe_normalises_per_speaker_unless_told_otherwise(synthetic_selection,
                                                                        tmp_path):
    selection = write_selection(synthetic_selection, tmp_path / "selection.csv")
    common = ["cv", "--selection", str(selection), "--recipe", "strong", "--folds", "2",
              "--epochs", "1", "--width", "2", "--batch-size", "16", "--quiet",
              "--device", "cpu", "--cache", str(tmp_path / "cache")]
    for given, want in ((), "speaker"), (("--normalisation", "corpus"), "corpus"):
        out = tmp_path / f"run_{want}"
        assert main([*common, *given, "--out", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())["train"]
        assert config["normalisation"] == want and config["own_frames"] is True


def write_wav_selection(folder, *, n_speakers=6, per_speaker=8, sr=16000, speakers=None,
                        genders=None):
    """A hand-written selection CSV over short WAV files (tones whose pitch depends on the
    class), without sessions, like a manifest corpus. ``speakers`` (names, default
    ``spk0``...) and ``genders`` (one per speaker, default: no gender column)."""
    speakers = speakers or [f"spk{s}" for s in range(n_speakers)]
    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(int(0.4 * sr)) / sr
    for s, speaker in enumerate(speakers):
        for i in range(per_speaker):
            label = PAPER_CLASSES[i % 4]
            y = 0.3 * np.sin(2 * np.pi * 200 * (1 + i % 4) * t) + 0.01 * rng.normal(size=t.size)
            path = folder / f"{speaker}_{i}.wav"
            sf.write(path, y.astype(np.float32), sr, subtype="PCM_16")
            rows.append({"utterance_id": f"{speaker}_{i}", "path": str(path), "session": None,
                         "speaker": speaker, "label": label, "corpus": "manifest:tones",
                         **({"gender": genders[s]} if genders else {})})
    csv = folder / "selection.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def test_cv_on_a_hand_written_csv_groups_speakers(tmp_path, capsys):
    csv = write_wav_selection(tmp_path)
    out = tmp_path / "run"
    args = ["cv", "--selection", str(csv), "--feature", "mfcc", "--loss", "focal",
            "--gamma", "2", "--protocol", "session", "--folds", "3", "--epochs", "1",
            "--width", "4", "--batch-size", "8", "--seed", "1", "--out", str(out), "--quiet",
            "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3-fold session CV on manifest:tones (48 utterances" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "session" and summary["corpus"] == "manifest:tones"
    assert summary["gamma"] == 2.0 and len(summary["folds"]) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["protocol"] == "session" and config["selection"]["path"] == str(csv)
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 48
    # speaker-disjoint folds: every speaker is tested in exactly one fold
    assert (predictions.groupby("speaker")["fold"].nunique() == 1).all()
    for k in (1, 2, 3):
        metrics = json.loads((out / f"fold_{k}" / "metrics.json").read_text())
        assert metrics["fold"] == k and len(metrics["confusion"]) == 4
    assert main(args) == 0
    assert capsys.readouterr().out == printed


def test_cv_bad_selection(tmp_path, capsys):
    assert main(["cv", "--selection", str(tmp_path / "none.csv"), "--out",
                 str(tmp_path / "run")]) == 2
    assert "none.csv: selection CSV does not exist" in capsys.readouterr().err
