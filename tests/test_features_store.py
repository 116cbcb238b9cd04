"""extract_corpus and the feature store: order, reuse, invalidation, atomicity, bad files."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serlib.errors import SerlibError
from serlib.features import FeatureConfig, FeatureStore, extract_corpus, extract_file

extract_module = importlib.import_module("serlib.features.extract")
store_module = importlib.import_module("serlib.features.store")
corpus_module = importlib.import_module("serlib.features.corpus")
CONFIG = FeatureConfig.preset("mfcc", max_seconds=1.0)  # small and quick


def write_clip(path, seconds: float, seed: int, sr: int = 16000) -> str:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    y = 0.2 * np.sin(2 * np.pi * (150 + 20 * seed) * t) + 0.02 * rng.standard_normal(t.size)
    sf.write(path, y.astype(np.float32), sr, subtype="PCM_16")
    return str(path)


@pytest.fixture
def selection(tmp_path) -> pd.DataFrame:
    wav = tmp_path / "wav"
    wav.mkdir()
    rows = [(f"utt{i}", write_clip(wav / f"utt{i}.wav", 0.3 + 0.25 * i, seed=i)) for i in range(6)]
    return pd.DataFrame(rows, columns=["utterance_id", "path"]).assign(label="neutral")


class Counter:
    """Wraps extract_file and counts the clips it extracts (n_jobs=1 runs in-process)."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[str] = []
        self.fail_after = fail_after

    def __call__(self, path, *, config):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(str(path))
        return extract_file(path, config=config)


def run(selection, cache, **kwargs):
    kwargs.setdefault("n_jobs", 1)
    return extract_corpus(selection, config=CONFIG, cache_dir=cache, progress=False, **kwargs)


def test_features_in_selection_order(selection, tmp_path):
    result = run(selection.iloc[::-1], tmp_path / "cache")
    assert result.features.shape == (6, *CONFIG.shape)
    assert result.features.dtype == np.float32
    assert result.utterance_ids == [f"utt{i}" for i in range(5, -1, -1)]
    for row, path in zip(result.features, selection["path"].iloc[::-1], strict=True):
        np.testing.assert_array_equal(row, extract_file(path, config=CONFIG))
    assert (result.n_computed, result.n_reused, result.skipped) == (6, 0, [])
    assert result.store_path == tmp_path / "cache" / CONFIG.fingerprint()
    assert (result.store_path / "config.json").is_file()


def test_second_run_does_no_work(selection, tmp_path, monkeypatch):
    first = run(selection, tmp_path / "cache")
    counter = Counter()
    monkeypatch.setattr(extract_module, "extract_file", counter)
    second = run(selection, tmp_path / "cache")
    assert counter.calls == []
    assert (second.n_computed, second.n_reused) == (0, 6)
    np.testing.assert_array_equal(second.features, first.features)
    # a subset in another order is served from the same store
    subset = run(selection.iloc[[4, 1]], tmp_path / "cache")
    assert counter.calls == [] and subset.utterance_ids == ["utt4", "utt1"]
    np.testing.assert_array_equal(subset.features, first.features[[4, 1]])


def test_changed_parameter_recomputes(selection, tmp_path, monkeypatch):
    run(selection, tmp_path / "cache")
    counter = Counter()
    monkeypatch.setattr(extract_module, "extract_file", counter)
    other = CONFIG.replace(n_mfcc=20)
    result = extract_corpus(selection, config=other, cache_dir=tmp_path / "cache", n_jobs=1,
                            progress=False)
    assert len(counter.calls) == 6 and result.features.shape == (6, 20, CONFIG.n_frames)
    assert result.store_path.name == other.fingerprint() != CONFIG.fingerprint()


def test_touched_file_recomputes_only_that_file(selection, tmp_path, monkeypatch):
    first = run(selection, tmp_path / "cache")
    path = selection["path"].iloc[2]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    counter = Counter()
    monkeypatch.setattr(extract_module, "extract_file", counter)
    second = run(selection, tmp_path / "cache")
    assert counter.calls == [path]
    assert (second.n_computed, second.n_reused) == (1, 5)
    np.testing.assert_array_equal(second.features, first.features)
    # a rewritten file gets new features
    write_clip(path, 0.8, seed=99)
    third = run(selection, tmp_path / "cache")
    assert not np.array_equal(third.features[2], first.features[2])
    np.testing.assert_array_equal(third.features[[0, 1, 3, 4, 5]], first.features[[0, 1, 3, 4, 5]])
    # updates append a shard; every shard on disk is one the index names
    names = sorted(p.name for p in third.store_path.glob("features-*.npy"))
    index = FeatureStore(tmp_path / "cache", CONFIG, dtype="float32").read_index()
    assert names == sorted(index.shards)


def test_float16_store(selection, tmp_path):
    full = run(selection, tmp_path / "cache")
    half = run(selection, tmp_path / "cache", dtype="float16")
    assert half.features.dtype == np.float16
    np.testing.assert_allclose(half.features.astype(np.float32), full.features, rtol=1e-3,
                               atol=0.05)
    again = run(selection, tmp_path / "cache", dtype="float16")
    assert again.n_computed == 0


def test_parallel_equals_serial(selection, tmp_path):
    serial = run(selection, None)
    parallel = run(selection, tmp_path / "cache", n_jobs=2)
    assert parallel.n_computed == 6
    np.testing.assert_allclose(parallel.features, serial.features, atol=1e-4)
    assert serial.store_path is None


