"""Issue 20, findings 1-5 and 12: concurrency, non-finite numbers, user files, a full disk,
failed starts and long recordings. Each test failed on the code before the fix."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from serlib import runs
from serlib.cli import main
from serlib.errors import SerlibError
from serlib.grid import run_grid
from serlib.inference import Predictor
from serlib.training import TrainConfig, run_cross_validation

REPO = Path(__file__).resolve().parents[1]
CONFIG = TrainConfig(feature="mfcc", folds=2, epochs=1, width=2, batch_size=8, device="cpu")
CV = ["--feature", "mfcc", "--folds", "2", "--epochs", "1", "--width", "2", "--batch-size", "8",
      "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def tone_run(tones, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "mfcc_focal"
    run_cross_validation(tones, config=CONFIG, out_dir=out, progress=False)
    return out


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- finding 1
GRID_PROFILE = """\
name: race
corpus: {{size: tiny, seed: 0}}
selection: {{max_seconds: {max_seconds}}}
grid:
  - {{feature: mfcc, loss: focal}}
training: {{folds: 2, epochs: 2, width: 2, batch_size: 16, patience: 0, device: cpu}}
engine: {{name: local, jobs: 1}}
"""


def _serlib(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "serlib", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_refused_grid_leaves_a_running_grid_alone(tmp_path):
    """Two processes on one output folder: the second (another clip length) is refused
    before it writes anything, and the first trains on the selection it checked."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(GRID_PROFILE.format(max_seconds=2.0))
    second.write_text(GRID_PROFILE.format(max_seconds=1.0))
    out = tmp_path / "gx"
    running = _serlib("grid", "--profile", str(first), "--out", str(out), "--quiet",
                      cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline:   # until the first grid holds the folder
        lock = out / ".lock"
        if lock.is_file() and str(running.pid) in lock.read_text():
            break
        assert running.poll() is None, running.communicate()
        time.sleep(0.2)
    refused = _serlib("grid", "--profile", str(second), "--out", str(out), "--quiet",
                      cwd=tmp_path)
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2, err
    assert "in use by process" in err and str(running.pid) in err
    out_text, err = running.communicate(timeout=300)
    assert running.returncode == 0, err
    selection = pd.read_csv(out / "selection.csv")
    assert set(selection["max_seconds"]) == {2.0}
    config = json.loads((out / "runs" / "mfcc_focal" / "config.json").read_text())
    assert config["features"]["max_seconds"] == 2.0
    # run afterwards: refused naming the field, and selection.csv is not rewritten
    before = (out / "selection.csv").read_bytes()
    again = _serlib("grid", "--profile", str(second), "--out", str(out), "--quiet",
                    cwd=tmp_path)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2
    assert "features.max_seconds: 2.0 on disk, 1.0 now" in err
    assert (out / "selection.csv").read_bytes() == before


def test_grid_workers_train_on_the_selection_the_parent_checked(tones, tmp_path, monkeypatch):
    """The selection file rewritten while the grid runs changes nothing: each task carries
    the parent's copy and its content hash."""
    import serlib.grid as grid

    selection = pd.read_csv(tones)
    path = tmp_path / "selection.csv"
    selection.to_csv(path, index=False)
    seen = []
    real = grid.run_fold_task

    def task_after_rewrite(task):
        selection.iloc[:12].to_csv(path, index=False)   # another process rewrites the file
        seen.append((len(task.selection), task.fingerprint))
        return real(task)

    monkeypatch.setattr(grid, "run_fold_task", task_after_rewrite)
    result = run_grid([("r", CONFIG)], selection=path, cache_dir=tmp_path / "cache",
                      runs_dir=tmp_path / "runs", jobs=1, engine="local", progress=False)
    assert result.ok, result.failures
    assert [n for n, _ in seen] == [48, 48] and all(f for _, f in seen)
    assert len(pd.read_csv(tmp_path / "runs" / "r" / "predictions.csv")) == 48


# ----------------------------------------------------------------------------- finding 2
def test_non_finite_weights_after_the_last_step_fail_the_fold(tones, tmp_path, capsys):
    """--lr 1e38 with one batch an epoch: the loss is finite, the step overflows."""
    out = tmp_path / "nan1"
    code = main(["cv", "--selection", str(tones), *CV, "--batch-size", "512", "--lr", "1e38",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "fold 1, epoch 1: the model weights are not finite" in err
    assert "learning rate lr=1e+38" in err
    assert not list(out.glob("fold_*")) and not (out / "summary.json").exists()
    assert not (out / "config.json").exists()   # and the corrected command is not blocked
    assert main(["cv", "--selection", str(tones), *CV, "--out", str(out)]) == 0


@pytest.mark.parametrize("flag", ["--weight-decay", "--beta", "--gamma", "--lr"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_every_float_flag_must_be_finite(tones, tmp_path, capsys, flag, value):
    code = main(["cv", "--selection", str(tones), *CV, flag, value, "--out",
                 str(tmp_path / "r")])
    assert code == 2
    assert f"TrainConfig.{flag[2:].replace('-', '_')}={value}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_train_config_float_fields_refuse_non_finite_values():
    for name in ("weight_decay", "val_fraction", "beta", "mixup", "dropout",
                 "label_smoothing", "freq_warp", "gamma", "lr"):
        for value in (float("inf"), float("nan")):
            with pytest.raises(SerlibError, match=f"TrainConfig.{name}="):
                TrainConfig(**{name: value})


def _huge_wav(path: Path) -> Path:
    t = np.arange(16000) / 16000
    sf.write(path, (1e30 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000,
             subtype="FLOAT")
    return path


def test_samples_near_1e30_are_named_not_turned_into_nan(tones, tone_run, tmp_path, capsys):
    huge = _huge_wav(tmp_path / "huge.wav")
    good = pd.read_csv(tones)["path"].iloc[0]
    assert main(["predict", "--run", str(tone_run), str(huge), good, "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "huge.wav: audio has samples up to 1e+30" in captured.err
    assert "nan" not in captured.out.lower() and Path(good).name in captured.out
    # in a selection: the run is refused naming the file, before anything is written
    selection = pd.read_csv(tones)
    selection.loc[0, "path"] = str(huge)
    selection.to_csv(tmp_path / "sel.csv", index=False)
    with pytest.raises(SerlibError, match="huge.wav: audio has samples up to 1e"):
        run_cross_validation(tmp_path / "sel.csv", config=CONFIG, out_dir=tmp_path / "r",
                             progress=False)
    assert not (tmp_path / "r").exists()


def _nan_copy(run: Path, folder: Path) -> Path:
    import shutil

    copy = folder / "nan_run"
    shutil.copytree(run, copy)
    for fold in (1, 2):
        path = copy / f"fold_{fold}" / "checkpoint.pt"
        checkpoint = torch.load(path, weights_only=True)
        name = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
        checkpoint["model"][name] = torch.full_like(checkpoint["model"][name], float("nan"))
        torch.save(checkpoint, path)
    return copy


def test_predict_and_export_refuse_a_run_with_nan_weights(tones, tone_run, tmp_path, capsys):
    nan_run = _nan_copy(tone_run, tmp_path)
    good = pd.read_csv(tones)["path"].iloc[0]
    assert main(["predict", "--run", str(nan_run), good, "--quiet"]) == 2
    assert "holds non-finite (NaN or inf) values in model." in capsys.readouterr().err
    assert main(["export", "--run", str(nan_run), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "non-finite" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_predictor_refuses_non_finite_probabilities(tone_run):
    predictor = Predictor.from_run(tone_run)
    features = np.full((1, *predictor.feature_config.shape), np.nan, dtype=np.float32)
    with pytest.raises(SerlibError, match="non-finite .*probabilities"):
        predictor.predict_features(features)


# ----------------------------------------------------------------------------- finding 3
def test_cv_refuses_a_folder_of_user_files_and_names_them(tones, tmp_path, capsys):
    user = tmp_path / "userdir"
    user.mkdir()
    for name in ("config.json", "predictions.csv", "summary.json"):
        (user / name).write_text(f"the user's own {name}\n")
    before = _snapshot(user)
    assert main(["cv", "--selection", str(tones), *CV, "--out", str(user)]) == 2
    err = capsys.readouterr().err
    assert "not a serlib run folder" in err
    assert "config.json, predictions.csv, summary.json" in err and "damaged" not in err
    assert _snapshot(user) == before and not (user / ".lock").exists()


def test_a_run_folder_is_recognised_by_its_marker(tones, tone_run):
    assert (tone_run / runs.MARKER).is_file()
    runs.check_run_folder(tone_run)   # ours: no refusal
    # a finished run reruns (prints its summary) without a refusal
    assert run_cross_validation(tones, config=CONFIG, out_dir=tone_run, progress=False)


def test_select_refuses_to_overwrite_its_manifest(tones, tmp_path, capsys):
    selection = pd.read_csv(tones)
    manifest = tmp_path / "m.csv"
    selection[["path", "label", "speaker"]].assign(
        label=["neutral", "anger", "sadness", "happiness", "calm", "calm"] * 8
    ).to_csv(manifest, index=False)
    before = manifest.read_bytes()
    assert main(["select", "--manifest", str(manifest), "--out", str(manifest), "--quiet"]) == 2
    assert "would overwrite an input" in capsys.readouterr().err
    assert manifest.read_bytes() == before


def test_export_refuses_to_write_over_a_runs_files(tone_run, capsys):
    before = _snapshot(tone_run)
    assert main(["export", "--run", str(tone_run), "--onnx",
                 str(tone_run / "config.onnx")]) == 2
    assert "inside the run folder" in capsys.readouterr().err
    assert _snapshot(tone_run) == before


def test_export_refuses_to_overwrite_a_users_json(tone_run, tmp_path, capsys):
    (tmp_path / "model.json").write_text('{"mine": true}\n')
    assert main(["export", "--run", str(tone_run), "--onnx", str(tmp_path / "model.onnx")]) == 2
    assert "not an ONNX description serlib wrote" in capsys.readouterr().err
    assert (tmp_path / "model.json").read_text() == '{"mine": true}\n'


# ----------------------------------------------------------------------------- finding 4
@pytest.fixture
def small_disk(tmp_path):
    """A 5-MB tmpfs where the test may mount one (root), else None."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    yield folder if mounted else None
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_named_and_leaves_no_temporary_file(synthetic_selection, tmp_path,
                                                             small_disk, monkeypatch, capsys):
    """Features (10 MB) into a 5-MB disk: a named error, rc 2, no temporary file; where no
    tmpfs can be mounted, the allocation fails with ENOSPC as it does on a full disk."""
    csv = tmp_path / "sel.csv"
    synthetic_selection.to_csv(csv, index=False)
    cache = (small_disk or tmp_path) / "cache"
    if small_disk is None:
        def full(fd, offset, length):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "posix_fallocate", full)
    code = main(["features", "--selection", str(csv), "--kind", "spectrogram", "--out",
                 str(cache), "--quiet"])
    assert code == 2
    assert "no space left on device: " in capsys.readouterr().err
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".npy"]


def test_a_full_disk_under_the_run_folder_is_named(tones, tmp_path, monkeypatch):
    real = Path.write_bytes

    def full(self, data):
        if self.name == "checkpoint.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "r"
    with pytest.raises(SerlibError, match=r"no space left on device: .*fold_1"):
        run_cross_validation(tones, config=CONFIG, out_dir=out, progress=False)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not list(out.glob("fold_*"))


# ----------------------------------------------------------------------------- finding 5
@pytest.mark.parametrize(("flags", "named"), [
    (["--width", "100000"], "TrainConfig.width=100000"),
    (["--protocol", "session", "--seed", "-1"], "TrainConfig.seed=-1"),
    (["--seed", "5000000"], "TrainConfig.seed=5000000"),
])
def test_bad_starts_are_refused_by_name_and_write_nothing(tones, tmp_path, capsys, flags,
                                                         named):
    out = tmp_path / "r"
    assert main(["cv", "--selection", str(tones), *CV, *flags, "--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_a_refusal_names_the_fields_that_differ(tones, tone_run, capsys):
    assert main(["cv", "--selection", str(tones), *CV, "--epochs", "2", "--out",
                 str(tone_run)]) == 2
    assert "train.epochs: 1 on disk, 2 now" in capsys.readouterr().err


def test_a_failed_grid_run_does_not_block_the_corrected_grid(tones, tmp_path):
    bad = TrainConfig(**{**CONFIG.to_dict(), "lr": 1e38, "batch_size": 512})
    result = run_grid([("r", bad)], selection=tones, cache_dir=tmp_path / "cache",
                      runs_dir=tmp_path / "runs", jobs=1, progress=False)
    assert not result.ok
    assert not (tmp_path / "runs" / "r" / "config.json").exists()
    result = run_grid([("r", CONFIG)], selection=tones, cache_dir=tmp_path / "cache",
                      runs_dir=tmp_path / "runs", jobs=1, progress=False)
    assert result.ok and "r" in result.summaries


# ----------------------------------------------------------------------------- finding 12
def test_long_recordings_are_streamed_window_by_window(tone_run, tmp_path, monkeypatch):
    import serlib.inference as inference

    rng = np.random.default_rng(0)
    sr = 16000
    t = np.arange(int(75 * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(t)) * t) + 0.05 * rng.normal(size=t.size)
    path = tmp_path / "long.wav"
    sf.write(path, np.stack([y, 0.5 * y]).T, sr, subtype="PCM_16")
    predictor = Predictor.from_run(tone_run)
    whole = predictor.predict_waveform(sf.read(path, dtype="float32", always_2d=True)[0].T,
                                       sample_rate=sr)

    def no_whole_decode(*args, **kwargs):
        raise AssertionError("a long file was decoded whole")

    monkeypatch.setattr(inference, "load_audio", no_whole_decode)
    reads = []
    real_read = sf.SoundFile.read

    def counted(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", counted)
    streamed = predictor.predict_file(path)
    assert len(streamed.windows) == len(whole.windows) == 24
    assert max(reads) < 7 * sr          # one window (6 s) and its margin at a time
    np.testing.assert_allclose(streamed.windows.to_numpy(), whole.windows.to_numpy(),
                               atol=1e-5, rtol=0)
    assert streamed.duration_s == pytest.approx(75.0)


def test_select_and_predict_never_replace_a_file_they_did_not_write(tones, tone_run,
                                                                   tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    pd.read_csv(tones)[["path", "label", "speaker"]].to_csv(manifest, index=False)
    mine = tmp_path / "notes.csv"
    mine.write_text("date,note\n2024-01-01,my own file\n")
    assert main(["select", "--manifest", str(manifest), "--out", str(mine), "--quiet"]) == 2
    assert "is not a selection CSV serlib wrote" in capsys.readouterr().err
    good = pd.read_csv(tones)["path"].iloc[0]
    assert main(["predict", "--run", str(tone_run), good, "--out", str(mine), "--quiet"]) == 2
    assert "is not a predictions file serlib wrote" in capsys.readouterr().err
    assert mine.read_text() == "date,note\n2024-01-01,my own file\n"
    # its own files it rewrites
    out = tmp_path / "s.csv"
    for _ in range(2):
        assert main(["select", "--manifest", str(manifest), "--out", str(out), "--quiet"]) == 0
    for _ in range(2):
        assert main(["predict", "--run", str(tone_run), good, "--out", str(tmp_path / "p.csv"),
                     "--quiet"]) == 0


def test_an_io_error_while_writing_is_named(tmp_path, monkeypatch):
    from serlib._io import atomic_write_text

    def broken(self, text, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(SerlibError, match=r"cannot write .*x\.json: Input/output error"):
        atomic_write_text(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []
