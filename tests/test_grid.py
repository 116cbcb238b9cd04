"""The grid: folds of many runs on an engine, identical to sequential runs, resumable, and a
failing fold stops nothing else (issue 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serlib import runs as run_folders
from serlib.errors import SerlibError
from serlib.grid import run_grid
from serlib.runs import without_timing
from serlib.training import TrainConfig, run_cross_validation

REPO = Path(__file__).resolve().parents[1]
BASE = TrainConfig(feature="mfcc", folds=2, epochs=2, width=4, batch_size=8, device="cpu")
RUNS = [("mfcc_focal", BASE),
        ("mfcc_softmax", TrainConfig(**{**BASE.to_dict(), "loss": "softmax"}))]


pytestmark = pytest.mark.usefixtures("one_thread")   # torch on one thread (conftest.py)


@pytest.fixture(scope="module")
def sequential(tones, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    return {name: run_cross_validation(tones, config=config, out_dir=out / name,
                                       progress=False) for name, config in RUNS}


def fold_metrics(runs_dir, name, n=2):
    return [json.loads((runs_dir / name / f"fold_{k}" / "metrics.json").read_text())
            for k in range(1, n + 1)]


def test_local_grid_equals_sequential_runs_bit_for_bit(tones, sequential, tmp_path):
    result = run_grid(RUNS, selection=tones, cache_dir=tmp_path / "cache",
                      runs_dir=tmp_path / "runs", engine="local", jobs=2, progress=False)
    assert result.ok and result.trained == 4 and result.reused == 0
    for name, summary in sequential.items():
        assert without_timing(result.summaries[name]["folds"]) == without_timing(summary["folds"])
        assert result.summaries[name]["wa_mean"] == summary["wa_mean"]
        assert without_timing(fold_metrics(tmp_path / "runs", name)) == \
            without_timing(summary["folds"])
    # finished: a rerun trains nothing and gives the same summaries
    again = run_grid(RUNS, selection=tones, cache_dir=tmp_path / "cache",
                     runs_dir=tmp_path / "runs", jobs=2, progress=False)
    assert again.trained == 0 and again.reused == 4
    assert again.summaries == result.summaries


def test_failing_fold_is_reported_and_the_others_finish(tones, sequential, tmp_path):
    # lr = 1e38: weights overflow float32 after one step, so the focal run's folds end in a
    # non-finite loss; the softmax run is fine
    bad = TrainConfig(**{**BASE.to_dict(), "lr": 1e38})
    result = run_grid([("bad", bad), RUNS[1]], selection=tones, cache_dir=tmp_path / "cache",
                      runs_dir=tmp_path / "runs", jobs=1, progress=False)
    assert not result.ok
    assert [(f.run, f.fold) for f in result.failures] == [("bad", 1), ("bad", 2)]
    assert "Traceback" in result.failures[0].traceback
    assert "fold 1, epoch 1: the training loss is nan" in result.failures[0].traceback
    assert without_timing(result.summaries["mfcc_softmax"]["folds"]) == \
        without_timing(sequential["mfcc_softmax"]["folds"])
    assert "bad" not in result.summaries
    assert not (tmp_path / "runs" / "bad" / "summary.json").exists()


def test_grid_command_reports_failures_and_exits_non_zero(tmp_path, capsys):
    from serlib.cli import main

    profile = tmp_path / "p.yaml"
    profile.write_text("corpus: {size: tiny}\ngrid: [{feature: mfcc, loss: focal, lr: 1.0e+38}]"
                       "\ntraining: {folds: 2, epochs: 1, width: 2, batch_size: 16, "
                       "device: cpu}\n")
    assert main(["grid", "--profile", str(profile), "--out", str(tmp_path / "out"),
                 "--jobs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 fold(s) failed: mfcc_focal_lr-1e+38 fold 1; mfcc_focal_lr-1e+38 fold 2" in err


def test_grid_refuses_bad_runs_before_writing(tones, tmp_path):
    with pytest.raises(SerlibError, match="appears twice"):
        run_grid([RUNS[0], RUNS[0]], selection=tones, cache_dir=tmp_path / "c",
                 runs_dir=tmp_path / "r")
    with pytest.raises(SerlibError, match="engine='spark'"):
        run_grid(RUNS, selection=tones, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r",
                 engine="spark")
    assert not (tmp_path / "r").exists()


GRID_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from serlib.grid import run_grid
from serlib.training import TrainConfig
base = TrainConfig(feature="mfcc", folds=2, epochs=2, width=4, batch_size=8, device="cpu")
runs = [("mfcc_focal", base),
        ("mfcc_softmax", TrainConfig(**{**base.to_dict(), "loss": "softmax"}))]
if __name__ == "__main__":
    result = run_grid(runs, selection=sys.argv[1], cache_dir=sys.argv[2], runs_dir=sys.argv[3],
                      jobs=2, progress=False)
    print("trained", result.trained, "reused", result.reused, flush=True)
"""


def test_sigkilled_grid_resumes_without_retraining_finished_folds(tones, sequential, tmp_path):
    script = tmp_path / "grid_script.py"
    script.write_text(GRID_SCRIPT)
    runs_dir = tmp_path / "runs"
    command = [sys.executable, str(script), str(tones), str(tmp_path / "cache"), str(runs_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if list(runs_dir.glob("*/fold_*/metrics.json")):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    finished = {p.parent for p in runs_dir.glob("*/fold_*/metrics.json")}
    assert 1 <= len(finished) <= 4
    stamps = {p: (p / "checkpoint.pt").stat().st_mtime_ns for p in finished}
    time.sleep(1)  # the workers died with the grid: nothing writes any more
    assert {p: (p / "checkpoint.pt").stat().st_mtime_ns for p in finished} == stamps

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    trained, reused = map(int, rerun.stdout.split()[1::2])
    assert reused == len(finished) and trained == 4 - len(finished)
    for p, stamp in stamps.items():                       # no finished fold trained again
        assert (p / "checkpoint.pt").stat().st_mtime_ns == stamp
    for name, summary in sequential.items():
        assert without_timing(fold_metrics(runs_dir, name)) == without_timing(summary["folds"])
        assert not list((runs_dir / name).glob(".*.tmp"))


@pytest.mark.slow
def test_ray_engine_equals_local_engine(tones, sequential, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install serlib[ray])")
    result = run_grid(RUNS, selection=tones, cache_dir=tmp_path / "cache",
                      runs_dir=tmp_path / "runs", engine="ray", jobs=2, progress=False)
    import ray

    assert not ray.is_initialized()   # the local instance the grid started is stopped
    assert result.ok and result.trained == 4
    for name, summary in sequential.items():
        assert without_timing(result.summaries[name]["folds"]) == without_timing(summary["folds"])


def test_finished_fold_validation_is_shared_with_cv(tones, sequential, tmp_path):
    # a run folder written by the grid is a run folder for serlib cv (and back)
    run_grid(RUNS[:1], selection=tones, cache_dir=tmp_path / "cache",
             runs_dir=tmp_path / "runs", jobs=1, progress=False)
    summary = run_cross_validation(tones, config=BASE, out_dir=tmp_path / "runs" / "mfcc_focal",
                                   progress=False)
    assert without_timing(summary["folds"]) == without_timing(sequential["mfcc_focal"]["folds"])
    assert run_folders.load_run(tmp_path / "runs" / "mfcc_focal").summary == summary
