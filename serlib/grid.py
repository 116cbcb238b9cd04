"""Train many runs (configuration x seed) fold by fold, in parallel, resumably.

The unit of work is one fold of one run. :func:`run_grid` checks every run, reads the
selection and computes the features once (into the store), then hands every fold that is not
finished on disk to an engine (:mod:`serlib.engines`: a local process pool or Ray), and writes
each run's summary as soon as its folds are done. A fold is written by the same functions as
in :func:`serlib.training.run_cross_validation` (:mod:`serlib.runs` owns the format), so the
results are identical on the CPU to sequential runs, and an interrupted grid resumes where it
stopped. A fold that raises is reported with its run, fold and traceback; the others go on.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from serlib.config import TrainConfig
from serlib.errors import SerlibError

#: The paper's four configurations (feature, loss), whose runs keep the names
#: ``<feature>_<loss>`` under default settings and seed 0.
PAPER_PAIRS = (("spectrogram", "softmax"), ("spectrogram", "focal"), ("mfcc", "softmax"),
               ("mfcc", "focal"))


def run_name(overrides: dict, *, seed: int = 0, base_training: dict | None = None) -> str:
    """The folder name of a grid entry: :func:`serlib.studies.run_name` (the project's one
    naming rule) of the entry's fields over ``base_training``: ``<feature>_<loss>``, the
    protocol as a group folder unless stratified, the fields that differ, ``_seed<k>``."""
    from serlib.studies import resolve
    from serlib.studies import run_name as slug

    base = dict(base_training or {})
    return slug(resolve({**overrides, "seed": seed}, base_training=base), base_training=base)


@dataclass(frozen=True)
class FoldTask:
    """One fold of one run, as sent to a worker (picklable)."""

    run: str
    fold: int
    config: TrainConfig
    selection: object          # the selection as the parent read and checked it (DataFrame)
    run_dir: str
    cache_dir: str
    fingerprint: str = ""      # its content hash (serlib.training.selection_fingerprint)


@dataclass(frozen=True)
class FoldFailure:
    """A fold that raised: which run, which fold, and the worker's traceback."""

    run: str
    fold: int
    traceback: str


@dataclass
class GridResult:
    """What :func:`run_grid` did: summaries of the finished runs, and failures."""

    summaries: dict[str, dict] = field(default_factory=dict)
    failures: list[FoldFailure] = field(default_factory=list)
    trained: int = 0                      # folds trained in this call
    reused: int = 0                       # finished folds found on disk

    @property
    def ok(self) -> bool:
        return not self.failures

    def describe_failures(self) -> str:
        return "; ".join(f"{f.run} fold {f.fold}" for f in self.failures)


_FEATURES: dict = {}   # in a worker: the last feature array read (one feature config at a time)


def _features_for(setup, cache_dir):
    from serlib.training import load_features

    key = (str(cache_dir), setup.resolved["features"].get("kind"),
           setup.config.feature_dtype, setup.resolved["selection"]["fingerprint"],
           str(setup.feature_config))
    if key not in _FEATURES:
        _FEATURES.clear()
        _FEATURES[key] = load_features(setup, cache_dir=cache_dir, progress=False, n_jobs=1)
    return _FEATURES[key]


def run_fold_task(task: FoldTask) -> dict:
    """Train and write one fold (in a worker). Returns ``{"metrics": ...}``, or
    ``{"error": traceback}`` instead of raising."""
    try:
        import torch

        from serlib.engines import worker_device
        from serlib.training import prepare_run, train_folds

        # the selection the parent checked, never a file another process may rewrite since
        setup = prepare_run(task.selection, config=task.config)
        if task.fingerprint and setup.resolved["selection"]["fingerprint"] != task.fingerprint:
            raise SerlibError(f"{task.run} fold {task.fold}: the selection differs from the "
                              "one the grid checked")
        features = _features_for(setup, task.cache_dir)   # read from the store, not computed
        device = setup.device
        if device.type == "cuda" and worker_device() is not None:
            device = torch.device(worker_device())
        written = train_folds(setup, features, task.run_dir, folds=[task.fold], device=device,
                              progress=False)
        return {"metrics": written[task.fold]}
    except Exception:  # noqa: BLE001 - reported with run, fold and traceback by the grid
        return {"error": traceback.format_exc()}


