"""What every flow does: plan, run the batches phase by phase, report.

The flows differ only in their parameters; the work is in :mod:`i2score.runs`, reached through
the tasks of :mod:`i2score.tasks.batches`.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

from prefect import Flow, State, flow, get_client, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.states import Completed, Failed
from pydantic import SecretStr

from i2score.data import storage
from i2score.data.redact import install_log_redaction, redact_tree
from i2score.flows.runners import check_runner, local_task_runner, task_runner_for
from i2score.runs import lease, progress, report
from i2score.runs.config import JobConfig
from i2score.tasks import batches

# Every log record of a process that runs flows is redacted, Prefect's own included (its API
# handler ships them to the server): installed on import, before any flow run logs anything.
install_log_redaction()

#: Where runs and the latent cache go when no root is given (a local folder).
DEFAULT_ROOT = "i2s-data"
#: How long the presigned S3 links and images of a run's report artifact work: 7 days, the most
#: a SigV4 presigned URL allows (local roots get file:// URLs, which do not expire).
REPORT_LINK_EXPIRES_S = 7 * 24 * 3600

def _absolute(url: str) -> str:
    """Local paths become absolute, so workers started elsewhere agree on them."""
    return url if "://" in url else os.path.abspath(url)


def inputs_tuple(allowed: list[str] | None) -> tuple[str, ...] | None:
    """The ``allowed_inputs`` parameter as the job holds it: local prefixes absolute (relative to
    the caller's folder, so workers started elsewhere agree), None kept (the manifest's folder)."""
    return None if allowed is None else tuple(_absolute(a) for a in allowed)


def plain_url(manifest: str | SecretStr) -> str:
    """A flow's ``manifest`` parameter as a URL. A flow takes it as a ``SecretStr`` too, which
    Prefect stores as ``**********`` with the flow run's parameters (the CLI passes a manifest
    URL that carries credentials that way); a plain string is stored as it is."""
    return manifest.get_secret_value() if isinstance(manifest, SecretStr) else manifest


def artifact_key(run_id: str, what: str) -> str:
    """The key of the run's ``what`` artifact (``summary``, ``report``, ``noop``): the run id made
    a Prefect key (lowercase letters, digits, dashes), so each dataset and job has its own. A run
    id the key rule changes (upper case, ``_``, ``.``) gets a hash of itself, so that two such ids
    never share a key."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    if slug != run_id:
        slug = f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}".lstrip("-")
    return f"{slug}-{what}"


P = ParamSpec("P")
R = TypeVar("R")


def called_for_state_data(job_flow: Flow[P, State[R]]) -> Flow[P, R]:
    """``job_flow`` (whose function returns its final state, see :func:`final_state`) typed as
    what calling it gives: Prefect's engine makes a returned state the flow run's state and a call
    returns that state's data (``return_state=True`` gives the state); Prefect's types take the
    function's return type for the call's."""
    return cast("Flow[P, R]", job_flow)


def final_state(result: dict[str, Any]) -> State[dict[str, Any]]:
    """The state a flow run of ``result`` (see :func:`run_job`) ends in, holding ``result``:
    Failed when rows failed and none produced an output; Completed named "Completed with
    failures" when some rows failed; plain Completed when none did."""
    failed, rows = result["failed"], result["rows"]
    if not failed:
        return Completed(data=result)
    message = f"{failed} of {rows} rows failed; see {result['errors']}"
    if result["outputs"] == 0:
        return Failed(data=result, message=message)
    return Completed(data=result, name="Completed with failures", message=message)


def _name_flow_run(name: str) -> None:
    """Rename the flow run this runs in (the UI lists flow runs by name; Prefect's default is a
    random one, chosen before the run id is known)."""
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "run_job runs inside a flow run"
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, name=name)
    context.flow_run.name = name  # the run loggers made from now on say it too


