"""``serlib synth`` and ``serlib select`` through the command line."""

from __future__ import annotations

import subprocess
import sys

from serlib.cli import main
from serlib.corpora import read_selection


def test_synth_then_select(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "gen"), "--size", "tiny", "--quiet"]) == 0
    assert "80 in the paper's selection" in capsys.readouterr().out
    out = tmp_path / "selection.csv"
    root = tmp_path / "gen" / "IEMOCAP_full_release"
    assert main(["select", "--iemocap", str(root), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "80 of" in printed and "(generated)" in printed and "class shares" in printed
    selection = read_selection(out)
    assert len(selection) == 80
    assert set(selection["label"]) == {"neutral", "happiness", "sadness", "anger"}
    # options reach the selection
    assert main(["select", "--iemocap", str(root), "--out", str(out), "--min-agree", "1",
                 "--scripted", "--quiet"]) == 0
    assert len(read_selection(out)) > 80


def test_select_error_names_the_file(tmp_path, capsys):
    assert main(["select", "--iemocap", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "serlib select: error:" in err and "missing" in err
    assert not (tmp_path / "s.csv").exists()


def test_select_manifest(emodb_manifest, tmp_path, capsys):
    out = tmp_path / "emodb.csv"
    assert main(["select", "--manifest", str(emodb_manifest), "--out", str(out)]) == 0
    assert "339 of 535 utterances (manifest:emodb)" in capsys.readouterr().out


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "serlib", "--help"], capture_output=True,
                            text=True, check=True)
    for command in ("synth", "select", "features", "cv", "book"):
        assert command in result.stdout