def _name_of(setups: dict, setup) -> str:
    return next(name for name, s in setups.items() if s is setup)


def check_grid_runs(runs) -> list[tuple[str, TrainConfig]]:
    """The grid's runs as a list, each a (name, TrainConfig) pair with a valid, unique folder
    name; raises :class:`SerlibError` naming the first bad one. Writes nothing."""
    runs = list(runs)
    if not runs:
        raise SerlibError("the grid has no run")
    names = set()
    for item in runs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], TrainConfig)):
            raise SerlibError(f"grid run {item!r}: expected a (name, TrainConfig) pair")
        name = item[0]
        # one folder level below the runs folder may group runs (``session/mfcc_focal``)
        if not re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._+-]*/)?[A-Za-z0-9][A-Za-z0-9._+-]*", name):
            raise SerlibError(f"run name {name!r}: use letters, digits, '.', '_', '+', '-' "
                              "(and at most one '/' for a group folder) "
                              "(it names the run folder)")
        if name in names:
            raise SerlibError(f"run name {name!r} appears twice in the grid")
        names.add(name)
    return runs


def run_grid(runs, *, selection, cache_dir: str | os.PathLike,
             runs_dir: str | os.PathLike, engine: str = "local", jobs: int | None = None,
             jobs_per_gpu: int | None = None, address: str | None = None,
             progress: bool = True, batched: bool | None = None) -> GridResult:
    """Train every unfinished fold of every run, then write each run's summary.

    Parameters
    ----------
    runs : list of (name, TrainConfig)
        One run folder ``runs_dir/<name>`` per item.
    selection : pandas.DataFrame or path
        The selection table or its CSV (as for :func:`serlib.training.run_cross_validation`).
    cache_dir : path
        Feature store root; the features are computed into it once, before any fold starts,
        and every task reads them from there (on a cluster: a folder every node sees).
    runs_dir : path
    engine : {"local", "ray"}
    jobs, jobs_per_gpu, address
        See :func:`serlib.engines.make_engine`.
    progress : bool
        One overall bar (folds done / total) and a line per finished run with its WA/UA.
    batched : bool, optional
        Train the folds of runs whose inputs agree as grouped networks
        (:mod:`serlib.batched`; configs it does not support go per fold). None (default):
        on CUDA only.

    Returns
    -------
    GridResult
        Summaries by run name; failures (run, fold, traceback) of folds that raised. A rerun
        trains only the folds that are not finished.
    """
    from tqdm import tqdm

    from serlib import runs as run_folders
    from serlib.engines import make_engine
    from serlib.locking import exclusive_lock
    from serlib.training import (
        finish,
        finished_folds,
        load_features,
        looks_finished,
        prepare_run,
    )

    runs = check_grid_runs(runs)
    if cache_dir is None:
        raise SerlibError("run_grid needs a cache_dir: the folds read the features from it")
    runs_dir, cache_dir = Path(runs_dir).resolve(), Path(cache_dir).resolve()
    if isinstance(selection, (str, os.PathLike)):
        selection = str(Path(selection).resolve())
    # 1. everything checked before anything is written; the selection is read once, here,
    # and the workers train on this copy (by content hash), not on the file
    setups = {name: prepare_run(selection, config=config) for name, config in runs}
    for name in setups:
        run_folders.check_run_folder(runs_dir / name)
    cuda = any(s.device.type == "cuda" for s in setups.values())
    pool = make_engine(engine, jobs=jobs, jobs_per_gpu=jobs_per_gpu, address=address,
                       cuda=cuda)
    result = GridResult()

    def say(message: str) -> None:
        if progress:
            tqdm.write(message, file=sys.stderr)

    # 2. features once per feature config (every audio file checked here), before the locks:
    # the feature pool's forked workers must not inherit them
    seen = set()
    for setup in setups.values():
        key = (setup.config.feature, setup.config.feature_dtype)
        if key not in seen and not looks_finished(setup, runs_dir / _name_of(setups, setup)):
            seen.add(key)
            load_features(setup, cache_dir=cache_dir, progress=progress)
    with contextlib.ExitStack() as stack:
        done: dict[str, dict[int, dict]] = {}
        has_config = {}
        for name, setup in setups.items():
            run_dir = runs_dir / name
            stack.enter_context(exclusive_lock(run_dir, what="run folder"))
            run_folders.remove_scratch(run_dir)
            has_config[name] = run_folders.check_config(run_dir, setup.resolved)
            done[name] = finished_folds(setup, run_dir)
            result.reused += len(done[name])
        todo = [(name, k) for name, setup in setups.items()
                for k in range(1, len(setup.folds) + 1) if k not in done[name]]
        missing = {(setups[n].config.feature, setups[n].config.feature_dtype)
                   for n, _ in todo} - seen
        for setup in setups.values():   # damaged since the first look (rare)
            key = (setup.config.feature, setup.config.feature_dtype)
            if key in missing:
                missing.discard(key)
                load_features(setup, cache_dir=cache_dir, progress=progress, n_jobs=1)
        for name, setup in setups.items():
            if not has_config[name]:
                run_folders.write_config(runs_dir / name, setup.resolved,
                                         device_type=setup.device.type)

        def conclude(name: str) -> None:
            summary = finish(setups[name], runs_dir / name, done[name])
            result.summaries[name] = summary
            say(f"[run] {name}: WA {100 * summary['wa_mean']:.1f} +- "
                f"{100 * summary['wa_std']:.1f} %, UA {100 * summary['ua_mean']:.1f} +- "
                f"{100 * summary['ua_std']:.1f} %")

        for name, setup in setups.items():
            if len(done[name]) == len(setup.folds):
                conclude(name)
        if not todo:
            return result
        say(f"[grid] {len(todo)} fold(s) of {len({n for n, _ in todo})} run(s) to train "
            f"({result.reused} finished on disk); {pool.describe()}")
        tasks = [FoldTask(run=name, fold=k, config=setups[name].config,
                          selection=setups[name].selection, run_dir=str(runs_dir / name),
                          cache_dir=str(cache_dir),
                          fingerprint=setups[name].resolved["selection"]["fingerprint"])
                 for name, k in todo]
        failed_runs = set()
        if cuda if batched is None else batched:
            from serlib.batched import CPU_MAX_MEMBERS, MAX_MEMBERS, group_tasks, run_group_task

            groups = group_tasks(tasks, workers=getattr(pool, "jobs", 1),
                                 max_members=MAX_MEMBERS if cuda else CPU_MAX_MEMBERS)
            say(f"[grid] batched: {len(tasks)} fold(s) in {len(groups)} group(s) "
                f"(largest {max(map(len, groups))}; serlib.batched)")
            outcomes = ((task, outcome) for group, group_outcomes in
                        pool.run(run_group_task, groups)
                        for task, outcome in zip(group, group_outcomes, strict=True))
        else:
            outcomes = pool.run(run_fold_task, tasks)
        bar = tqdm(total=len(tasks), desc="folds", unit="fold", disable=not progress)
        with bar:
            for task, outcome in outcomes:
                bar.update(1)
                if "error" in outcome:
                    failure = FoldFailure(run=task.run, fold=task.fold,
                                          traceback=outcome["error"])
                    result.failures.append(failure)
                    failed_runs.add(task.run)
                    say(f"[failed] {task.run} fold {task.fold}:\n{failure.traceback}")
                    continue
                result.trained += 1
                done[task.run][task.fold] = outcome["metrics"]
                if len(done[task.run]) == len(setups[task.run].folds):
                    conclude(task.run)
        result.failures.sort(key=lambda f: (f.run, f.fold))
        for name in failed_runs:   # a failed start must not block the corrected grid
            if not has_config[name] and not done[name]:
                run_folders.forget_failed_start(runs_dir / name)
    return result


__all__ = ["FoldFailure", "FoldTask", "GridResult", "PAPER_PAIRS", "check_grid_runs",
           "run_fold_task", "run_grid",
           "run_name"]

