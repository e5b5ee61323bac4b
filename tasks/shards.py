"""Tasks of the sharded flow: split a manifest into shards, run one deployment run per shard."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from i2score.runs import shards
from i2score.tasks.batches import _OPTIONS


@task(name="split-manifest", **_OPTIONS)
def split_manifest(manifest: str, root: str, kind: str, rows_per_shard: int, job: dict[str, Any]) -> dict[str, Any]:
    """Validate and split the manifest (see :func:`i2score.runs.shards.split_manifest`)."""
    return shards.split_manifest(manifest, root, kind=kind, rows_per_shard=rows_per_shard, job=job).to_json()


@task(name="run-shard", task_run_name="{run_id}", cache_policy=NO_CACHE)
def run_shard(deployment: str, parameters: dict[str, Any], run_id: str, timeout_s: float | None) -> dict[str, Any]:
    """Start a run of ``deployment`` (``flow/deployment``) on one shard and wait for it (a worker
    of the deployment's pool picks it up). Returns the flow run's id and final state; the shard's
    results are in its own run folder (``runs/<run_id>``)."""
    flow_run = run_deployment(name=deployment, parameters={**parameters, "run_id": run_id}, timeout=timeout_s,
                              as_subflow=True)
    assert isinstance(flow_run, FlowRun)  # called from a sync task: the flow run, not a coroutine
    state = flow_run.state
    return {"run_id": run_id, "flow_run_id": str(flow_run.id),
            "state": state.type.value if state is not None else "UNKNOWN",
            "completed": bool(state is not None and state.is_completed())}
