"""Feature extraction benchmark: a naive librosa loop against serlib, cold and warm cache.

Prints JSON. Both paths do the same work, the paper's input to the model (each clip resampled
to 22,050 Hz, cut or zero-padded to 6 s, 128-band mel spectrogram in dB: 128 x 259), on the
same clips, in one run:

- ``naive_clips_per_s``: a per-file loop in one process, ``librosa.load(path, sr=22050)`` +
  ``librosa.util.fix_length`` (6 s) + ``librosa.feature.melspectrogram`` +
  ``librosa.power_to_db`` with the same parameters;
- ``serlib_cold_clips_per_s``: ``serlib.features.extract_corpus`` with an empty cache (all
  cores);
- ``serlib_warm_clips_per_s``: the same call again, every clip in the cache (median of 5);
- ``cold_speedup``, ``warm_speedup``: the ratios to the naive loop;
- ``max_abs_db_diff``: the largest |difference| in dB between the two paths' features (whole
  128 x 259 matrices);
- ``peak_rss_mb``: peak resident memory of this process plus its children.

Naive and cold runs alternate ``--repeats`` times (medians), so that a slow moment of a shared
machine hits both. Both paths are warmed up first: librosa's lazy imports, and serlib's worker
pool (started once per process and reused by every later call). Clips: 200 generated 6 s
speech-like clips at 16 kHz (resampled to 22,050 Hz by both paths), and separately, under
"emodb", the real clips of ../shared/data/emodb when present (2 s on average at 22,050 Hz,
padded to 6 s by both paths).

Whole processes (``--part whole-process``, on by default), under "whole_process": on the small
generated corpus (``serlib synth --size small``, 360 clips, selected with ``serlib select``),
each timed as a fresh ``python`` process, interleaved ``--repeats`` times (medians):

- ``naive_s``: a plain script (:data:`NAIVE_SCRIPT`) that imports librosa and loops over the
  selection's files as above, saving the stacked features with ``np.save``;
- ``cold_s``: ``python -m serlib features --kind spectrogram`` into an empty cache;
- ``warm_s``: the same command again, every clip cached;
- ``help_s`` / ``import_pandas_s``: ``python -m serlib --help`` against ``python -c "import
  pandas"``;
- ``cold_speedup``, ``warm_speedup`` (naive / serlib) and ``help_ratio`` (help / pandas).

Usage: python benchmarks/features.py [--clips 200] [--repeats 5] [--jobs N] [--no-emodb]
       [--part in-process|whole-process|both]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure the serlib beside this script (the subprocesses too)

from serlib.features import FeatureConfig, extract_corpus, extract_file  # noqa: E402

EMODB = Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb"


def speech_like(*, duration_s: float, sample_rate: int, seed: int) -> np.ndarray:
    """A speech-like clip: serlib's synthesizer if present, else a harmonic source."""
    try:
        from serlib.corpora.synthetic import synthesize_speech
    except ImportError:
        synthesize_speech = None
    if synthesize_speech is not None:
        return synthesize_speech(duration_s=duration_s, sample_rate=sample_rate, seed=seed)
    # Substitute: a gliding f0 with 30 decaying harmonics, syllable-rate amplitude, noise.
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * sample_rate)) / sample_rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + rng.uniform(-20, 40)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    y = sum(np.sin(k * phase) / k for k in range(1, 31))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)) ** 2
    y = envelope * y + 0.05 * rng.standard_normal(t.size)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def naive_features(path: str, config: FeatureConfig) -> np.ndarray:
    """The same features as serlib's, written by hand with librosa: load (resampled), cut or
    zero-pad to the model's 6 s (``config.n_samples``), mel spectrogram, dB. Shape
    (n_mels, n_frames), as serlib's."""
    y, sr = librosa.load(path, sr=config.sample_rate)
    y = librosa.util.fix_length(y, size=config.n_samples)
    mel = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=config.n_fft, hop_length=config.hop_length,
        win_length=config.win_length, window=config.window, center=config.center,
        pad_mode=config.pad_mode, power=config.power, n_mels=config.n_mels, fmin=config.fmin,
        fmax=config.fmax_hz, htk=config.htk, norm=config.mel_norm,
    )
    return librosa.power_to_db(mel, ref=config.db_ref, amin=config.amin, top_db=config.top_db)


