"""What a flow run tells Prefect and its UI: its final state from its rows (Failed when all
failed, "Completed with failures" when some did, Completed when none did), its name (the run id)
and artifact keys of its own; and the CLI's exit codes for the same runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from uuid import UUID

import pytest

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"
SCHEDULE = "2+2"

pytestmark = pytest.mark.usefixtures("prefect_api")


def _manifest(folder: Path, name: str, rows: list[tuple[str, str]]) -> str:
    """A reconstruct manifest in ``folder`` (inputs must live in the manifest's folder)."""
    path = folder / name
    path.write_text("id,image\n" + "".join(f"{rid},{image}\n" for rid, image in rows))
    return str(path)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder with two good demo images, a garbage one; no ``missing.png``."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in (0, 1):
        shutil.copy(DEMO / "images" / f"heldout-1{i}.png", folder / f"good{i}.png")
    (folder / "garbage.png").write_bytes(b"this is not an image")
    return folder


def _flow_run(state):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def _flow_runs_named(name: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    # limit and sort given: the pinned fastapi rejects the client's nulls (issue 16).
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
                                     limit=10, sort=FlowRunSort.ID_DESC)


def _artifacts_of(flow_run_id: UUID, run_id: str) -> set[str]:
    """Keys of the artifacts of flow run ``flow_run_id`` among those keyed by ``run_id``."""
    from prefect import get_client

    keys = [f"{run_id}-{what}" for what in ("summary", "report", "noop", "progress")]
    # The filter request without the client's read_artifacts: it sends null flow-run and task-run
    # filters, which the pinned fastapi rejects (issue 16), and empty ones join the task runs (an
    # artifact of a flow has none).
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/artifacts/filter", json={
            "artifacts": {"key": {"any_": keys}}, "limit": 50, "offset": 0, "sort": "ID_DESC"})
    return {a["key"] for a in response.json() if a["flow_run_id"] == str(flow_run_id)}


def test_final_state_name_and_artifacts_follow_the_rows(tmp_path, inputs):
    from typer.testing import CliRunner

    from i2score.flows.cli import app
    from i2score.flows.reconstruct import reconstruct

    root = str(tmp_path / "store")
    run = {"root": root, "schedule": SCHEDULE, "device": "cpu"}

    # Every row fails: Failed, and the state still holds the run's result.
    all_failed = _manifest(inputs, "all-failed.csv", [("missing", "missing.png"), ("garbage", "garbage.png")])
    state = reconstruct(all_failed, **run, return_state=True)
    assert state.is_failed() and not state.is_completed()
    result = state.result(raise_on_failure=False)
    assert isinstance(result, dict), result
    assert (result["outputs"], result["failed"]) == (0, 2)
    assert state.message == f"2 of 2 rows failed; see {result['errors']}"
    # The CLI says where the errors are and exits 1 (rows failed), not 2 (could not run).
    cli = CliRunner().invoke(app, ["reconstruct", all_failed, "--root", root, "--schedule", SCHEDULE,
                                   "--device", "cpu"], terminal_width=400)
    assert cli.exit_code == 1, cli.output
    assert "errors.parquet" in cli.output

    # Some rows fail: a completed state whose name says so.
    some_failed = _manifest(inputs, "some-failed.csv", [("good0", "good0.png"), ("missing", "missing.png")])
    state = reconstruct(some_failed, **run, return_state=True)
    assert state.is_completed() and state.name == "Completed with failures"
    some = state.result()
    assert (some["outputs"], some["failed"]) == (1, 1)
    assert state.message == f"1 of 2 rows failed; see {some['errors']}"

    # No row fails: the plain Completed.
    none_failed = _manifest(inputs, "none-failed.csv", [("good0", "good0.png"), ("good1", "good1.png")])
    state = reconstruct(none_failed, **run, return_state=True)
    assert state.is_completed() and state.name == "Completed"
    clean = state.result()
    assert (clean["outputs"], clean["failed"]) == (2, 0)

    # The flow run is named after the run id, its sub-flow run <run-id>-batches.
    flow_run = _flow_run(state)
    assert flow_run.name == clean["run_id"]
    assert flow_run.state is not None and flow_run.state.name == "Completed"
    batches = _flow_runs_named(f"{clean['run_id']}-batches")
    assert len(batches) == 1 and batches[0].parent_task_run_id is not None
    # Another manifest, another run: artifact keys of its own.
    # Progress, summary and report on the main flow run (where the UI shows them), keyed by run.
    what = ("summary", "report", "progress")
    assert _artifacts_of(flow_run.id, clean["run_id"]) == {f"{clean['run_id']}-{w}" for w in what}
    again = _flow_run(reconstruct(some_failed, **run, return_state=True))
    assert some["run_id"] != clean["run_id"]
    assert _artifacts_of(again.id, some["run_id"]) == {f"{some['run_id']}-{w}" for w in what}


