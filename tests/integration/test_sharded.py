"""Sharding a manifest into deployment runs: a served ``reconstruct`` deployment (a runner
process polling the test server) runs one flow run per shard, at most ``max_concurrent`` at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from i2score.runs.shards import split_manifest

pytestmark = pytest.mark.usefixtures("prefect_api")
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "manifests" / "demo"


def _manifest(tmp_path: Path) -> Path:
    """Five demo images copied next to the manifest (its folder is what rows may name)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    for i in range(5):
        shutil.copy(DEMO / "images" / f"heldout-{i:02d}.png", tmp_path / "images")
    rows = [f"p{i},{tmp_path / 'images' / f'heldout-{i:02d}.png'}" for i in range(5)]
    rows.insert(2, "../escape,x.png")  # rejected by validation: unsafe id
    path = tmp_path / "big.csv"
    path.write_text("id,image\n" + "\n".join(rows) + "\n")
    return path


def test_split_manifest_is_stable_and_keeps_rows(tmp_path):
    m = _manifest(tmp_path)
    a = split_manifest(str(m), str(tmp_path / "root"), kind="reconstruct", rows_per_shard=2, job={"schedule": "4+4"})
    b = split_manifest(str(m), str(tmp_path / "root"), kind="reconstruct", rows_per_shard=2, job={"schedule": "4+4"})
    c = split_manifest(str(m), str(tmp_path / "root"), kind="reconstruct", rows_per_shard=2, job={"schedule": "8+8"})
    assert a.shards == b.shards and a.run_ids == b.run_ids and a.digest != c.digest
    assert a.rows == [2, 2, 1]
    assert [(r.row, r.id) for r in a.rejected] == [(3, "../escape")]
    ids = [json.loads(line)["id"] for u in a.shards for line in Path(u).read_text().splitlines()]
    assert ids == ["p0", "p1", "p2", "p3", "p4"]
    first = json.loads(Path(a.shards[0]).read_text().splitlines()[0])
    assert os.path.isabs(first["image"])  # shards can live anywhere


def test_split_manifest_never_writes_a_credential(tmp_path):
    m = _manifest(tmp_path)
    with m.open("a") as f:
        f.write("signed,https://h.example.com/a.png?X-Amz-Signature=c0ffee1234567890&X-Amz-Credential=AKIAXYZ\n")
        f.write("basic,https://bob:hunter2pass@h.example.com/b.png\n")
    plan = split_manifest(str(m), str(tmp_path / "root"), kind="reconstruct", rows_per_shard=2,
                          job={"allowed_inputs": [str(tmp_path), "https://h.example.com/"]})
    reasons = {r.id: r.reason_code for r in plan.rejected}
    assert set(reasons) == {"../escape", "signed", "basic"}
    assert reasons["signed"] == reasons["basic"] == "credentials_in_url"
    assert sum(plan.rows) == 5
    for f in (tmp_path / "root").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert b"hunter2pass" not in data and b"c0ffee1234567890" not in data, f


@pytest.fixture()
def served_reconstruct(prefect_api, tmp_path):
    """``reconstruct`` served as deployment ``reconstruct/shards`` by a separate process."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    code = "from i2score.flows.reconstruct import reconstruct; reconstruct.serve(name='shards', limit=4)"
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    from prefect.client.orchestration import get_client

    try:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while True:
                try:
                    client.read_deployment_by_name("reconstruct/shards")
                    break
                except Exception:  # noqa: BLE001 - not registered yet
                    assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                    time.sleep(0.5)
        yield "reconstruct/shards"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sharded_flow_runs_one_bounded_deployment_run_per_shard(tmp_path, served_reconstruct):
    from prefect.client.orchestration import get_client

    from i2score.flows.sharded import sharded

    m = _manifest(tmp_path)
    root = tmp_path / "root"
    params = {"schedule": "4+4", "batch_size": 2, "device": "cpu"}
    result = sharded(str(m), served_reconstruct, root=str(root), rows_per_shard=2, max_concurrent=2,
                     parameters=params, timeout_s=600)
    assert (result["shards"], result["shards_failed"], result["rejected_rows"]) == (3, 0, 1)
    assert result["outputs"] == 5 and result["failed_rows"] == 0 and result["embedding_steps"] == 5 * 8
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(r["flow_run_id"]) for r in result["runs"]]
    spans = []
    for r in runs:
        assert r.start_time is not None and r.end_time is not None, r
        spans.append((r.start_time, r.end_time))
    spans.sort()
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap <= 2

    again = sharded(str(m), served_reconstruct, root=str(root), rows_per_shard=2, max_concurrent=2,
                    parameters=params, timeout_s=600)
    assert again["digest"] == result["digest"] and again["shards_failed"] == 0
    assert again["outputs"] == 5 and again["embedding_steps"] == 0 and again["noop_shards"] == 3