def run_job(config: JobConfig, runner: str = "local", wait_for_lease: bool = False) -> State[dict[str, Any]]:
    """Take the run's lease, plan ``config``, run its batches on ``runner`` and finish the run.
    Returns the flow run's final state (:func:`final_state`) holding the summary's small part.
    The flow run is renamed to the run id, its ``run-batches`` sub-flow run ``<run-id>-batches``.

    Another attempt holding the lease (a second process on the same job) raises
    :class:`i2score.runs.lease.RunActiveError`; with ``wait_for_lease`` this attempt waits until
    the lease is released or expires, then resumes the run (a no-op when the other attempt
    finished it). Lease times come from ``I2S_LEASE_TTL_S``/``I2S_LEASE_RENEW_S``/``I2S_LEASE_POLL_S``.
    """
    check_runner(runner)
    config = JobConfig.from_json({**config.to_json(), "manifest": _absolute(config.manifest),
                                  "root": _absolute(config.root),
                                  "masks": None if config.masks is None else _absolute(config.masks)})
    identity = batches.run_identity(config.to_json())
    run_id, root = identity["run_id"], config.root
    _name_flow_run(run_id)
    logger = get_run_logger()  # after the rename: its lines carry the run id as the flow run's name
    if identity["finished"] is not None:  # finished: no lease needed, nothing is written
        return final_state(_noop(identity["finished"]))

    def waiting(active: lease.RunActiveError) -> None:
        logger.info("%s: waiting for it to finish or expire", active)

    with lease.hold(root, run_id, wait=wait_for_lease, on_wait=waiting) as held:
        t0 = time.perf_counter()  # the attempt's own time, not the wait
        plan = batches.plan_run(config.to_json(), identity, held.attempt, held.generation)
        if plan["noop"]:  # the attempt this one waited for finished the run
            return final_state(_noop(plan["summary"]))
        counts = plan["counts"]
        tracker = progress.RunProgress(run_id, plan["phases"], plan["budgets"], plan["kinds"],
                                       device=config.device, schedule=config.schedule,
                                       warn_after_s=_long_run_warn_s(), on_warning=logger.warning)
        logger.info("run %s (attempt %s, lease generation %d): %s; %s optimisation steps planned", run_id,
                    held.attempt, held.generation, ", ".join(f"{k} {v}" for k, v in counts.items()),
                    f"{tracker.total_steps:,}")
        # On the main flow run, where the UI shows a run's artifacts; the batches' sub-flow updates it.
        progress_id = create_progress_artifact(0.0, key=artifact_key(run_id, "progress"),
                                               description=f"{config.kind} {run_id}: optimisation steps done")
        assert isinstance(progress_id, UUID)  # called from a sync flow: the id, not a coroutine
        # The batches run in a sub-flow because a flow's task runner is fixed when it starts, and the
        # runner is a parameter of the job. A sub-flow runs in this process: it finds the tracker.
        manifest = SecretStr(config.manifest)
        untrack = progress.track(tracker)
        _run_loggers[run_id] = logger
        try:
            run_batches.with_options(task_runner=task_runner_for(runner), flow_run_name=f"{run_id}-batches")(
                root, run_id, plan["phases"], plan["attempt"], f"{config.kind} {run_id}", manifest, str(progress_id))
        finally:
            untrack()
            _run_loggers.pop(run_id, None)
        held.check()  # an attempt whose lease was taken over leaves the summary to the new owner
        summary = batches.finish_run(root, run_id, plan["attempt"], time.perf_counter() - t0, manifest)
    _artifacts(root, summary)
    logger.info("run %s finished: %d outputs, %d failed rows; report %s", run_id, summary["rows"]["outputs"],
                summary["rows"]["failed"], summary["files"]["report"])
    return final_state(_result(summary))


def _noop(summary: dict[str, Any]) -> dict[str, Any]:
    """The result of a run that was already finished (nothing recomputed)."""
    get_run_logger().info("run %s is already finished (same manifest, model and settings): nothing to do",
                          summary["run_id"])
    markdown_artifact(f"Run `{summary['run_id']}` was already finished; nothing was recomputed. "
                      f"Report: {summary['files']['report']}", key=artifact_key(summary["run_id"], "noop"))
    return _result(summary, noop=True)


#: The logger of each job's main flow run in this process, by run id: the batches' lines go to
#: the main flow run, where the UI shows a run's logs (the sub-flow only runs them).
_run_loggers: dict[str, Any] = {}


def _long_run_warn_s() -> float:
    """Seconds of estimated run time beyond which a run warns (``I2S_LONG_RUN_WARN_S``)."""
    return float(os.environ.get("I2S_LONG_RUN_WARN_S", progress.LONG_RUN_WARN_S))