def compare(selection: pd.DataFrame, *, config: FeatureConfig, jobs: int | None,
            cache_dir: Path, repeats: int) -> dict:
    """Time the naive loop and a cold serlib run ``repeats`` times, interleaved (medians)."""
    paths = list(selection["path"])
    # first calls pay one-off costs, kept out of both: librosa's lazy imports and caches, and
    # serlib's worker pool (started once per process, about 0.1 s, then reused by every call)
    naive_features(paths[0], config)
    extract_file(paths[0], config=config)
    extract_corpus(selection.head(2 * (jobs or os.cpu_count() or 1)), config=config,
                   cache_dir=None, n_jobs=jobs, progress=False)
    naive_times, cold_times = [], []
    for r in range(repeats):
        start = time.perf_counter()
        naive = [naive_features(p, config) for p in paths]
        naive_times.append(time.perf_counter() - start)

        start = time.perf_counter()
        cold = extract_corpus(selection, config=config, cache_dir=cache_dir / f"run{r}",
                              n_jobs=jobs, progress=False)
        cold_times.append(time.perf_counter() - start)
        assert cold.n_computed == len(paths), cold.n_computed

    warm_times = []
    for _ in range(5):
        start = time.perf_counter()
        warm = extract_corpus(selection, config=config, cache_dir=cache_dir / "run0",
                              n_jobs=jobs, progress=False)
        warm_times.append(time.perf_counter() - start)
        assert warm.n_reused == len(paths), warm.n_reused
    assert np.array_equal(warm.features, cold.features)
    naive_s = statistics.median(naive_times)
    cold_s = statistics.median(cold_times)
    warm_s = statistics.median(warm_times)

    diff = 0.0
    for reference, ours in zip(naive, cold.features, strict=True):
        assert reference.shape == ours.shape == config.shape
        diff = max(diff, float(np.abs(reference - ours).max()))
    n_clips = len(paths)
    return {
        "n_clips": n_clips,
        "repeats": repeats,
        "naive_clips_per_s": round(n_clips / naive_s, 1),
        "serlib_cold_clips_per_s": round(n_clips / cold_s, 1),
        "serlib_warm_clips_per_s": round(n_clips / warm_s, 1),
        "cold_speedup": round(naive_s / cold_s, 2),
        "warm_speedup": round(naive_s / warm_s, 1),
        "max_abs_db_diff": diff,
    }


NAIVE_SCRIPT = """
import csv, sys
import librosa
import numpy as np
selection, out = sys.argv[1], sys.argv[2]
rows = []
with open(selection, newline="") as handle:
    for record in csv.DictReader(handle):
        y, sr = librosa.load(record["path"], sr=22050)
        y = librosa.util.fix_length(y, size=6 * 22050)
        mel = librosa.feature.melspectrogram(
            y=y, sr=sr, n_fft=2048, hop_length=512, win_length=2048, window="hann",
            center=True, pad_mode="constant", power=2.0, n_mels=128, fmin=0.0, fmax=11025.0,
            htk=False, norm="slaney")
        rows.append(librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0))
np.save(out, np.stack(rows))
"""


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   cwd=REPO)
    return time.perf_counter() - start


