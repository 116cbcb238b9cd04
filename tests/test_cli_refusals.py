"""Issue 20, findings 6-11, 13 and 14: the profile schema, recipes and explicit flags, file
names, profiles, provenance, late errors, messages and the README's install. Each test
failed on the code before the fix."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serlib.book import Profile
from serlib.cli import main
from serlib.config import TrainConfig
from serlib.errors import SerlibError

REPO = Path(__file__).resolve().parents[1]
CONFIG = TrainConfig(feature="mfcc", folds=2, epochs=1, width=2, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def tone_run(tones, tmp_path_factory) -> Path:
    from serlib.training import run_cross_validation

    out = tmp_path_factory.mktemp("run") / "mfcc_focal"
    run_cross_validation(tones, config=CONFIG, out_dir=out, progress=False)
    return out


# ----------------------------------------------------------------------------- finding 6
SETTINGS = {"sampler": "balanced", "dropout": 0.2, "class_weights": "inverse",
            "own_frames": True, "pooling": "meanstd", "label_smoothing": 0.1, "mixup": 0.2,
            "select_epoch": "last", "normalisation": "utterance", "beta": 0.99,
            "freq_warp": 0.1}


def test_grid_entries_take_every_documented_setting(tmp_path):
    path = tmp_path / "p.yaml"
    entry = ", ".join(f"{k}: {json.dumps(v)}" for k, v in SETTINGS.items())
    path.write_text(f"grid:\n  - {{feature: mfcc, loss: focal, {entry}}}\n"
                    "training: {epochs: 1}\n")
    [(_, config)] = Profile.load(path).runs()
    assert {k: getattr(config, k) for k in SETTINGS} == SETTINGS


def test_the_schema_types_every_train_config_field_as_declared():
    from serlib.book import train_config_schema

    schema = train_config_schema()
    assert set(schema) == {f.name for f in dataclasses.fields(TrainConfig)}
    default = TrainConfig()
    expected = {bool: "boolean", int: "integer", float: "number", str: "string"}
    for name, rule in schema.items():
        value = getattr(default, name)
        if value is None:
            assert rule["type"] == ["array", "null"], name
        else:
            assert rule["type"] == expected[type(value)], name
    # every field's default passes the whole profile schema inside a grid entry
    import jsonschema

    from serlib.book import _profile_schema

    entry = {k: (list(v) if isinstance(v, tuple) else v)
             for k, v in TrainConfig().to_dict().items()}
    jsonschema.validate({"grid": [entry]}, _profile_schema())


# ----------------------------------------------------------------------------- finding 7
def test_an_explicit_flag_wins_over_the_recipe(monkeypatch, tmp_path):
    import serlib.training as training

    seen = []
    monkeypatch.setattr(training, "run_cross_validation",
                        lambda selection, *, config, **kw: seen.append(config) or
                        (_ for _ in ()).throw(SerlibError("stop")))
    for flags, feature, width in ((["--feature", "mfcc"], "mfcc", 32),
                                  ([], "spectrogram", 32),
                                  (["--width", "64"], "spectrogram", 64)):
        assert main(["cv", "--selection", "s.csv", "--recipe", "strong", *flags,
                     "--out", str(tmp_path / "r")]) == 2
        assert (seen[-1].feature, seen[-1].width) == (feature, width)
    assert main(["cv", "--selection", "s.csv", "--out", str(tmp_path / "r")]) == 2
    assert seen[-1] == TrainConfig()


# ----------------------------------------------------------------------------- finding 8
def test_a_non_utf8_file_name_is_predicted_with_the_rest(tones, tone_run, tmp_path, capsys):
    folder = tmp_path / "rec"
    folder.mkdir()
    source = pd.read_csv(tones)["path"]
    shutil.copy(source.iloc[0], folder / "good.wav")
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.wav")
    shutil.copy(source.iloc[1], odd)
    assert main(["predict", "--run", str(tone_run), str(folder), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "good.wav" in out and "caf\\xe9.wav" in out


# ----------------------------------------------------------------------------- finding 9
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize(("text", "match"), [
    (LAUGHS + "description: *i\n", "aliases expand to more than"),
    (LAUGHS + "grid: *i\n", "aliases expand to more than"),
    (b"training: {epochs: 1}\ndescription: caf\xe9\n", "not UTF-8 text"),
    ("", "the profile is empty"),
    ("# nothing but a comment\n", "the profile is empty"),
    ("- a list\n", "a profile is a mapping"),
    ("name: x\ndescription: trains nothing\n", "needs at least one of grid, training"),
])
def test_bad_profiles_are_refused_quickly(tmp_path, text, match):
    path = tmp_path / "p.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SerlibError, match=match):
        Profile.load(path)


# ----------------------------------------------------------------------------- finding 10
def test_commit_is_unknown_when_installed_inside_another_repository(tmp_path):
    other = tmp_path / "other"
    site = other / "venv" / "lib" / "site-packages"
    shutil.copytree(REPO / "serlib", site / "serlib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(other)], check=True, env=env)
    (other / "README").write_text("another project\n")
    subprocess.run(["git", "-C", str(other), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(other), "commit", "-qm", "x"], check=True, env=env)
    result = subprocess.run(
        [sys.executable, "-c", "from serlib.provenance import commit_hash; "
                               "print(commit_hash())"],
        env={**env, "PYTHONPATH": str(site)}, capture_output=True, text=True, check=True,
        cwd=tmp_path)
    assert result.stdout.strip() == "unknown"


# ----------------------------------------------------------------------------- finding 11
def test_outputs_that_cannot_be_written_are_refused_before_any_work(tones, tone_run,
                                                                    tmp_path, capsys,
                                                                    monkeypatch):
    import serlib.inference as inference

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    monkeypatch.setattr(inference.Predictor, "from_run",
                        classmethod(lambda *a, **k: pytest.fail("work started")))
    good = pd.read_csv(tones)["path"].iloc[0]
    assert main(["predict", "--run", str(tone_run), good, "--out",
                 str(blocker / "p.csv")]) == 2
    assert "cannot write the predictions file there" in capsys.readouterr().err
    manifest = tmp_path / "m.csv"
    pd.read_csv(tones)[["path", "label", "speaker"]].to_csv(manifest, index=False)
    assert main(["select", "--manifest", str(manifest), "--out", str(blocker / "s.csv"),
                 "--quiet"]) == 2
    assert "cannot write the selection CSV there" in capsys.readouterr().err


def test_a_text_checkpoint_and_malformed_configs_are_named(tones, tone_run, tmp_path, capsys):
    good = pd.read_csv(tones)["path"].iloc[0]
    damaged = tmp_path / "damaged"
    shutil.copytree(tone_run, damaged)
    (damaged / "fold_1" / "checkpoint.pt").write_text("this is text, not a checkpoint\n" * 20)
    assert main(["predict", "--run", str(damaged), good, "--quiet"]) == 2
    assert "checkpoint.pt: unreadable checkpoint" in capsys.readouterr().err
    config = json.loads((tone_run / "config.json").read_text())
    for change, named in (({"width": "abc"}, "TrainConfig.width='abc'"),
                          ({"weight_decay": "abc"}, "TrainConfig.weight_decay='abc'"),
                          ({"colour": 1}, "unknown TrainConfig field(s): colour"),
                          ({"folds": 1e8}, "TrainConfig.folds=100000000.0")):
        bad = tmp_path / f"bad_{next(iter(change))}"
        shutil.copytree(tone_run, bad)
        (bad / "config.json").write_text(json.dumps(
            {**config, "train": {**config["train"], **change}}))
        assert main(["predict", "--run", str(bad), good, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{bad / 'config.json'}: not a valid run config" in err and named in err


@pytest.mark.parametrize(("flags", "named"), [
    (["--seed", "-1"], "seed=-1"),
    (["--folds", "100"], "folds=100 with protocol='stratified' on 48 utterances"),
])
def test_baseline_refuses_bad_settings_by_name(tones, tmp_path, capsys, flags, named):
    out = tmp_path / "b"
    assert main(["baseline", "--selection", str(tones), *flags, "--out", str(out),
                 "--quiet"]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_egemaps_without_opensmile_is_refused_before_any_work(tones, tmp_path, monkeypatch,
                                                            capsys):
    import serlib.baselines as baselines

    monkeypatch.setitem(sys.modules, "opensmile", None)   # as if not installed
    monkeypatch.setattr(baselines, "fit_baseline_folds",
                        lambda *a, **k: pytest.fail("work started"))
    assert main(["baseline", "--selection", str(tones), "--model", "egemaps-svm", "--out",
                 str(tmp_path / "b"), "--quiet"]) == 2
    assert "needs openSMILE" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1e7", "inf", "nan", "0"])
def test_select_refuses_absurd_clip_lengths(tones, tmp_path, capsys, value):
    manifest = tmp_path / "m.csv"
    pd.read_csv(tones)[["path", "label", "speaker"]].to_csv(manifest, index=False)
    assert main(["select", "--manifest", str(manifest), "--out", str(tmp_path / "s.csv"),
                 "--max-seconds", value, "--quiet"]) == 2
    assert "max_seconds=" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_a_fifo_is_named_not_waited_for(tones, tone_run, tmp_path):
    fifo = tmp_path / "x.wav"
    os.mkfifo(fifo)
    good = pd.read_csv(tones)["path"].iloc[0]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,speaker\n{good},neutral,a\n{fifo},anger,b\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["predict", "--run", str(tone_run), str(fifo), good, "--quiet"],
                 ["select", "--manifest", str(manifest), "--out", str(tmp_path / "s.csv"),
                  "--quiet"]):
        result = subprocess.run([sys.executable, "-m", "serlib", *args], capture_output=True,
                                text=True, timeout=120, env=env)
        assert "x.wav: is a FIFO (named pipe), not an audio file" in result.stderr
        assert result.returncode in (1, 2)


def test_grid_checks_engine_and_names_before_writing(tmp_path, capsys, monkeypatch):
    profile = tmp_path / "p.yaml"
    profile.write_text("grid:\n  - {feature: mfcc, loss: focal}\n"
                       "training: {epochs: 1, width: 2, folds: 2, device: cpu}\n"
                       "corpus: {size: tiny}\n")
    out = tmp_path / "gx"
    assert main(["grid", "--profile", str(profile), "--out", str(out), "--jobs", "0",
                 "--quiet"]) == 2
    assert "jobs=0" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["grid", "--profile", str(profile), "--out", str(out), "--engine", "ray",
                 "--quiet"]) == 2
    assert "needs Ray" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  - {name: 'no spaces', feature: mfcc, loss: focal}\n"
                   "training: {epochs: 1}\n")
    assert main(["grid", "--profile", str(bad), "--out", str(out), "--quiet"]) == 2
    assert "run name 'no spaces'" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- finding 13
def test_permission_denied_is_said_so(tmp_path, monkeypatch):
    import serlib.features.audio as audio

    path = tmp_path / "locked.wav"
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)
    monkeypatch.setattr(audio.os, "access", lambda p, mode: False)
    with pytest.raises(SerlibError, match="locked.wav: permission denied"):
        audio.load_audio(path)


def test_a_skipped_file_is_named_once(tones, tmp_path, capsys):
    selection = pd.read_csv(tones)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio")
    selection.loc[0, "path"] = str(corrupt)
    selection.to_csv(tmp_path / "s.csv", index=False)
    main(["features", "--selection", str(tmp_path / "s.csv"), "--kind", "mfcc", "--out",
          str(tmp_path / "cache"), "--quiet"])
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines()
             if "corrupt.wav" in line]
    assert lines and all(line.count("corrupt.wav") == 1 for line in lines), lines


def test_a_warning_is_one_line_without_its_source(monkeypatch, capsys):
    import serlib.commands.select as select

    def warn(args):
        warnings.warn("something to know", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(select, "run", warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename,
                            lineno, file=None, line=None: sys.stderr.write(
                                warnings.formatwarning(message, category, filename, lineno,
                                                       line)))
        assert main(["select", "--manifest", "m.csv", "--out", "s.csv"]) == 0
    err = capsys.readouterr().err
    assert err == "serlib select: warning: something to know\n"


def test_a_manifest_header_with_spaces_is_read(tones, tmp_path):
    from serlib.corpora import load_manifest

    manifest = tmp_path / "m.csv"
    rows = pd.read_csv(tones)[["path", "label", "speaker"]]
    manifest.write_text("path, label, speaker\n" + "".join(
        f"{r.path},{r.label},{r.speaker}\n" for r in rows.itertuples()))
    assert len(load_manifest(manifest)) == len(rows)


def test_a_one_sample_stereo_file_gets_no_layout_message(tmp_path):
    from serlib.features import FeatureConfig, extract_file

    path = tmp_path / "one.wav"
    sf.write(path, np.array([[0.1, -0.1]], dtype=np.float32), 16000)
    features = extract_file(path, config=FeatureConfig.preset("mfcc"))
    assert features.shape == FeatureConfig.preset("mfcc").shape
    assert np.isfinite(features).all()


# ----------------------------------------------------------------------------- finding 14
def _extras(command: str) -> set[str]:
    return set(re.search(r'pip install[^"]*-e "\.\[([^\]]*)\]"', command).group(1).split(","))


def test_the_readme_install_brings_every_extra_the_tests_use():
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("pip install -e")][:2]
    assert len(commands) == 2 and "serlib book" in commands[0] and "pytest" in commands[1]
    used = set()
    skips = re.compile(r'importorskip\("(\w+)"')
    module_extra = {"onnxruntime": "onnx", "onnxscript": "onnx", "onnx": "onnx",
                    "opensmile": "opensmile", "ray": "ray"}
    for test in (REPO / "tests").glob("test_*.py"):
        used |= {module_extra[m] for m in skips.findall(test.read_text()) if m in module_extra}
    assert used == {"onnx", "opensmile", "ray"}
    for command in commands:
        assert used | {"book", "dev"} <= _extras(command)
    ci = (REPO / ".ci" / "run").read_text()
    ci_install = next(line for line in ci.splitlines() if "pip install" in line and "-e" in line)
    assert _extras(ci_install) == _extras(commands[1])
