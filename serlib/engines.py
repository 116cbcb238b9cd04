"""Engines that run the grid's fold tasks: a local process pool, or Ray.

An engine has one method, ``run(function, tasks)``, that calls ``function(task)`` for every
task somewhere and yields ``(task, result)`` pairs as they finish, in any order. ``function``
must be importable (a module-level function) and must not raise for a failing task: the grid's
fold function returns the traceback instead, so that one failure stops nothing else.

- :class:`LocalEngine` (the default, no extra dependency): worker processes on this machine.
  On the CPU ``jobs`` workers share the cores (torch threads per worker = cores // jobs); on
  CUDA ``jobs_per_gpu`` workers per visible GPU, each pinned to one device.
- :class:`RayEngine` (``pip install serlib[ray]``): each task is a Ray task with ``num_cpus``
  and a fractional ``num_gpus`` (1 / ``jobs_per_gpu``), so Ray packs several on a GPU and
  spreads them over the GPUs and nodes of a cluster. ``address="auto"`` joins a running
  cluster; no address starts a private local instance bound to 127.0.0.1, stopped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from serlib.errors import SerlibError

#: Engine names for ``serlib grid --engine``.
ENGINES = ("local", "ray")

#: Workers per GPU when not given: four concurrent processes finished the paper's grid about
#: four times faster than one on an H100 (benchmarks/README.md); a choice, not measured here.
DEFAULT_JOBS_PER_GPU = 4

_WORKER_DEVICE: str | None = None   # set in each local worker: the one device it uses


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_device() -> str | None:
    """The CUDA device this worker process is pinned to (None: not pinned)."""
    return _WORKER_DEVICE


def _die_with_parent() -> None:
    # Linux: a worker dies when the grid process dies (SIGKILL included), so that no orphan
    # keeps writing into a run folder whose lock has gone with its parent
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _init_local_worker(threads: int, devices) -> None:
    global _WORKER_DEVICE
    _die_with_parent()
    import torch

    torch.set_num_threads(threads)
    if devices is not None:
        _WORKER_DEVICE = devices.get()


class LocalEngine:
    """A pool of worker processes on this machine (spawned: safe with torch and CUDA).

    Parameters
    ----------
    jobs : int, optional
        Workers on the CPU (default: 1 per 2 cores, at least 1); ignored on CUDA.
    jobs_per_gpu : int, optional
        Workers per visible GPU when ``cuda`` (default :data:`DEFAULT_JOBS_PER_GPU`).
    cuda : bool
        Whether the tasks train on CUDA.
    """

    name = "local"

    def __init__(self, *, jobs: int | None = None, jobs_per_gpu: int | None = None,
                 cuda: bool = False):
        cores = os.cpu_count() or 1
        _check_positive("jobs", jobs)
        _check_positive("jobs_per_gpu", jobs_per_gpu)
        self.devices: list[str] | None = None
        if cuda:
            per_gpu = jobs_per_gpu or DEFAULT_JOBS_PER_GPU
            self.devices = [f"cuda:{g}" for g in range(_cuda_count()) for _ in range(per_gpu)]
            self.jobs = len(self.devices)
        else:
            self.jobs = jobs or max(1, cores // 2)
        self.threads = max(1, cores // self.jobs)

    def describe(self) -> str:
        where = f"{len(set(self.devices))} GPU(s)" if self.devices else "the CPU"
        return f"local engine: {self.jobs} worker(s) on {where}, {self.threads} thread(s) each"

    def run(self, function: Callable, tasks: Iterable) -> Iterator[tuple[object, object]]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        tasks = list(tasks)
        if not tasks:
            return
        if self.jobs == 1 and self.devices is None:
            for task in tasks:     # one worker: in this process, no start-up cost
                yield task, function(task)
            return
        context = multiprocessing.get_context("spawn")
        queue = None
        if self.devices is not None:
            queue = context.Manager().Queue()
            for device in self.devices:
                queue.put(device)
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=context,
                                 initializer=_init_local_worker,
                                 initargs=(self.threads, queue)) as pool:
            futures = {pool.submit(function, task): task for task in tasks}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


def _ray_call(function: Callable, task, threads: int):
    import torch

    torch.set_num_threads(threads)
    return function(task)


class RayEngine:
    """Fold tasks on Ray: a running cluster (``address``) or a private local instance.

    Parameters
    ----------
    address : str, optional
        ``"auto"`` or ``"ray://host:10001"``/``"host:6379"``: join that cluster (the output and
        cache folders must be on a filesystem every node sees). None: start a local instance on
        127.0.0.1 with ``jobs`` CPUs and stop it at the end.
    jobs : int, optional
        CPU tasks at once on a local instance (default: 1 per 2 cores).
    jobs_per_gpu : int, optional
        Tasks per GPU on CUDA (each asks for ``num_gpus = 1 / jobs_per_gpu``).
    cuda : bool
        Whether the tasks train on CUDA.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, jobs: int | None = None,
                 jobs_per_gpu: int | None = None, cuda: bool = False):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise SerlibError("engine='ray' needs Ray: pip install 'serlib[ray]' "
                              "(or pip install 'ray[default]>=2.9')") from None
        _check_positive("jobs", jobs)
        _check_positive("jobs_per_gpu", jobs_per_gpu)
        cores = os.cpu_count() or 1
        self.address = address
        self.jobs = jobs or max(1, cores // 2)
        self.cuda = cuda
        self.num_gpus = 1 / (jobs_per_gpu or DEFAULT_JOBS_PER_GPU) if cuda else 0
        # on a local instance the CPUs are split like the local engine's; on a cluster one
        # task asks for one CPU per GPU share or per CPU job
        self.threads = 1 if address else max(1, cores // self.jobs)

    def describe(self) -> str:
        where = f"cluster {self.address}" if self.address else "a local instance (127.0.0.1)"
        return (f"ray engine on {where}: {self.threads} CPU(s)"
                f"{f', {self.num_gpus:g} GPU' if self.cuda else ''} per fold")

    def run(self, function: Callable, tasks: Iterable) -> Iterator[tuple[object, object]]:
        import ray

        tasks = list(tasks)
        if not tasks:
            return
        started = False
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                # workers import this serlib, wherever it is installed or checked out
                package_parent = str(Path(__file__).resolve().parent.parent)
                path = os.pathsep.join(filter(None, [package_parent,
                                                     os.environ.get("PYTHONPATH")]))
                ray.init(num_cpus=self.jobs * self.threads, _node_ip_address="127.0.0.1",
                         include_dashboard=False, log_to_driver=False,
                         configure_logging=False,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
            started = True
        try:
            remote = ray.remote(num_cpus=self.threads, num_gpus=self.num_gpus,
                                max_retries=0)(_ray_call)
            pending = {remote.remote(function, task, self.threads): task for task in tasks}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                yield pending.pop(ref), ray.get(ref)
        finally:
            if started:
                ray.shutdown()


def _check_positive(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise SerlibError(f"{name}={value!r}: expected a positive integer")


def make_engine(name: str, *, jobs: int | None = None, jobs_per_gpu: int | None = None,
                address: str | None = None, cuda: bool = False):
    """The engine called ``name`` (one of :data:`ENGINES`)."""
    if name == "local":
        if address:
            raise SerlibError(f"address={address!r} is for engine='ray' only")
        return LocalEngine(jobs=jobs, jobs_per_gpu=jobs_per_gpu, cuda=cuda)
    if name == "ray":
        return RayEngine(address=address, jobs=jobs, jobs_per_gpu=jobs_per_gpu, cuda=cuda)
    raise SerlibError(f"engine={name!r}: expected one of {', '.join(ENGINES)}")


__all__ = ["DEFAULT_JOBS_PER_GPU", "ENGINES", "LocalEngine", "RayEngine", "make_engine",
           "worker_device"]
