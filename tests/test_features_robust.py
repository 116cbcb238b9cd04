"""The feature store under faults: damaged files, kills, read-only folders, other clip lengths."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serlib.cli import main
from serlib.errors import SerlibError
from serlib.features import (
    FeatureConfig,
    FeatureStore,
    SilentAudioWarning,
    StoreWarning,
    extract_corpus,
    extract_file,
    feature_config_for,
)

corpus_module = importlib.import_module("serlib.features.corpus")
extract_module = importlib.import_module("serlib.features.extract")
CONFIG = FeatureConfig.preset("mfcc", max_seconds=1.0)


@pytest.fixture
def selection(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    wav = tmp_path / "wav"
    wav.mkdir()
    rows = []
    for i in range(8):
        path = wav / f"utt{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(4000 + 1000 * i)).astype(np.float32), 16000)
        rows.append((f"utt{i}", str(path)))
    return pd.DataFrame(rows, columns=["utterance_id", "path"])


def run(selection, cache, **kwargs):
    kwargs.setdefault("n_jobs", 1)
    return extract_corpus(selection, config=CONFIG, cache_dir=cache, progress=False, **kwargs)


def test_truncated_shard_is_named_and_recomputed(selection, tmp_path):
    first = run(selection, tmp_path / "cache", commit_every=3)
    store = FeatureStore(tmp_path / "cache", CONFIG, dtype="float32")
    shards = store.read_index().shards
    assert len(shards) == 3  # 3 + 3 + 2 clips, one shard per commit
    victim = store.root / shards[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.warns(StoreWarning, match=str(victim)):
        again = run(selection, tmp_path / "cache")
    assert (again.n_computed, again.n_reused) == (3, 5)
    np.testing.assert_array_equal(again.features, first.features)
    assert not victim.exists()  # not named by the new index: removed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(selection, tmp_path / "cache").n_computed == 0


@pytest.mark.parametrize("damage", [b"", b'{"store_version": 2, "shar', b"[1, 2]"])
def test_damaged_index_is_named_and_recomputed(selection, tmp_path, damage):
    first = run(selection, tmp_path / "cache")
    store = FeatureStore(tmp_path / "cache", CONFIG, dtype="float32")
    store.index_path.write_bytes(damage)
    with pytest.warns(StoreWarning, match="index-float32.json"):
        again = run(selection, tmp_path / "cache")
    assert again.n_computed == len(selection)
    np.testing.assert_array_equal(again.features, first.features)
    assert [p.name for p in store.root.glob("features-*.npy")] == store.read_index().shards


def test_kill_keeps_committed_clips_and_leaves_no_scratch(selection, tmp_path, monkeypatch):
    csv = tmp_path / "selection.csv"
    selection.to_csv(csv, index=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = textwrap.dedent(f"""
        import importlib, os, signal
        import pandas as pd
        from serlib.features import FeatureConfig, extract_corpus, extract_file
        module = importlib.import_module("serlib.features.extract")
        corpus = importlib.import_module("serlib.features.corpus")
        corpus._scratch_parent = lambda n_bytes: {str(scratch)!r}
        calls = []
        def worker(path, *, config):
            calls.append(path)
            if len(calls) == 6:
                os.kill(os.getpid(), signal.SIGKILL)
            return extract_file(path, config=config)
        module.extract_file = worker
        config = FeatureConfig.from_dict({CONFIG.to_dict()!r})
        extract_corpus(pd.read_csv({str(csv)!r}), config=config, commit_every=2,
                       cache_dir={str(tmp_path / "cache")!r}, n_jobs=1, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    index = FeatureStore(tmp_path / "cache", CONFIG, dtype="float32").read_index()
    assert len(index.entries) == 4  # two commits of two clips finished before the kill
    assert len(list(scratch.glob("serlib-features-*"))) == 1  # what the kill left
    # the next run removes the killed run's scratch, and its own
    monkeypatch.setattr(corpus_module, "_scratch_parent", lambda n_bytes: str(scratch))
    result = run(selection, tmp_path / "cache")
    assert (result.n_computed, result.n_reused) == (4, 4)
    assert list(scratch.iterdir()) == []
    assert [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")] == []


def test_stale_scratch_is_removed_live_one_kept(tmp_path, monkeypatch):
    # a stale folder (its owner lock is free) goes; one whose lock is held stays
    monkeypatch.setattr(corpus_module, "_scratch_parent", lambda n_bytes: str(tmp_path))
    stale = tmp_path / "serlib-features-1-abc"
    stale.mkdir()
    (stale / "owner.lock").touch()
    (stale / "rows0.npy").write_bytes(b"x" * 100)
    unrelated = tmp_path / "other-folder"
    unrelated.mkdir()
    with corpus_module._scratch(0) as live:
        assert not stale.exists() and os.path.isdir(live)
        assert corpus_module.remove_stale_scratch((str(tmp_path),)) == []
        assert os.path.isdir(live)
    assert not os.path.exists(live) and unrelated.is_dir()


def test_read_only_out_fails_before_computing(selection, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(extract_module, "extract_file",
                        lambda path, *, config: calls.append(path) or extract_file(path,
                                                                                 config=config))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(SerlibError, match="cannot write the feature store"):
        run(selection, blocker / "cache")
    assert calls == []
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(SerlibError, match="cannot write the feature store"):
            run(selection, ro)
        assert calls == []


def test_silent_clip_is_named(selection, tmp_path):
    silent = tmp_path / "wav" / "silent.wav"
    sf.write(silent, np.zeros(8000, dtype=np.float32), 16000)
    table = pd.concat([selection.iloc[:2],
                       pd.DataFrame([{"utterance_id": "silent", "path": str(silent)}])])
    for n_jobs in (1, 2):
        with pytest.warns(SilentAudioWarning, match=str(silent)):
            result = extract_corpus(table, config=CONFIG, cache_dir=None, n_jobs=n_jobs,
                                    progress=False)
        assert len(result) == 3


def test_max_seconds_follows_the_selection(synthetic_root, tmp_path, capsys):
    sel = tmp_path / "sel2.csv"
    assert main(["select", "--iemocap", str(synthetic_root), "--out", str(sel),
                 "--max-seconds", "2", "--quiet"]) == 0
    config = feature_config_for(sel, "mfcc")
    assert config.max_seconds == 2.0 and config.n_frames == 87
    assert config.fingerprint() != FeatureConfig.preset("mfcc").fingerprint()
    capsys.readouterr()
    assert main(["features", "--selection", str(sel), "--kind", "mfcc", "--out",
                 str(tmp_path / "cache"), "--quiet", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "(40, 87)" in out and str(tmp_path / "cache" / config.fingerprint()) in out


def test_warm_features_command_imports_no_librosa_or_torch(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
        rows.append({"utterance_id": f"u{i}", "path": str(path), "speaker": "s", "label": "anger"})
    csv = tmp_path / "sel.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    args = ["features", "--selection", str(csv), "--kind", "mfcc", "--out", str(tmp_path / "c"),
            "--quiet", "--jobs", "1"]
    assert main(args) == 0
    script = textwrap.dedent(f"""
        import sys
        from serlib.cli import main
        assert main({args!r}) == 0
        loaded = {{m.split(".")[0] for m in sys.modules}} & {{"librosa", "torch", "sklearn"}}
        print(",".join(sorted(loaded)) or "none")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "reused 3" in proc.stdout and proc.stdout.strip().endswith("none")


@pytest.mark.slow
def test_features_command_survives_random_kills(synthetic_root, tmp_path):
    """SIGKILL `serlib features` at seeded random moments, truncate a random store file after
    each kill, rerun: the final store equals an uninterrupted one, and no scratch is left."""
    import tempfile
    import time

    sel = tmp_path / "sel.csv"
    assert main(["select", "--iemocap", str(synthetic_root), "--out", str(sel), "--quiet"]) == 0

    def command(out):
        return [sys.executable, "-m", "serlib", "features", "--selection", str(sel), "--kind",
                "spectrogram", "--out", str(out), "--jobs", "2", "--commit-every", "8",
                "--quiet"]

    start = time.perf_counter()
    subprocess.run(command(tmp_path / "ref"), check=True, capture_output=True, timeout=600)
    duration = time.perf_counter() - start
    rng = np.random.default_rng(20261201)
    config = feature_config_for(sel, "spectrogram")
    store = FeatureStore(tmp_path / "cache", config, dtype="float32")
    pids, kills = [], 0
    for _ in range(5):
        proc = subprocess.Popen(command(tmp_path / "cache"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        pids.append(proc.pid)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        files = sorted(p for p in store.root.glob("*") if p.is_file() and p.name != ".lock") \
            if store.root.is_dir() else []
        if files:
            victim = files[rng.integers(len(files))]
            size = victim.stat().st_size
            with open(victim, "r+b") as handle:
                handle.truncate(int(rng.integers(0, max(size, 1))))
    assert kills >= 2, f"only {kills} of 5 runs were killed (duration {duration:.1f} s)"
    final = subprocess.run(command(tmp_path / "cache"), capture_output=True, text=True,
                           timeout=600)
    assert final.returncode == 0, final.stderr
    pids.append(-1)

    reference = FeatureStore(tmp_path / "ref", config, dtype="float32")
    ref_index, index = reference.read_index(), store.read_index()
    assert not index.damaged and set(index.entries) == set(ref_index.entries)
    ids = sorted(ref_index.entries)
    np.testing.assert_array_equal(store.read(index, ids), reference.read(ref_index, ids))
    assert json.loads((store.root / "config.json").read_text()) == config.to_dict()
    for parent in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(parent):
            left = [n for n in os.listdir(parent)
                    if any(n.startswith(f"serlib-features-{pid}-") for pid in pids)]
            assert left == [], parent
    assert [p for p in store.root.rglob("*") if p.name.endswith(".tmp")] == []
    assert sorted(p.name for p in store.root.glob("features-*.npy")) == sorted(index.shards)