def whole_process(tmp: Path, *, repeats: int, jobs: int | None) -> dict:
    """Time whole processes on the small generated corpus (see the module docstring)."""
    from serlib.corpora import load_iemocap, select_utterances, write_selection
    from serlib.corpora.synthetic import generate_corpus

    root = generate_corpus(tmp / "generated", seed=0, size="small", progress=False)
    selection = tmp / "selection.csv"
    write_selection(select_utterances(load_iemocap(root)), selection)
    n_clips = sum(1 for _ in open(selection)) - 1
    script = tmp / "naive.py"
    script.write_text(NAIVE_SCRIPT)
    python = sys.executable
    jobs_args = [] if jobs is None else ["--jobs", str(jobs)]

    def features(cache: Path) -> list[str]:
        return [python, "-m", "serlib", "features", "--selection", str(selection), "--kind",
                "spectrogram", "--out", str(cache), "--quiet", *jobs_args]

    # one-off costs kept out of every timing: bytecode caches, the page cache of the wavs
    _timed([python, script.as_posix(), str(selection), str(tmp / "naive0.npy")])
    _timed(features(tmp / "cache-warmup"))
    times: dict[str, list[float]] = {k: [] for k in ("naive", "cold", "warm", "help", "pandas")}
    for r in range(repeats):
        times["naive"].append(_timed([python, str(script), str(selection),
                                      str(tmp / "naive.npy")]))
        times["cold"].append(_timed(features(tmp / f"cache{r}")))
        times["warm"].append(_timed(features(tmp / f"cache{r}")))
        times["help"].append(_timed([python, "-m", "serlib", "--help"]))
        times["pandas"].append(_timed([python, "-c", "import pandas"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    # the same numbers: serlib's store against the naive script's arrays
    from serlib.corpora import read_selection
    from serlib.features import FeatureStore, feature_config_for

    config = feature_config_for(selection, "spectrogram")
    store = FeatureStore(tmp / "cache0", config, dtype="float32")
    ids = list(read_selection(selection)["utterance_id"])
    ours = store.read(store.read_index(), ids)
    naive = np.load(tmp / "naive.npy")
    return {
        "n_clips": n_clips,
        "repeats": repeats,
        "naive_s": round(med["naive"], 2),
        "cold_s": round(med["cold"], 2),
        "warm_s": round(med["warm"], 2),
        "help_s": round(med["help"], 3),
        "import_pandas_s": round(med["pandas"], 3),
        "cold_speedup": round(med["naive"] / med["cold"], 2),
        "warm_speedup": round(med["naive"] / med["warm"], 2),
        "help_ratio": round(med["help"] / med["pandas"], 2),
        "max_abs_db_diff": float(np.abs(ours - naive).max()),
    }


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + children) / scale, 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats")
    parser.add_argument("--no-emodb", action="store_true")
    parser.add_argument("--part", choices=("in-process", "whole-process", "both"),
                        default="both")
    args = parser.parse_args(argv)
    config = FeatureConfig.preset("spectrogram")
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "config_fingerprint": config.fingerprint(),
    }
    with tempfile.TemporaryDirectory(prefix="serlib-bench-") as tmp:
        tmp = Path(tmp)
        if args.part != "in-process":
            report["whole_process"] = whole_process(tmp / "whole", repeats=args.repeats,
                                                    jobs=args.jobs)
            report["whole_process"]["clips"] = "serlib synth --size small, paper selection"
        if args.part == "whole-process":
            report["peak_rss_mb"] = peak_rss_mb()
            print(json.dumps(report, indent=2))
            return report
        rows = []
        for i in range(args.clips):
            path = tmp / "wav" / f"clip{i:03d}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, speech_like(duration_s=6.0, sample_rate=16000, seed=i), 16000,
                     subtype="PCM_16")
            rows.append((f"clip{i:03d}", str(path)))
        selection = pd.DataFrame(rows, columns=["utterance_id", "path"])
        report["generated"] = compare(selection, config=config, jobs=args.jobs,
                                      cache_dir=tmp / "cache", repeats=args.repeats)
        report["generated"]["clips"] = "6 s speech-like at 16 kHz, 16-bit WAV"
        manifest = EMODB / "manifest.csv"
        if manifest.exists() and not args.no_emodb:
            table = pd.read_csv(manifest, dtype=str)
            emodb = pd.DataFrame({
                "utterance_id": [Path(p).stem for p in table["path"]],
                "path": [str(EMODB / p) for p in table["path"]],
            })
            report["emodb"] = compare(emodb, config=config, jobs=args.jobs,
                                      cache_dir=tmp / "cache-emodb", repeats=args.repeats)
            report["emodb"]["clips"] = "EmoDB, 2.0 s on average at 22,050 Hz (padded to 6 s)"
    report["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