@flow(name="run-batches", task_runner=local_task_runner())
def run_batches(root: str, run_id: str, phases: list[list[str]], attempt: str, label: str,
                manifest: SecretStr | None = None, progress_artifact: str | None = None) -> int:
    """Run the batches of a planned run, phase after phase (an edit phase needs the latents its
    embed phase caches). A batch whose retries are exhausted has its rows recorded as errors and
    the others go on. Returns the number of failed batches. Each finished batch is logged, and
    the run's progress artifact (``progress_artifact``, an id) and tracker
    (:func:`i2score.runs.progress.tracked`) are updated.

    ``manifest`` is the real manifest URL (the batch specs hold it and the inputs with
    credentials redacted; see :func:`i2score.tasks.batches.run_batch`). Prefect persists a flow run's
    parameters in its database, so it is a ``SecretStr``: Prefect stores it as ``**********``.
    """
    logger = _run_loggers.get(run_id) or get_run_logger()
    total = sum(len(p) for p in phases)
    tracker = progress.tracked(run_id)
    done = failed = 0
    for phase in phases:
        for bid in phase:
            if tracker is not None:
                tracker.batch_started(bid)
        futures = {batches.run_batch.submit(root, run_id, bid, manifest): bid for bid in phase}
        for fut in as_completed(list(futures)):
            try:
                info = fut.result()
            except Exception as e:  # noqa: BLE001 - retries are exhausted; the rows become errors
                # Redacted before it is cut: a cut could split a secret so that redaction misses it.
                message = storage.redact(f"{type(e).__name__}: {e}")[:500]
                logger.error("batch %s failed: %s", futures[fut], message)
                batches.record_batch_failure(root, run_id, futures[fut], attempt, message)
                info = {"batch_id": futures[fut], "failed": True}
                failed += 1
            done += 1
            _log_batch(logger, done, total, info)
            if tracker is not None:
                tracker.batch_done(futures[fut])
            if progress_artifact is not None:
                share = tracker.done_steps / tracker.total_steps if tracker and tracker.total_steps else done / total
                update_progress_artifact(UUID(progress_artifact), 100.0 * share)
    return failed


def _log_batch(logger: Any, done: int, total: int, info: dict[str, Any]) -> None:
    if info.get("failed"):
        return  # logged as an error where it failed
    logger.info("batch %d/%d %s (%s): %d outputs, %d failed rows, %d embedded, %d cache hits, %d embedding "
                "and %d edit steps, %.1f s%s", done, total, info["batch_id"], info["kind"], info["outputs"],
                info["errors"], info["embedded"], info["cache_hits"], info["embedding_steps"], info["edit_steps"],
                info["seconds"], " (already done)" if info.get("skipped") else "")


def _artifacts(root: str, summary: dict[str, Any]) -> None:
    table = [{"quantity": k, "value": v} for k, v in (
        ("outputs", summary["rows"]["outputs"]), ("failed rows", summary["rows"]["failed"]),
        ("images embedded", summary["embedded"]), ("embedding steps", summary["embedding_steps"]),
        ("cache hits", summary["cache_hits"]), ("edit steps", summary["edit_steps"]),
        ("batches run", summary["batches_run"]), ("wall seconds", summary["wall_seconds"]))]
    for name, q in summary["metrics"].items():
        if q:
            table += [{"quantity": f"{name} {s}", "value": q[s]} for s in ("min", "median", "max")]
    for reason, n in summary["errors_by_reason"].items():
        table.append({"quantity": f"failed: {reason}", "value": n})
    table_artifact(table, key=artifact_key(summary["run_id"], "summary"), description=f"run {summary['run_id']}")
    # Links and images the UI can open (file:// or presigned S3 URLs, inline thumbnails of the worst
    # outputs); the library redacts the text around them, so it bypasses markdown_artifact.
    create_markdown_artifact(report.ui_report_markdown(root, summary["run_id"], expires_s=REPORT_LINK_EXPIRES_S),
                             key=artifact_key(summary["run_id"], "report"),
                             description=storage.redact(f"run {summary['run_id']}"))


def markdown_artifact(markdown: str, *, key: str, description: str | None = None) -> None:
    """A Prefect Markdown artifact, its text redacted (artifacts are stored by the Prefect API)."""
    create_markdown_artifact(storage.redact(markdown), key=key,
                             description=None if description is None else storage.redact(description))


def table_artifact(rows: list[dict[str, Any]], *, key: str, description: str | None = None) -> None:
    """A Prefect table artifact, every string in it redacted."""
    create_table_artifact(redact_tree(rows), key=key,
                          description=None if description is None else storage.redact(description))


def _result(summary: dict[str, Any], noop: bool = False) -> dict[str, Any]:
    """The small return value of a flow: ids, counts and where things are."""
    return {"run_id": summary["run_id"], "noop": noop, "outputs": summary["rows"]["outputs"],
            "failed": summary["rows"]["failed"],
            "rows": summary["rows"]["input_rows_done"] + summary["rows"]["failed"],
            "errors": storage.join(summary["run_url"], "errors.parquet"),
            "embedding_steps": 0 if noop else summary["embedding_steps"],
            "cache_hits": 0 if noop else summary["cache_hits"], "run_url": summary["run_url"],
            "report": summary["files"]["report"], "summary": storage.join(summary["run_url"], "summary.json"),
            # Augment runs: augmented rows the realism gate left out of dataset.csv (not failures).
            **({"realism_dropped": summary["realism"]["dropped"], "min_realism": summary["realism"]["min_realism"],
                "realism_not_scored": summary["realism"].get("not_scored")} if summary.get("realism") else {})}
