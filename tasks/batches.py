"""The tasks of every flow: plan a run, run one batch, finish the run.

One task per batch, never per image. Tasks retry only on transient storage errors (5xx,
throttling, timeouts, dropped connections, as :func:`i2score.data.storage.is_transient` decides);
anything else is either recorded against the rows it affects (inside :mod:`i2score.runs.execute`) or a
real bug that should fail loudly. Caching is off (``NO_CACHE``): i2score's content-addressed
latent cache and the run's batch records are what make re-runs cheap, and Prefect would
otherwise hash every input on every call.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from i2score.data import storage
from i2score.runs import execute, plan
from i2score.runs import report as reports
from i2score.runs.config import JobConfig
from i2score.tasks.workers import prepare_worker

RETRY_DELAYS = [2, 10, 30]


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry when the task failed with a transient storage error."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - classify, never swallow: False ends the task as Failed
        return storage.is_transient(e)
    return False


_OPTIONS: dict[str, Any] = {"retries": len(RETRY_DELAYS), "retry_delay_seconds": RETRY_DELAYS,
                            "retry_condition_fn": retry_on_transient, "cache_policy": NO_CACHE}


@task(name="run-identity", **_OPTIONS)
def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The run id and job digest of ``config`` (see :func:`i2score.runs.plan.run_identity`), and
    the run's summary when it is already finished (``finished``, else None)."""
    job = JobConfig.from_json(config)
    ident = plan.run_identity(job)
    return {"run_id": ident.run_id, "digest": ident.digest, "finished": plan.finished_summary(job.root, ident)}


@task(name="plan-run", **_OPTIONS)
def plan_run(config: dict[str, Any], identity: dict[str, Any] | None = None, attempt: str | None = None,
             lease_generation: int | None = None) -> dict[str, Any]:
    """Validate, hash inputs, look up the cache and write the batch specs (see
    :func:`i2score.runs.plan.plan_run`). Returns the plan's ids and counts."""
    return plan.plan_run(JobConfig.from_json(config), attempt=attempt,
                         identity=plan.RunIdentity(identity["run_id"], identity["digest"]) if identity else None,
                         lease_generation=lease_generation).to_json()


def _secret_value(manifest: SecretStr | None) -> str | None:
    return None if manifest is None else manifest.get_secret_value()


@task(name="run-batch", task_run_name="{batch_id}", **_OPTIONS)
def run_batch(root: str, run_id: str, batch_id: str, manifest: SecretStr | None = None) -> dict[str, Any]:
    """Run one planned batch (the model is loaded once per worker process). Returns its counts.

    ``manifest`` is the run's real manifest URL, from which a batch reads the inputs whose URLs
    carry credentials (its spec holds them redacted; :mod:`i2score.runs.secret_urls`). It travels as
    a task parameter because Prefect 3.8 does not persist those: the API gets only the task
    inputs' kinds (``TaskRunCreate.task_inputs``), results are not persisted
    (``PREFECT_RESULTS_PERSIST_BY_DEFAULT`` is false and ``NO_CACHE``), and a Dask runner pickles
    it to the worker in memory. It is a ``SecretStr`` all the same, so that a log line, a repr or
    Prefect's serialisation of parameters (``jsonable_encoder``) shows ``**********``.
    """
    return execute.run_batch(root, run_id, batch_id, manifest_url=_secret_value(manifest),
                             gpu_index=prepare_worker()).small()


@task(name="finish-run", **_OPTIONS)
def finish_run(root: str, run_id: str, attempt: str, wall_seconds: float,
               manifest: SecretStr | None = None) -> dict[str, Any]:
    """Merge the batch records into the manifest, errors, summary and report (``manifest``: the
    real manifest URL, as :func:`run_batch` takes it)."""
    return reports.finish_run(root, run_id, attempt, wall_seconds=wall_seconds,
                              manifest_url=_secret_value(manifest))


@task(name="record-batch-failure", **_OPTIONS)
def record_batch_failure(root: str, run_id: str, batch_id: str, attempt: str, message: str) -> None:
    """A batch failed for good: its rows go to the run's errors (see
    :func:`i2score.runs.execute.record_batch_failure`)."""
    execute.record_batch_failure(root, run_id, batch_id, attempt, message)
