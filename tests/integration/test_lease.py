"""The run lease across processes and stores: two `i2s reconstruct` processes on one run (one
computes, the other exits 2 or waits and finds the run finished), and lease races on the real
S3 server (SeaweedFS honours If-None-Match: *)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from i2score.data import storage
from i2score.data.cache import LatentCache
from i2score.runs import lease as leases
from i2score.runs.lease import LeaseSettings, RunActiveError, RunLease
from tests.unit.test_lease import acquire_together, race_to_create

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "manifests" / "demo"


def test_s3_conditional_create_exactly_one_of_racing_writers_wins(s3_root):
    url = storage.join(s3_root, "race", "00000001.json")
    assert len(race_to_create(url, 12)) == 1
    with pytest.raises(FileExistsError):
        storage.create_exclusive(url, b"late")


def test_s3_lease_lifecycle_and_takers_of_an_expired_lease(s3_root):
    settings = LeaseSettings(ttl_s=1.0, renew_s=0.2, poll_s=0.1)
    first = RunLease(s3_root, "run-a", settings)
    assert first.try_acquire().generation == 1
    with pytest.raises(RunActiveError, match=r"^run run-a is active \(owner .+:\d+, since \d{4}-\d\d-\d\dT"):
        RunLease(s3_root, "run-a", settings).try_acquire()
    time.sleep(1.1)  # expired: never renewed
    takers = [RunLease(s3_root, "run-a", settings) for _ in range(6)]
    assert sorted(acquire_together(takers)) == ["active"] * 5 + ["won"]
    winner = next(t for t in takers if t.record is not None)
    assert leases.newest_lease(s3_root, "run-a").attempt == winner.attempt  # type: ignore[union-attr]
    with pytest.raises(leases.LeaseLostError):
        first.renew()
    winner.release()
    assert RunLease(s3_root, "run-a", settings).try_acquire().generation == 3


def _cli(manifest: str, root: str, *extra: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "i2score.flows.cli", "reconstruct", manifest, "--root", root,
                             "--schedule", "15+15", "--batch-size", "2", "--device", "cpu", *extra],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_second_process_on_the_same_run_exits_2_or_waits_and_finds_it_finished(tmp_path, prefect_api):
    root = str(tmp_path / "store")
    n = 6
    for i in range(n):
        storage.write_bytes(storage.join(root, "inputs", f"p{i}.png"),
                            (DEMO / "images" / f"heldout-0{i}.png").read_bytes())
    manifest = storage.join(root, "inputs", "m.csv")
    storage.write_bytes(manifest, ("id,image\n" + "".join(f"p{i},p{i}.png\n" for i in range(n))).encode())
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "I2S_LEASE_TTL_S": "20", "I2S_LEASE_RENEW_S": "2", "I2S_LEASE_POLL_S": "0.5"}
    first = _cli(manifest, root, env=env)
    deadline = time.monotonic() + 300
    while not list(Path(root).glob("runs/*/lease/00000001.json")):
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first process took no lease in 300 s"
        time.sleep(0.1)
    busy = _cli(manifest, root, env=env)
    waiter = _cli(manifest, root, "--wait", env=env)

    out, err = busy.communicate(timeout=300)
    assert first.poll() is None, "the first process finished before the second one checked the lease"
    assert busy.returncode == 2, (out, err)
    run_id = Path(next(Path(root).glob("runs/*/lease/00000001.json"))).parents[1].name
    lines = [ln for ln in err.splitlines() if ln.strip()]
    since = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.fullmatch(rf"run {run_id} is active \(owner [^ :]+:{first.pid}, since {since}\)", lines[-1]), err[-2000:]

    out1, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, err1[-3000:]
    out3, err3 = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err3[-3000:]
    assert "already finished, nothing recomputed" in " ".join(out3.split())  # rich wraps lines

    s = json.loads(storage.read_bytes(storage.join(root, "runs", run_id, "summary.json")))
    assert (s["rows"]["outputs"], s["rows"]["failed"], s["attempts"]) == (n, 0, 1)
    assert s["embedding_steps"] == s["embedding_steps_all_attempts"] == n * 30
    assert s["batches_run"] == s["batches_total"] == 3
    assert list(s["by_attempt"].values())[0]["owner"].endswith(f":{first.pid}")
    assert LatentCache(root).ls(dedupe=False).num_rows == n
    gens = storage.list_files(leases.lease_folder(root, run_id), ".json")
    assert len(gens) == 2  # the first process's and the waiter's, both released
    newest = leases.newest_lease(root, run_id)
    assert newest is not None and newest.released and newest.pid == waiter.pid
