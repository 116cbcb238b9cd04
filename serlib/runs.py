"""The run folder: the one home of its format (paths, atomic folds, finished folds, loading).

A run is one training configuration and seed, cross-validated; its folder is the contract
between training (:func:`serlib.training.run_cross_validation`), the grid
(:func:`serlib.grid.run_grid`), the results chapter and prediction::

    run_dir/config.json        resolved TrainConfig + FeatureConfig + selection + commit +
                               the versions that shape the numbers (python, torch, ...)
    run_dir/fold_<k>/          checkpoint.pt, metrics.json, predictions.csv, history.csv,
                               validation.csv (the validation part's predictions; runs
                               written before issue 22 lack it)
    run_dir/predictions.csv    every test prediction with class probabilities
    run_dir/history.csv        per-epoch train/validation curves of every fold
    run_dir/summary.json       mean and std over folds of WA and UA, protocol, corpus, device
    run_dir/.lock              held by the one process that writes the folder
    run_dir/.serlib-run        marks the folder as serlib's (a folder of other files is refused)

Guarantees:

- a fold appears whole or not at all: its four files are written into a scratch folder beside
  it, which is renamed to ``fold_<k>`` in one step;
- a fold counts as finished only when every file loads (``metrics.json`` parses with the
  expected keys, ``checkpoint.pt`` loads with ``torch.load(weights_only=True)``,
  ``predictions.csv`` holds exactly the fold's test utterances); anything else is reported
  (a warning naming the file and the problem) and the fold is trained again;
- ``config.json`` is written only when training is about to start, after everything the run
  needs was checked, so a failed start leaves no configuration behind that blocks the
  corrected command.

This module imports torch only where a checkpoint is read.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serlib._io import atomic_directory, atomic_path, atomic_write_json
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES
from serlib.provenance import commit_hash

#: Files of one finished fold (``metrics.json`` is read first by :func:`finished_fold`).
FOLD_FILES = ("checkpoint.pt", "metrics.json", "predictions.csv", "history.csv")
#: Optional file of a fold (runs written since issue 22): the validation part's predictions.
VALIDATION_FILE = "validation.csv"
#: Files of a finished run, besides its folds.
RUN_FILES = ("config.json", "predictions.csv", "history.csv", "summary.json")
#: Keys every ``fold_<k>/metrics.json`` has.
METRIC_KEYS = ("fold", "wa", "ua", "macro_f1", "per_class_recall", "confusion", "best_epoch",
               "n_train", "n_val", "n_test")
#: Columns of ``predictions.csv`` (per fold and whole run).
PREDICTION_COLUMNS = ("utterance_id", "fold", "speaker", "label", "predicted",
                      *(f"p_{name}" for name in PAPER_CLASSES))


#: Columns of a run's CSV files that are text: read as strings (speaker "03" stays "03").
TEXT_COLUMNS = {"utterance_id": str, "speaker": str, "label": str, "predicted": str}


def read_run_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A run folder's ``predictions.csv`` or ``history.csv``: text columns as strings, no NA
    guessing (an utterance or speaker named ``NA`` stays itself)."""
    return pd.read_csv(path, dtype=TEXT_COLUMNS, keep_default_na=False)


class RunFolderWarning(UserWarning):
    """A fold on disk is damaged or incomplete and will be trained again."""


def fold_dir(run_dir: str | os.PathLike, fold: int) -> Path:
    """``run_dir/fold_<fold>`` (folds are numbered from 1)."""
    return Path(run_dir) / f"fold_{fold}"