def test_artifact_keys_follow_prefect_key_rules():
    import re

    from i2score.flows._common import artifact_key

    assert artifact_key("reconstruct-0123456789ab", "summary") == "reconstruct-0123456789ab-summary"
    odd = [artifact_key(rid, "report") for rid in ("Nightly_Run.1", "nightly-run-1", "nightly_run_1")]
    assert len(set(odd)) == 3, odd  # ids the key rule changes do not share a key
    assert all(re.fullmatch(r"[a-z0-9-]+", k) for k in odd), odd


def test_a_temporary_server_that_does_not_start_exits_2_in_one_line(tmp_path, inputs, monkeypatch):
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from i2score.flows.cli import app

    def time_out(self, timeout=None):  # what SubprocessASGIServer.start raises when the server is late
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.\nstdout: ...")

    monkeypatch.setattr(SubprocessASGIServer, "start", time_out)
    manifest = _manifest(inputs, "m.csv", [("good0", "good0.png")])
    store = tmp_path / "store"
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        res = CliRunner().invoke(app, ["reconstruct", manifest, "--root", str(store), "--device", "cpu"],
                                 terminal_width=400)
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0, res.output
    assert "the temporary Prefect server did not start within" in res.output
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in res.output
    assert not store.exists()


def test_the_cli_gives_the_temporary_server_more_time_unless_told(monkeypatch):
    from i2score.flows.cli import EPHEMERAL_SERVER_STARTUP_TIMEOUT_S, _prefect_env

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    _prefect_env(verbose=True)
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == str(EPHEMERAL_SERVER_STARTUP_TIMEOUT_S)
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "7")
    _prefect_env(verbose=True)
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "7"


def test_a_cli_run_logs_to_the_ui_and_keeps_the_terminal_quiet(tmp_path, inputs, prefect_api):
    """The ``i2s`` command in its own process, against a Prefect server: the planning, every
    batch and the summary reach the flow run's logs at INFO; the terminal shows no Prefect line;
    the progress artifact ends at 100 %."""
    import subprocess
    import sys

    from prefect import get_client

    manifest = _manifest(inputs, "cli.csv", [("good0", "good0.png"), ("good1", "good1.png")])
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)
    env.pop("PREFECT_LOGGING_LEVEL", None)
    proc = subprocess.run([sys.executable, "-m", "i2score.flows.cli", "reconstruct", manifest, "--root",
                           str(tmp_path / "store"), "--schedule", SCHEDULE, "--device", "cpu", "--batch-size", "1"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    terminal = proc.stdout + proc.stderr
    assert " | INFO " not in terminal and "Flow run" not in terminal, terminal
    run_id = next(w for w in proc.stdout.split() if w.startswith("reconstruct-")).rstrip(":")
    (flow_run,) = _flow_runs_named(run_id)
    with get_client(sync_client=True) as client:
        logs = client.request("POST", "/logs/filter", json={
            "logs": {"flow_run_id": {"any_": [str(flow_run.id)]}}, "limit": 200, "offset": 0,
            "sort": "TIMESTAMP_ASC"}).json()
        progress = client.request("POST", "/artifacts/filter", json={
            "artifacts": {"key": {"any_": [f"{run_id}-progress"]}}, "limit": 5, "offset": 0,
            "sort": "ID_DESC"}).json()
    lines = [entry["message"] for entry in logs if entry["level"] == 20]  # INFO
    assert any("optimisation steps planned" in m for m in lines), lines
    assert sum(m.startswith("batch ") and "/2 " in m for m in lines) == 2, lines
    assert any(m.startswith(f"run {run_id} finished: 2 outputs") for m in lines), lines
    assert len(progress) == 1 and progress[0]["flow_run_id"] == str(flow_run.id)
    assert progress[0]["data"] == 100.0
