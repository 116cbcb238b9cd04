"""``serlib synth`` and ``serlib select`` through the command line."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from serlib.cli import main
from serlib.corpora import read_selection
from serlib.labels import PAPER_CLASSES


def wav_digest(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.wav")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_synth_then_select(synthetic_root, tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "gen"), "--size", "tiny", "--seed", "1",
                 "--quiet"]) == 0
    root = tmp_path / "gen" / "IEMOCAP_full_release"
    printed = capsys.readouterr().out
    assert f"wrote {root}:" in printed and "80 in the paper's selection" in printed
    assert wav_digest(root) != wav_digest(synthetic_root)  # another seed, other audio

    out = tmp_path / "selection.csv"
    assert main(["select", "--iemocap", str(root), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "80 of" in printed and "(generated)" in printed and "class shares" in printed
    assert "session" in printed and "all" in printed  # the class x session summary
    selection = read_selection(out)
    assert len(selection) == 80
    assert set(selection["label"]) == set(PAPER_CLASSES)
    # options reach the selection
    assert main(["select", "--iemocap", str(tmp_path / "gen"), "--out", str(out),
                 "--min-agree", "1", "--scripted", "--merge-excited", "--max-seconds", "3",
                 "--quiet"]) == 0
    wider = read_selection(out)
    assert len(wider) > 80 and (~wider["improvised"]).any()
    assert (wider["raw_label"] == "exc").any()
    assert wider["longer_than_max"].equals(wider["duration_s"] > 3)


def test_select_error_names_the_file(tmp_path, capsys):
    assert main(["select", "--iemocap", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "serlib select: error:" in err and str(tmp_path / "missing") in err
    assert not (tmp_path / "s.csv").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.wav,anger\n")
    assert main(["select", "--manifest", str(bad), "--out", str(tmp_path / "s.csv")]) == 2
    assert "bad.csv: missing column(s) speaker" in capsys.readouterr().err


def test_select_manifest(emodb_manifest, tmp_path, capsys):
    out = tmp_path / "emodb.csv"
    assert main(["select", "--manifest", str(emodb_manifest), "--out", str(out)]) == 0
    assert "339 of 535 utterances (manifest:emodb)" in capsys.readouterr().out
    counts = read_selection(out)["label"].value_counts().to_dict()
    assert counts == {"anger": 127, "neutral": 79, "happiness": 71, "sadness": 62}


def test_python_dash_m_select(synthetic_root, tmp_path):
    out = tmp_path / "selection.csv"
    result = subprocess.run(
        [sys.executable, "-m", "serlib", "select", "--iemocap", str(synthetic_root),
         "--out", str(out), "--quiet"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "80 of" in result.stdout
    assert len(read_selection(out)) == 80