def test_parallel_scratch_is_in_memory_only_when_there_is_room(selection, tmp_path,
                                                                 monkeypatch):
    assert corpus_module._scratch_parent(10**18) is None    # no room: the default temp folder
    shm_usable = os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
    assert corpus_module._scratch_parent(1) == ("/dev/shm" if shm_usable else None)
    # either place gives the same features, and the scratch folder is gone afterwards
    config = FeatureConfig.preset("mfcc")
    in_memory = extract_corpus(selection, config=config, cache_dir=None, n_jobs=2,
                               progress=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(corpus_module, "_scratch_parent", lambda n_bytes: str(scratch))
    on_disk = extract_corpus(selection, config=config, cache_dir=None, n_jobs=2,
                             progress=False)
    np.testing.assert_array_equal(in_memory.features, on_disk.features)
    assert list(scratch.iterdir()) == []


def test_crash_midway_leaves_no_store(selection, tmp_path, monkeypatch):
    monkeypatch.setattr(extract_module, "extract_file", Counter(fail_after=3))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(selection, tmp_path / "cache")
    assert FeatureStore(tmp_path / "cache", CONFIG, dtype="float32").read_index() is None
    assert not list((tmp_path / "cache").rglob("index-*.json"))
    counter = Counter()
    monkeypatch.setattr(extract_module, "extract_file", counter)
    assert run(selection, tmp_path / "cache").n_computed == 6
    assert len(counter.calls) == 6


def test_crash_between_array_and_index(selection, tmp_path, monkeypatch):
    run(selection.iloc[:3], tmp_path / "cache")
    store = FeatureStore(tmp_path / "cache", CONFIG, dtype="float32")
    before = store.read_index()

    def crash(*args, **kwargs):
        raise RuntimeError("killed before the index")

    monkeypatch.setattr(store_module, "atomic_write_json", crash)
    with pytest.raises(RuntimeError):
        run(selection, tmp_path / "cache")
    # the previous store is intact and complete; the orphan shard is not used
    after = store.read_index()
    assert after is not None and after.shards == before.shards and len(after.entries) == 3
    assert len(list(store.root.glob("features-*.npy"))) == 2  # the orphan, left by the crash
    monkeypatch.undo()
    result = run(selection, tmp_path / "cache")
    assert (result.n_computed, result.n_reused) == (3, 3)
    # the next writer removed the orphan; every shard on disk is one the index names
    shards = sorted(p.name for p in result.store_path.glob("features-*.npy"))
    assert shards == sorted(store.read_index().shards) and len(shards) == 2


def test_sigkill_midway_leaves_no_store(selection, tmp_path):
    csv = tmp_path / "selection.csv"
    selection.to_csv(csv, index=False)
    script = textwrap.dedent(f"""
        import importlib, os, signal
        import pandas as pd
        from serlib.features import FeatureConfig, extract_corpus, extract_file
        module = importlib.import_module("serlib.features.extract")
        calls = []
        def worker(path, *, config):
            calls.append(path)
            if len(calls) == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return extract_file(path, config=config)
        module.extract_file = worker
        config = FeatureConfig.from_dict({CONFIG.to_dict()!r})
        extract_corpus(pd.read_csv({str(csv)!r}), config=config,
                       cache_dir={str(tmp_path / "cache")!r}, n_jobs=1, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert FeatureStore(tmp_path / "cache", CONFIG, dtype="float32").read_index() is None
    assert run(selection, tmp_path / "cache").n_computed == 6


def test_bad_file_fails_after_storing_the_good_ones(selection, tmp_path, monkeypatch):
    bad = tmp_path / "wav" / "bad.wav"
    bad.write_bytes(b"garbage" * 20)
    table = pd.concat([selection, pd.DataFrame([{"utterance_id": "bad", "path": str(bad)}])])
    with pytest.raises(SerlibError, match="bad audio") as info:
        run(table, tmp_path / "cache")
    assert str(bad) in str(info.value) and "other clips are stored" in str(info.value)
    counter = Counter()
    monkeypatch.setattr(extract_module, "extract_file", counter)
    result = run(table, tmp_path / "cache", skip_errors=True)
    assert (result.n_computed, result.n_reused) == (0, 6)
    assert counter.calls == [str(bad)]  # only the bad file is tried again


def test_skip_errors_lists_bad_files(selection, tmp_path):
    bad = tmp_path / "wav" / "bad.wav"
    bad.write_bytes(b"garbage" * 20)
    missing = tmp_path / "wav" / "missing.wav"
    extra = pd.DataFrame([{"utterance_id": "bad", "path": str(bad)},
                          {"utterance_id": "gone", "path": str(missing)}])
    table = pd.concat([extra.iloc[:1], selection, extra.iloc[1:]])
    result = run(table, tmp_path / "cache", skip_errors=True)
    assert result.utterance_ids == [f"utt{i}" for i in range(6)]
    assert result.features.shape[0] == 6
    assert [path for path, _ in result.skipped] == [str(bad), str(missing)]
    assert "unreadable" in result.skipped[0][1] and "not found" in result.skipped[1][1]


def test_selection_validation(selection, tmp_path):
    with pytest.raises(SerlibError, match="utterance_id and path"):
        run(selection.drop(columns="path"), tmp_path / "cache")
    with pytest.raises(SerlibError, match="utt0"):
        run(pd.concat([selection, selection.iloc[:1]]), tmp_path / "cache")
    with pytest.raises(SerlibError, match="dtype"):
        run(selection, tmp_path / "cache", dtype="float64")
    with pytest.raises(SerlibError, match="backend"):
        run(selection, tmp_path / "cache", backend="jax")
    with pytest.raises(SerlibError, match="n_jobs"):
        run(selection, tmp_path / "cache", n_jobs=0)