# ----------------------------------------------------------------------------- config.json
def environment_versions(device_type: str = "cpu") -> dict:
    """Versions of what shapes a run's numbers: Python and the numeric libraries; CUDA and
    cuDNN when ``device_type`` is ``"cuda"``."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name, dist in (("torch", "torch"), ("librosa", "librosa"), ("numpy", "numpy"),
                       ("scikit-learn", "scikit-learn"), ("pandas", "pandas")):
        try:
            versions[name] = version(dist)
        except PackageNotFoundError:
            versions[name] = None
    if device_type == "cuda":
        import torch

        versions["cuda"] = torch.version.cuda
        versions["cudnn"] = torch.backends.cudnn.version()
    return versions


def _identity(config: dict) -> tuple:
    # the same run: same training and feature config, same utterances (wherever the selection
    # CSV lives now); commit and versions may change between a start and its resume
    selection = {k: v for k, v in (config.get("selection") or {}).items() if k != "path"}
    return config.get("train"), config.get("features"), selection


def read_config(run_dir: str | os.PathLike) -> dict | None:
    """``config.json`` of a run folder, or None when there is none yet.

    A damaged one (it is written atomically, so something else truncated it) is reported with
    a :class:`RunFolderWarning` and taken as absent: it is written again, and each fold is
    then trusted only if its checkpoint records the same training configuration.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict) or "train" not in config:
            raise ValueError("no 'train' section")
        return config
    except (OSError, ValueError) as error:
        warnings.warn(f"{path}: damaged ({error}); it is written again and every fold is "
                      "checked against its checkpoint's configuration", RunFolderWarning,
                      stacklevel=2)
        return None


def config_differences(on_disk: dict, now: dict) -> list[str]:
    """What differs between two run identities (``config.json`` contents), one
    ``"section.field: A on disk, B now"`` per field (the selection's path is not compared)."""
    differences = []
    for section, old, new in zip(("train", "features", "selection"), _identity(on_disk),
                                 _identity(now), strict=True):
        old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key, "(absent)") != new.get(key, "(absent)"):
                differences.append(f"{section}.{key}: {old.get(key, '(absent)')!r} on disk, "
                                   f"{new.get(key, '(absent)')!r} now")
    return differences


def check_config(run_dir: str | os.PathLike, resolved: dict) -> bool:
    """Whether ``run_dir`` already has ``config.json`` for the run ``resolved`` describes.

    Returns False when the folder has no configuration yet. Raises :class:`SerlibError` when
    it holds another run (other training or feature settings, or other utterances), naming
    every field that differs. Raises too when the folder holds files serlib did not write
    (:func:`check_run_folder`).
    """
    check_run_folder(run_dir)
    previous = read_config(run_dir)
    if previous is None:
        return False
    if _identity(previous) != _identity(resolved):
        differences = config_differences(previous, resolved)
        shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more"
                                              if len(differences) > 8 else "")
        raise SerlibError(
            f"{run_dir}: holds a run with a different configuration or selection ({shown}); "
            "use another --out (or delete it) to start a new run"
        )
    return True


#: The file that marks a folder as a serlib run folder (written before ``config.json``).
MARKER = ".serlib-run"


def _is_serlib_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    # a ResNet run ("train") or a baseline's ("baseline", serlib.baselines)
    return isinstance(config, dict) and ("train" in config or "baseline" in config) \
        and all(k in config for k in ("features", "selection"))


def check_run_folder(run_dir: str | os.PathLike) -> None:
    """Refuse a folder that holds files serlib did not write: serlib never writes over them.

    A folder is a run folder when it holds :data:`MARKER` (or, for runs written before the
    marker, a ``config.json`` with serlib's sections). A missing or empty folder (or one
    holding only a lock or scratch files) is fine; anything else is refused, naming what is
    there. Reads only.
    """
    from serlib.locking import LOCK_NAME

    folder = Path(run_dir)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise SerlibError(f"{folder}: exists and is not a folder; a run folder is a folder")
    if (folder / MARKER).is_file() or _is_serlib_config(folder / "config.json"):
        return
    foreign = sorted(p.name for p in folder.iterdir()
                     if p.name != LOCK_NAME and not p.name.endswith(".tmp"))
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" (and {len(foreign) - 10} more)"
                                           if len(foreign) > 10 else "")
        raise SerlibError(
            f"{folder}: not a serlib run folder (no {MARKER} or serlib config.json), and it "
            f"holds {shown}; serlib never writes over files it did not write: give --out a "
            "new or empty folder")


