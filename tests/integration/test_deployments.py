"""Offline checks of the deployments: infra/prefect.yaml parses with Prefect's own model and
matches the flows' signatures; `i2s serve` builds the same deployments."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from i2score.runs.config import JobConfig

REPO = Path(__file__).resolve().parents[2]


def _flow(entrypoint: str):
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def test_prefect_yaml_is_valid_and_matches_the_flows():
    from prefect.cli.deploy._models import PrefectYamlModel

    data = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(data)
    names = [d.name for d in model.deployments]
    assert names == ["nightly", "inpaint", "edit", "augment"]
    for dep in data["deployments"]:
        flow = _flow(dep["entrypoint"])
        accepted = set(inspect.signature(flow.fn).parameters)
        unknown = set(dep.get("parameters", {})) - accepted
        assert not unknown, f"{dep['name']}: parameters {unknown} are not parameters of {flow.name}"
        assert dep["work_pool"]["name"] == "gpu"
        # Deployments run manifests from other people: every one is confined to named prefixes.
        allowed = dep["parameters"].get("allowed_inputs")
        assert allowed and all(a.startswith("s3://i2score-data/") for a in allowed), dep["name"]
        JobConfig("reconstruct", "s3://i2score-data/manifests/m.csv", "s3://x", allowed_inputs=tuple(allowed),
                  max_input_bytes=dep["parameters"].get("max_input_bytes"))
    nightly = data["deployments"][0]
    assert nightly["schedules"][0]["cron"] == "0 3 * * *"
    assert "manifest" in nightly["parameters"]


def test_serve_builds_a_nightly_schedule_and_on_demand_deployments():
    from i2score.flows.deployments import deployments

    deps = deployments(manifest="s3://bucket/m.csv", root="s3://bucket/i2s", cron="30 2 * * *")
    assert [d.name for d in deps] == ["nightly", "inpaint", "edit", "augment"]
    assert deps[0].schedules[0].schedule.cron == "30 2 * * *"
    assert deps[0].parameters["manifest"] == "s3://bucket/m.csv"
    assert all(not d.schedules for d in deps[1:])
    assert all(d.parameters["root"] == "s3://bucket/i2s" for d in deps)


@pytest.mark.parametrize("exc, transient", [(TimeoutError("read timed out"), True),
                                            (PermissionError("403 Forbidden"), False),
                                            (ValueError("bad"), False)])
def test_tasks_retry_only_transient_storage_errors(exc, transient):
    from prefect.states import Failed

    from i2score.tasks.batches import plan_run, retry_on_transient, run_batch

    assert retry_on_transient(None, None, Failed(data=exc)) is transient
    assert run_batch.retries == plan_run.retries == 3


def test_prefect_deploy_all_creates_the_four_deployments(prefect_api, tmp_path):
    """`prefect deploy --all --prefect-file infra/prefect.yaml` (the README's command) against a
    real Prefect server, with the pinned Prefect and FastAPI."""
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name="gpu", type="process"))
        except Exception:  # noqa: BLE001 - already there from an earlier run of this session's server
            client.read_work_pool("gpu")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                           "infra/prefect.yaml"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with get_client(sync_client=True) as client:
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}
    assert {"reconstruct/nightly", "inpaint/inpaint", "edit/edit", "augment/augment"} <= names
