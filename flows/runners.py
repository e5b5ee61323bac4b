"""Task runners the flows accept (the ``runner`` parameter).

- ``local``: one batch at a time in the flow's process (a batch already fills a GPU, and CPU
  batches are parallel inside their kernels).
- ``dask-local`` / ``dask-local:N``: a Dask ``LocalCluster`` of N worker processes on this
  machine (default: one per GPU, or 2 on a CPU-only machine), one batch at a time per worker.
  Each worker gets an equal share of the CPU threads and, on a multi-GPU machine, its own GPU
  (worker i uses ``cuda:i``).
- ``local-cuda``: a dask-cuda ``LocalCUDACluster``: one worker process per visible GPU, each
  pinned to its GPU through ``CUDA_VISIBLE_DEVICES`` (``pip install 'i2score[cuda]'``).
- ``dask://HOST:PORT``: an existing Dask scheduler (``dask scheduler`` plus one ``dask worker
  --nthreads 1`` per GPU); the workers need this package and access to the storage root.

Every worker loads the model once (:func:`i2score.runs.context.worker_context` caches it per process)
and runs whole batches; a worker lost mid-run costs only the batch it was running, which Dask
reschedules on another worker (batches are idempotent: a batch's record is written after its
images and cache entries).
"""

from __future__ import annotations

import os
from typing import Any, cast

from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from i2score.runs.runner_spec import RUNNER_HELP, RunnerError, check_runner
from i2score.tasks.workers import TORCH_THREADS_ENV

__all__ = ["RUNNER_HELP", "RunnerError", "check_runner", "local_task_runner", "task_runner_for", "thread_pool"]


def _require_prefect_dask() -> Any:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:
        raise RunnerError("Dask runners need prefect-dask and distributed: pip install 'i2score[dask]'") from e
    return DaskTaskRunner


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def thread_pool(max_workers: int) -> TaskRunner[PrefectFuture[Any]]:
    """A ``ThreadPoolTaskRunner`` typed as the flow decorator's parameter: ``TaskRunner`` is
    invariant in its future type, so its thread-pool subclass is not one to a type checker,
    although every flow accepts it."""
    return cast("TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=max_workers))


def local_task_runner() -> TaskRunner[PrefectFuture[Any]]:
    """One batch at a time: a batch already fills the device, and CPU batches are parallel inside."""
    return thread_pool(1)


def task_runner_for(runner: str) -> Any:
    """The Prefect task runner for ``runner`` (see the module docstring)."""
    check_runner(runner)
    if runner == "local":
        return local_task_runner()
    DaskTaskRunner = _require_prefect_dask()
    if runner.startswith("dask://"):
        return DaskTaskRunner(address="tcp://" + runner[len("dask://"):])
    if runner == "local-cuda":
        try:
            import dask_cuda  # noqa: F401
        except ImportError as e:
            raise RunnerError("runner 'local-cuda' needs dask-cuda: pip install 'i2score[cuda]'") from e
        if _gpu_count() == 0:
            raise RunnerError("runner 'local-cuda': no CUDA GPU is visible on this machine")
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster",
                              cluster_kwargs={"threads_per_worker": 1, "dashboard_address": None})
    n_workers = int(runner.split(":", 1)[1]) if ":" in runner else (_gpu_count() or 2)
    # Dask starts workers with one OpenMP thread; tasks.workers gives each its share of the cores.
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": n_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
        "env": {TORCH_THREADS_ENV: threads},
    })
