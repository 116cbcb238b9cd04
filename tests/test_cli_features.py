"""``serlib features`` through serlib.cli.main."""

from __future__ import annotations

import numpy as np
import pandas as pd
import soundfile as sf

from serlib.cli import main
from serlib.features import FeatureConfig


def make_selection(tmp_path, n: int = 4):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(8000 + 2000 * i)).astype(np.float32), 16000)
        # every column of the selection table (contract), so that read_selection accepts it
        rows.append({
            "utterance_id": f"u{i}", "path": str(path), "session": 1, "speaker": "Ses01F",
            "gender": "F", "dialog": "Ses01F_impro01", "improvised": True, "label": "anger",
            "raw_label": "ang", "n_agree": 3, "duration_s": 0.5 + i / 8, "start_s": 0.0,
            "end_s": 0.5 + i / 8, "corpus": "generated",
        })
    csv = tmp_path / "selection.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def test_features_command_computes_then_reuses(tmp_path, capsys):
    csv = make_selection(tmp_path)
    out = tmp_path / "features"
    args = ["features", "--selection", str(csv), "--kind", "mfcc", "--out", str(out), "--quiet",
            "--jobs", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    store = out / FeatureConfig.preset("mfcc").fingerprint()
    assert "computed 4, reused 0" in text and str(store) in text
    assert (store / "index-float32.json").is_file()
    assert main(args + ["--float16"]) == 0
    assert (store / "index-float16.json").is_file()
    assert main(args) == 0
    assert "computed 0, reused 4" in capsys.readouterr().out


def test_features_command_bad_file(tmp_path, capsys):
    csv = make_selection(tmp_path, n=2)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk" * 50)
    table = pd.read_csv(csv)
    table.loc[len(table)] = {**table.iloc[0].to_dict(), "utterance_id": "bad", "path": str(bad)}
    table.to_csv(csv, index=False)
    args = ["features", "--selection", str(csv), "--kind", "spectrogram", "--out",
            str(tmp_path / "f"), "--quiet", "--jobs", "1"]
    assert main(args) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(args + ["--skip-errors"]) == 0
    text = capsys.readouterr().out
    assert "skipped 1" in text and str(bad) in text


def test_features_command_bad_selection(tmp_path, capsys):
    csv = tmp_path / "selection.csv"
    pd.DataFrame({"path": ["a.wav"]}).to_csv(csv, index=False)
    args = ["features", "--selection", str(csv), "--kind", "mfcc", "--out", str(tmp_path / "f")]
    assert main(args) == 2
    assert "utterance_id" in capsys.readouterr().err
    assert main(["features", "--selection", str(tmp_path / "none.csv"), "--kind", "mfcc",
                 "--out", str(tmp_path / "f")]) == 2
    assert "none.csv" in capsys.readouterr().err
