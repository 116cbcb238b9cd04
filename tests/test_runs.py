"""Run folders that nothing wedges: checks before writing, damaged folds retrained, locks,
a guard against training that learns nothing (issue 10, findings 1, 2, 4, 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import serlib.training as training
from serlib import runs
from serlib.cli import main
from serlib.errors import SerlibError
from serlib.results import load_run, provenance
from serlib.runs import without_timing
from serlib.training import TrainConfig, load_checkpoint, run_cross_validation
from tests.test_cli_cv import write_wav_selection

REPO = Path(__file__).resolve().parents[1]
CONFIG = TrainConfig(feature="mfcc", folds=2, epochs=1, width=2, batch_size=8, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")   # torch on one thread (conftest.py)


@pytest.fixture(scope="module")
def finished(tones, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run_cross_validation(tones, config=CONFIG, out_dir=out, progress=False)


def cv_args(selection, out, *extra):
    return ["cv", "--selection", str(selection), "--folds", "2", "--epochs", "1", "--width",
            "2", "--batch-size", "8", "--out", str(out), "--quiet", "--device", "cpu", *extra]


def test_speaker_names_that_look_like_numbers_stay_text(tmp_path):
    """EmoDB's speakers are "03", "08", ...: the run folder keeps them (not 3, 8) and the
    per-speaker table finds their genders in the selection."""
    from serlib.report import per_speaker_table

    selection = write_wav_selection(tmp_path, speakers=["03", "08", "09", "10", "NA", "16"],
                                    genders=list("MFFMFM"))
    out = tmp_path / "run"
    config = TrainConfig(**{**CONFIG.to_dict(), "protocol": "session"})
    run_cross_validation(selection, config=config, out_dir=out, progress=False)
    run = load_run(out)
    assert set(run.predictions["speaker"]) == {"03", "08", "09", "10", "NA", "16"}
    on_disk = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(on_disk["speaker"]) == set(run.predictions["speaker"])
    table = per_speaker_table([run])
    assert table["gender"].to_dict() == {"03": "M", "08": "F", "09": "F", "10": "M", "16": "M",
                                         "NA": "F"}


# ----------------------------------------------------------------------------- finding 1
@pytest.mark.parametrize("bad", [["--device", "foo"], ["--device", "mps"], ["--folds", "100"],
                                 ["--protocol", "session", "--folds", "7"]])
def test_failed_start_writes_no_config_and_the_fix_runs(tones, tmp_path, capsys, bad):
    out = tmp_path / "run"
    assert main(cv_args(tones, out, *bad)) == 2
    assert "error:" in capsys.readouterr().err
    assert not (out / "config.json").exists()
    assert main(cv_args(tones, out)) == 0  # the corrected command in the same --out


def test_session_protocol_with_one_speaker_is_refused_before_writing(tones, tmp_path, capsys):
    selection = pd.read_csv(tones).assign(speaker="spk0")
    csv = tmp_path / "one.csv"
    selection.to_csv(csv, index=False)
    out = tmp_path / "run"
    assert main(cv_args(csv, out, "--protocol", "session")) == 2
    assert "has 1 speaker(s)" in capsys.readouterr().err
    assert not (out / "config.json").exists()


def test_truncated_wav_is_named_without_a_flag_cv_lacks(tones, tmp_path, capsys):
    selection = pd.read_csv(tones)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(Path(selection.loc[3, "path"]).read_bytes()[:60])
    selection.loc[3, "path"] = str(broken)
    csv = tmp_path / "selection.csv"
    selection.to_csv(csv, index=False)
    out = tmp_path / "run"
    assert main(cv_args(csv, out)) == 2
    err = capsys.readouterr().err
    assert "broken.wav" in err and "1 bad audio file(s)" in err
    assert "skip_errors" not in err and "nothing written" not in err
    assert not (out / "config.json").exists()
    assert main(cv_args(tones, out)) == 0


# ----------------------------------------------------------------------------- finding 2
def test_damaged_fold_files_are_named_and_retrained(finished, tones, tmp_path, monkeypatch):
    out, summary = finished
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(out, damaged)
    checkpoint = damaged / "fold_1" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])           # truncated
    (damaged / "fold_2" / "metrics.json").write_text("")             # empty
    (damaged / "config.json").write_text('{"train": ')                # truncated
    with pytest.raises(SerlibError, match="checkpoint.pt: not a loadable serlib checkpoint"):
        load_checkpoint(checkpoint)

    calls = []
    original = training.train_fold

    def count(*args, fold, **kwargs):
        calls.append(fold)
        return original(*args, fold=fold, **kwargs)

    monkeypatch.setattr(training, "train_fold", count)
    with pytest.warns(runs.RunFolderWarning) as record:
        again = run_cross_validation(tones, config=CONFIG, out_dir=damaged, progress=False)
    messages = " ".join(str(w.message) for w in record)
    assert "fold_1/checkpoint.pt: does not load" in messages
    assert "fold_2/metrics.json: does not parse" in messages
    assert "config.json: damaged" in messages
    assert json.loads((damaged / "config.json").read_text())["train"] == CONFIG.to_dict()
    assert calls == [1, 2]
    assert without_timing(again["folds"]) == \
        without_timing(summary["folds"])                        # CPU: bit-identical


def test_predictions_of_other_utterances_are_not_a_finished_fold(finished, tones, tmp_path):
    out, _ = finished
    setup = training.prepare_run(tones, config=CONFIG)
    assert runs.finished_fold(out, 1, utterance_ids=setup.test_ids(1)) is not None
    with pytest.warns(runs.RunFolderWarning, match="exactly the fold's"):
        assert runs.finished_fold(out, 1, utterance_ids=setup.test_ids(2)) is None


def test_fold_is_written_whole_or_not_at_all(finished, tmp_path, monkeypatch):
    out, _ = finished
    metrics = json.loads((out / "fold_1" / "metrics.json").read_text())
    table = pd.read_csv(out / "fold_1" / "predictions.csv")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        runs.write_fold(tmp_path, 1, checkpoint={}, metrics=metrics, predictions=table,
                        history=table)
    assert list(tmp_path.iterdir()) == []                           # no fold, no scratch


def test_config_records_versions_and_provenance_shows_them(finished):
    out, _ = finished
    config = json.loads((out / "config.json").read_text())
    assert config["versions"]["torch"] == torch.__version__.split("+")[0] or \
        config["versions"]["torch"] == torch.__version__
    assert set(config["versions"]) >= {"python", "torch", "librosa", "numpy", "scikit-learn",
                                       "pandas"}
    assert f"torch {config['versions']['torch']}" in provenance(load_run(out))


# ----------------------------------------------------------------------------- finding 4
def test_non_finite_loss_stops_the_fold_naming_it(tones, tmp_path):
    config = TrainConfig(**{**CONFIG.to_dict(), "lr": 1e38, "loss": "focal"})
    with pytest.raises(SerlibError, match=r"fold 1, epoch \d: the training loss is nan.*"
                       r"learning rate lr=1e\+38 or gamma=2"):
        run_cross_validation(tones, config=config, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "fold_1").exists() and not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("field", [{"gamma": float("inf")}, {"gamma": float("nan")},
                                   {"alpha": (0.0, 0.0, 0.0, 0.0)},
                                   {"alpha": (1.0, -1.0, 1.0, 1.0)}, {"lr": float("inf")}])
def test_config_refuses_values_that_learn_nothing(field):
    name = next(iter(field))
    with pytest.raises(SerlibError, match=f"TrainConfig.{name}="):
        TrainConfig(**field)


def test_one_class_and_missing_class_selections_are_refused_with_counts(tones, tmp_path):
    selection = pd.read_csv(tones)
    with pytest.raises(SerlibError, match=r"48 utterance\(s\) of one class only \(anger: 48\)"):
        run_cross_validation(selection.assign(label="anger"), config=CONFIG,
                             out_dir=tmp_path / "a", progress=False)
    # one sadness clip: with 2 stratified folds one training part has none of it
    rare = selection[(selection["label"] != "sadness") | (selection.index == 2)]
    with pytest.raises(SerlibError, match=r"training part has no example of sadness "
                       r"\(.*sadness: 0"):
        run_cross_validation(rare, config=CONFIG, out_dir=tmp_path / "b", progress=False)
    with pytest.raises(SerlibError, match=r"its labels are: frustration \(48\)"):
        run_cross_validation(selection.assign(label="frustration"), config=CONFIG,
                             out_dir=tmp_path / "c", progress=False)
    assert not any((tmp_path / name / "config.json").exists() for name in "abc")


# ----------------------------------------------------------------------------- finding 5
def test_two_processes_on_one_folder_one_trains_the_other_is_told(tones, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = [[sys.executable, "-m", "serlib", *cv_args(tones, out, "--gamma", gamma,
                                                           "--epochs", "6")]
                for gamma in ("1", "3")]
    processes = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in commands]
    results = [(p.pid, p.wait(timeout=600), p.stderr.read()) for p in processes]
    for p in processes:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(rc for _, rc, _ in results)
    assert codes == [0, 2], results
    (winner, _, _), (loser, _, err) = sorted(results, key=lambda r: r[1])
    # both start together; the one that takes the lock holds it for its whole run
    assert f"in use by process {winner}" in err, err
    assert loser != winner
    gamma = json.loads((out / "config.json").read_text())["train"]["gamma"]
    assert json.loads((out / "summary.json").read_text())["gamma"] == gamma
    assert {json.loads((out / f"fold_{k}" / "metrics.json").read_text())["fold"]
            for k in (1, 2)} == {1, 2}


@pytest.mark.slow
def test_cv_killed_at_random_moments_and_damaged_ends_like_an_uninterrupted_run(tones,
                                                                                finished,
                                                                                tmp_path):
    import random
    import signal

    _, uninterrupted = finished
    out = tmp_path / "run"
    command = [sys.executable, "-m", "serlib", *cv_args(tones, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    for _ in range(4):
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=rng.uniform(2.0, 12.0))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        files = [p for p in out.rglob("*") if p.is_file() and p.name != ".lock"]
        if files:
            victim = rng.choice(sorted(files))
            data = victim.read_bytes()
            victim.write_bytes(data[:rng.randrange(max(len(data), 1))])   # truncated
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert without_timing(summary["folds"]) == without_timing(uninterrupted["folds"])
    assert summary["wa_mean"] == uninterrupted["wa_mean"]
    assert not [p for p in out.rglob(".*") if p.name not in (".lock", runs.MARKER)]   # no scratch
