"""``serlib cv`` through the command line: one command from a selection CSV to results."""

from __future__ import annotations

from serlib.cli import main
from serlib.corpora import write_selection


def test_cv_command_and_rerun(synthetic_selection, tmp_path, capsys):
    selection = write_selection(synthetic_selection, tmp_path / "selection.csv")
    args = ["cv", "--selection", str(selection), "--feature", "mfcc", "--loss", "softmax",
            "--folds", "2", "--epochs", "1", "--width", "4", "--batch-size", "16",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--quiet",
            "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "mfcc + softmax loss, 2-fold stratified CV on generated (80 utterances" in first
    assert "WA " in first and "UA " in first
    for name in ("config.json", "summary.json", "predictions.csv", "history.csv",
                 "fold_1/metrics.json", "fold_2/checkpoint.pt"):
        assert (tmp_path / "run" / name).is_file()
    assert main(args) == 0  # finished: no training, same summary
    assert capsys.readouterr().out == first


def test_cv_bad_selection(tmp_path, capsys):
    assert main(["cv", "--selection", str(tmp_path / "none.csv"), "--out",
                 str(tmp_path / "run")]) == 2
    assert "none.csv: selection CSV does not exist" in capsys.readouterr().err
