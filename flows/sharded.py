"""Very large manifests on several machines: one deployment run per shard, a bounded number at
a time, each picked up by a worker of the deployment's work pool."""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import wait

from i2score.data import storage
from i2score.data.inputs import manifest_folder
from i2score.flows._common import DEFAULT_ROOT, _absolute, local_task_runner, table_artifact
from i2score.flows.runners import thread_pool
from i2score.tasks import shards

KINDS = ("reconstruct", "inpaint", "edit", "augment")


def _summary(root: str, run_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(storage.join(root, "runs", run_id, "summary.json")))
    except FileNotFoundError:
        return None


def _attempt(root: str, run_id: str) -> str | None:
    s = _summary(root, run_id)
    return None if s is None else s["attempt"]


@flow(name="launch-shards")
def launch_shards(deployment: str, parameters: dict[str, Any], shard_urls: list[str], run_ids: list[str],
                  timeout_s: float | None) -> list[dict[str, Any]]:
    """One ``run-shard`` task per shard; the task runner's pool size bounds how many run at once."""
    futures = [shards.run_shard.submit(deployment, {**parameters, "manifest": url}, rid, timeout_s)
               for url, rid in zip(shard_urls, run_ids, strict=True)]
    wait(futures)
    out = []
    for fut, rid in zip(futures, run_ids, strict=True):
        try:
            out.append(fut.result())
        except Exception as e:  # noqa: BLE001 - a shard that could not be started is reported, the others go on
            out.append({"run_id": rid, "flow_run_id": None, "state": "FAILED", "completed": False,
                        "error": storage.redact(f"{type(e).__name__}: {e}")[:500]})
    return out


@flow(name="sharded", task_runner=local_task_runner(), validate_parameters=True)
def sharded(manifest: str, deployment: str, root: str = DEFAULT_ROOT, rows_per_shard: int = 1000,
            max_concurrent: int = 4, parameters: dict[str, Any] | None = None, kind: str | None = None,
            timeout_s: float | None = None) -> dict[str, Any]:
    """Split ``manifest`` into shards of ``rows_per_shard`` rows and run ``deployment`` (e.g.
    ``reconstruct/nightly``) once per shard, at most ``max_concurrent`` at a time.

    Every shard run gets ``parameters`` plus its shard manifest, ``root`` and a stable run id, so
    launching the same job again resumes unfinished shards and finishes finished ones at once.
    Rows the validation rejects are written to ``shards/<digest>/errors.parquet`` and counted.
    Returns the shard runs' states, the summed outputs and failed rows of their summaries, and
    the embedding steps and cache hits of the shard runs that did work in this launch.
    """
    logger = get_run_logger()
    kind = kind or deployment.split("/", 1)[0]
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: give kind= one of {', '.join(KINDS)} (deployment {deployment!r})")
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    root = _absolute(root)
    params = {k: v for k, v in (parameters or {}).items() if k not in ("manifest", "run_id")}
    params["root"] = root
    if params.get("allowed_inputs") is None:
        # Shards live under root/shards/, so their own folder says nothing: the shard runs get
        # the original manifest's confinement, spelled out.
        params["allowed_inputs"] = [manifest_folder(_absolute(manifest))]
    plan = shards.split_manifest(_absolute(manifest), root, kind, rows_per_shard, params)
    logger.info("%d shards (%s rows), %d rows rejected: %s", len(plan["shards"]), plan["rows"], plan["rejected"],
                plan["errors_url"])
    before = {rid: _attempt(root, rid) for rid in plan["run_ids"]}
    runs = launch_shards.with_options(task_runner=thread_pool(max_concurrent))(
        deployment, params, plan["shards"], plan["run_ids"], timeout_s)
    totals = {"outputs": 0, "failed_rows": 0, "embedding_steps": 0, "cache_hits": 0, "noop_shards": 0}
    for run in runs:
        s = _summary(root, run["run_id"])
        if s is None:
            continue
        run["summary"] = storage.join(root, "runs", run["run_id"], "summary.json")
        totals["outputs"] += s["rows"]["outputs"]
        totals["failed_rows"] += s["rows"]["failed"]
        # A shard run that was already finished does nothing and keeps its old summary.
        run["noop"] = s["attempt"] == before[run["run_id"]]
        totals["noop_shards"] += run["noop"]
        if not run["noop"]:
            totals["embedding_steps"] += s["embedding_steps"]
            totals["cache_hits"] += s["cache_hits"]
    result = {"digest": plan["digest"], "shards": len(runs), "shards_failed": sum(not r["completed"] for r in runs),
              "rejected_rows": plan["rejected"], "errors": plan["errors_url"], **totals, "runs": runs}
    storage.write_json(storage.join(plan["prefix"], "summary.json"), result, indent=2)
    table_artifact([{k: r.get(k) for k in ("run_id", "state", "flow_run_id")} for r in runs],
                   key=f"sharded-{plan['digest']}", description=f"{deployment}: {len(runs)} shards")
    return result