def write_config(run_dir: str | os.PathLike, resolved: dict, *, device_type: str) -> Path:
    """Write the run-folder marker and ``config.json`` (``resolved`` + commit + versions),
    atomically."""
    atomic_write_json(Path(run_dir) / MARKER, {"serlib": "run folder"})
    return atomic_write_json(Path(run_dir) / "config.json", {
        **resolved, "commit": commit_hash(), "versions": environment_versions(device_type)})


def forget_failed_start(run_dir: str | os.PathLike) -> bool:
    """After a run that stopped before any fold was finished: remove the ``config.json`` it
    wrote, so that a corrected command is not refused as "another configuration". Only call
    it while holding the folder's lock, for a config written by this call. Returns whether
    it was removed (not when a fold folder is there)."""
    folder = Path(run_dir)
    if any(folder.glob("fold_*")):
        return False
    (folder / "config.json").unlink(missing_ok=True)
    return True


# ----------------------------------------------------------------------------- folds
def write_fold(run_dir: str | os.PathLike, fold: int, *, checkpoint: dict, metrics: dict,
               predictions: pd.DataFrame, history: pd.DataFrame,
               validation: pd.DataFrame | None = None) -> Path:
    """Write one finished fold at once: a scratch folder renamed to ``fold_<fold>``.

    ``validation``: the chosen epoch's predictions on the fold's validation part (columns of
    :data:`PREDICTION_COLUMNS`), written as ``validation.csv`` (:data:`VALIDATION_FILE`; what
    :mod:`serlib.calibration` fits a temperature on; None: the run has no validation part,
    ``val_fraction=0``). A damaged ``fold_<fold>`` already there
    is replaced. Returns the fold's folder.
    """
    import torch

    missing = [k for k in METRIC_KEYS if k not in metrics]
    if missing:
        raise SerlibError(f"fold {fold}: metrics lack {', '.join(missing)}")
    buffer = io.BytesIO()      # serialised in memory: a full disk is then a plain OSError
    torch.save(checkpoint, buffer)
    with atomic_directory(fold_dir(run_dir, fold)) as tmp:
        (tmp / "checkpoint.pt").write_bytes(buffer.getbuffer())
        predictions.to_csv(tmp / "predictions.csv", index=False)
        history.to_csv(tmp / "history.csv", index=False)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        names = FOLD_FILES
        if validation is not None:
            validation.to_csv(tmp / VALIDATION_FILE, index=False)
            names = (*FOLD_FILES, VALIDATION_FILE)
        # rename(2) of the folder is atomic; the files inside must be on disk before it
        for name in names:
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
    return fold_dir(run_dir, fold)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _damaged(folder: Path, name: str, problem: str) -> None:
    warnings.warn(f"{folder / name}: {problem}; fold {folder.name} will be trained again",
                  RunFolderWarning, stacklevel=3)


def finished_fold(run_dir: str | os.PathLike, fold: int, *,
                  utterance_ids: list[str] | np.ndarray | None = None,
                  train_config: dict | None = None) -> dict | None:
    """The fold's metrics if every file of ``fold_<fold>`` loads, else None.

    A missing fold folder returns None silently; a damaged one (a missing, empty, truncated
    or inconsistent file) returns None with a :class:`RunFolderWarning` that names the file.
    Never raises for what is on disk.

    Parameters
    ----------
    run_dir : path
    fold : int
        1-based.
    utterance_ids : sequence of str, optional
        The fold's test utterances; ``predictions.csv`` must hold exactly these.
    train_config : dict, optional
        ``TrainConfig.to_dict()`` of the run; the checkpoint must record the same.
    """
    folder = fold_dir(run_dir, fold)
    if not folder.exists():
        return None
    for name in FOLD_FILES:
        if not (folder / name).is_file():
            _damaged(folder, name, "missing")
            return None
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as error:
        _damaged(folder, "metrics.json", f"does not parse ({error})")
        return None
    if not isinstance(metrics, dict) or any(k not in metrics for k in METRIC_KEYS):
        _damaged(folder, "metrics.json", f"lacks some of the keys {', '.join(METRIC_KEYS)}")
        return None
    if metrics["fold"] != fold:
        _damaged(folder, "metrics.json", f"is fold {metrics['fold']!r}'s")
        return None
    try:
        import torch

        checkpoint = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise ValueError("no model weights inside")
        if train_config is not None and checkpoint.get("train_config") != train_config:
            _damaged(folder, "checkpoint.pt", "was trained with another configuration")
            return None
    except Exception as error:  # noqa: BLE001 - any failure to load means: train again
        _damaged(folder, "checkpoint.pt", f"does not load ({type(error).__name__}: "
                 f"{str(error)[:200]})")
        return None
    for name in ("predictions.csv", "history.csv"):
        try:
            table = read_run_csv(folder / name)
        except (OSError, ValueError) as error:
            _damaged(folder, name, f"does not parse ({error})")
            return None
        if name == "predictions.csv":
            if list(table.columns) != list(PREDICTION_COLUMNS):
                _damaged(folder, name, "has other columns than a fold's predictions")
                return None
            if utterance_ids is not None and \
                    sorted(table["utterance_id"].astype(str)) != sorted(map(str, utterance_ids)):
                _damaged(folder, name, f"does not hold exactly the fold's {len(utterance_ids)} "
                         "test utterances")
                return None
            if len(table) != metrics["n_test"]:
                _damaged(folder, name, f"has {len(table)} rows, metrics say "
                         f"n_test={metrics['n_test']}")
                return None
        elif table.empty:
            _damaged(folder, name, "is empty")
            return None
    return metrics


# ----------------------------------------------------------------------------- whole run
#: Keys of a fold's metrics that record how the fold ran, not what it scored (a resumed or
#: parallel run scores the same, bit for bit on the CPU, in a different time).
TIMING_KEYS = ("train_seconds",)


def without_timing(fold_metrics: list[dict]) -> list[dict]:
    """The folds' metrics without :data:`TIMING_KEYS`: what two runs of the same
    configuration must agree on."""
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in fold_metrics]


def summarise(fold_metrics: list[dict], *, config, corpus: str, n_utterances: int,
              device: str) -> dict:
    """Mean and standard deviation (ddof=1) across folds, plus where the numbers came from.

    ``config`` is a :class:`serlib.config.TrainConfig`. ``wall_seconds`` is the sum of the
    folds' ``train_seconds`` (each fold's training and test predictions, wherever and whenever
    it ran; None when a fold written by an older serlib lacks it), ``device`` where they ran.
    """
    def stats(key):
        values = np.array([m[key] for m in fold_metrics])
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    wa_mean, wa_std = stats("wa")
    ua_mean, ua_std = stats("ua")
    f1_mean, _ = stats("macro_f1")
    confusion = np.sum([np.array(m["confusion"]) for m in fold_metrics], axis=0)
    seconds = [m.get("train_seconds") for m in fold_metrics]
    known = all(isinstance(t, (int, float)) and np.isfinite(t) for t in seconds)
    return {
        "wa_mean": wa_mean, "wa_std": wa_std, "ua_mean": ua_mean, "ua_std": ua_std,
        "macro_f1_mean": f1_mean,
        "folds": fold_metrics,
        "confusion": confusion.tolist(),
        "class_names": list(PAPER_CLASSES),
        "protocol": config.protocol, "n_folds": config.folds,
        "feature": config.feature, "loss": config.loss,
        "gamma": config.gamma if config.loss == "focal" else 0.0,
        "width": config.width, "epochs": config.epochs,
        "corpus": corpus, "n_utterances": n_utterances,
        "commit": commit_hash(), "device": device,
        "wall_seconds": float(sum(seconds)) if known else None,
    }


def finish_run(run_dir: str | os.PathLike, fold_metrics: list[dict], *, config, corpus: str,
               n_utterances: int, device: str) -> dict:
    """Write the whole-run tables (rebuilt from the folds) and ``summary.json``; returns the
    summary. Every fold must be finished."""
    run_dir = Path(run_dir)
    n_folds = len(fold_metrics)
    # cheap, and keeps them consistent after a resume
    for name in ("predictions.csv", "history.csv"):
        frames = [read_run_csv(fold_dir(run_dir, k) / name)
                  for k in range(1, n_folds + 1)]
        with atomic_path(run_dir / name) as tmp:
            pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    summary = summarise(fold_metrics, config=config, corpus=corpus,
                        n_utterances=n_utterances, device=device)
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def remove_scratch(run_dir: str | os.PathLike) -> list[Path]:
    """Delete scratch files a killed writer left in ``run_dir`` (``.<name>.*.tmp``); only
    call it while holding the folder's lock. Returns what was removed."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    for path in Path(run_dir).glob(".fold_*.old-*"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# ----------------------------------------------------------------------------- reading
@dataclass
class Run:
    """One finished cross-validation run, as read from its folder."""

    path: Path
    summary: dict
    config: dict
    folds: list[dict]
    predictions: pd.DataFrame
    history: pd.DataFrame

    @property
    def feature(self) -> str:
        return self.summary["feature"]

    @property
    def loss(self) -> str:
        return self.summary["loss"]

    @property
    def name(self) -> str:
        return f"{self.feature} + {self.loss}"

    @property
    def versions(self) -> dict:
        """Versions recorded in ``config.json`` (empty for runs written before they were)."""
        return dict(self.config.get("versions") or {})


def _read_json(path: Path, run_dir: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SerlibError(f"{run_dir}: {path.name} does not parse ({error}); rerun the run "
                          "(serlib cv or serlib grid) to rewrite it") from None


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a finished run folder (summary, config, per-fold metrics, predictions, history).

    Raises :class:`SerlibError` naming the folder and the missing or damaged file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SerlibError(f"{run_dir}: run folder does not exist")
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise SerlibError(f"{run_dir}: not a finished run: {name} is missing "
                              "(run serlib cv, or rerun it to finish)")
    summary = _read_json(run_dir / "summary.json", run_dir)
    config = _read_json(run_dir / "config.json", run_dir)
    folds = []
    for k in range(1, int(summary["n_folds"]) + 1):
        metrics = fold_dir(run_dir, k) / "metrics.json"
        if not metrics.is_file():
            raise SerlibError(f"{run_dir}: fold_{k}/metrics.json is missing")
        folds.append(_read_json(metrics, run_dir))
    tables = {}
    for name in ("predictions.csv", "history.csv"):
        try:
            tables[name] = read_run_csv(run_dir / name)
        except (OSError, ValueError) as error:
            raise SerlibError(f"{run_dir}: {name} does not parse ({error})") from None
    return Run(path=run_dir, summary=summary, config=config, folds=folds,
               predictions=tables["predictions.csv"], history=tables["history.csv"])


def load_runs(runs_dir: str | os.PathLike) -> dict[tuple[str, str], Run]:
    """Every finished run below ``runs_dir`` (one sub-folder each), keyed by (feature, loss).

    When several runs share a feature and loss (seeds, gamma sweeps), the one in the folder
    named ``<feature>_<loss>`` (the paper's default) wins, else the first by folder name.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise SerlibError(f"{runs_dir}: runs folder does not exist")
    runs: dict[tuple[str, str], Run] = {}
    for folder in sorted(p for p in runs_dir.iterdir() if (p / "summary.json").is_file()):
        run = load_run(folder)
        key = (run.feature, run.loss)
        if key not in runs or folder.name == f"{run.feature}_{run.loss}":
            runs[key] = run
    if not runs:
        raise SerlibError(f"{runs_dir}: no finished run folder (with summary.json) inside")
    return runs


__all__ = [
    "FOLD_FILES", "METRIC_KEYS", "PREDICTION_COLUMNS", "RUN_FILES", "TEXT_COLUMNS", "Run",
    "RunFolderWarning", "VALIDATION_FILE", "check_config", "environment_versions",
    "finish_run", "finished_fold", "fold_dir", "load_run", "load_runs", "read_config",
    "read_run_csv", "remove_scratch", "summarise", "without_timing", "write_config", "write_fold",
]
