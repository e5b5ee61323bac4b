"""The flows on Dask: a 2-worker local cluster gives the same latents as one process, and a
worker killed mid-run costs only the batch it was running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from i2score.data import storage
from i2score.data.cache import LatentCache

pytest.importorskip("prefect_dask", reason="the dask extra is part of CI's dev install")
pytestmark = pytest.mark.usefixtures("prefect_api")

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"


def _manifest(tmp_path: Path, n: int) -> str:
    """``n`` demo images copied next to the manifest (its folder is what rows may name)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    for i in range(n):
        shutil.copy(DEMO / "images" / f"heldout-{i:02d}.png", tmp_path / "images")
    lines = ["id,image"] + [f"p{i},images/heldout-{i:02d}.png" for i in range(n)]
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _latents(root: str) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]]:
    cache = LatentCache(root)
    table = cache.ls().to_pylist()
    out = {}
    for row in table:
        lat = cache.get(row["key"])
        assert lat is not None
        out[row["source_id"]] = (lat.w, lat.noise)
    return out


def _summary(result: dict) -> dict:
    return json.loads(storage.read_bytes(result["summary"]))


def test_two_worker_dask_cluster_equals_single_process(tmp_path):
    from i2score.flows.reconstruct import reconstruct
    from i2score.runs import progress

    manifest = _manifest(tmp_path, 4)
    kw: dict[str, Any] = {"schedule": "6+6", "batch_size": 2, "device": "cpu", "seed": 3}
    local = reconstruct(manifest, root=str(tmp_path / "local"), runner="local", **kw)
    # A progress display holding a lock, as the CLI's progress bar does: it must not be pickled
    # into what the workers receive. Steps run in the workers, so only finished batches count.
    lock, seen = threading.RLock(), []

    class Display:
        def planned(self, run: progress.RunProgress) -> None:
            pass

        def changed(self, run: progress.RunProgress) -> None:
            with lock:
                seen.append((run.phases[0].batches_done, run.done_steps, run.total_steps))

        def warning(self, run: progress.RunProgress, text: str) -> None:
            pass

    stop = progress.show(Display())
    try:
        dask = reconstruct(manifest, root=str(tmp_path / "dask"), runner="dask-local:2", **kw)
    finally:
        stop()
    assert seen == [(1, 12, 24), (2, 24, 24)]
    s_local, s_dask = _summary(local), _summary(dask)
    assert s_local["rows"]["outputs"] == s_dask["rows"]["outputs"] == 4
    assert s_dask["rows"]["failed"] == 0 and s_dask["batches_run"] == 2
    # Two worker processes, neither of them this one.
    assert len(s_dask["workers"]) == 2 and all(f":{os.getpid()}/" not in w for w in s_dask["workers"])
    a, b = _latents(str(tmp_path / "local")), _latents(str(tmp_path / "dask"))
    assert sorted(a) == sorted(b) == ["p0", "p1", "p2", "p3"]
    for k in a:
        assert torch.equal(a[k][0], b[k][0]), k
        assert all(torch.equal(x, y) for x, y in zip(a[k][1], b[k][1], strict=True)), k


def test_worker_killed_mid_run_costs_only_its_batch(tmp_path):
    """SIGKILL the worker that is running a batch once the first batch has finished: Dask reruns
    that batch on a fresh worker, and every other batch runs exactly once."""
    from distributed import Client, LocalCluster

    from i2score.flows.reconstruct import reconstruct

    root = tmp_path / "root"
    manifest = _manifest(tmp_path, 6)
    killed: list[int] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:

        def kill_one_busy_worker() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed:
                records = list(root.glob("runs/*/batches/*.json"))
                if any(not p.name.startswith("validation") for p in records):
                    busy = [addr for addr, keys in client.processing().items() if keys]
                    if busy:
                        pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
                time.sleep(0.2)

        watcher = threading.Thread(target=kill_one_busy_worker, daemon=True)
        watcher.start()
        address = cluster.scheduler_address.removeprefix("tcp://")
        result = reconstruct(str(manifest), root=str(root), schedule="40+40", batch_size=1, device="cpu",
                             runner=f"dask://{address}")
        watcher.join(timeout=5)
    assert killed, "no worker was busy after the first batch finished"
    s = _summary(result)
    assert s["rows"]["outputs"] == 6 and s["rows"]["failed"] == 0
    assert s["batches_run"] == 6 and s["attempts"] == 1
    # Each image embedded and cached once: the killed batch wrote no record and no cache entry.
    assert s["embedded"] == 6 and s["embedding_steps"] == 6 * 80
    assert len(_latents(str(root))) == 6
    assert len(s["workers"]) >= 2


def test_runner_names_are_checked_and_map_to_task_runners():
    from prefect_dask import DaskTaskRunner

    from i2score.flows.runners import RunnerError, task_runner_for

    for bad in ("dask", "dask-local:0", "dask-local:x", "dask://nohostport", "ray"):
        with pytest.raises(RunnerError):
            task_runner_for(bad)
    remote = task_runner_for("dask://10.0.0.5:8786")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    local = task_runner_for("dask-local:3")
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["threads_per_worker"] == 1
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(RunnerError, match="dask-cuda"):
            task_runner_for("local-cuda")
    else:
        if not torch.cuda.is_available():
            with pytest.raises(RunnerError, match="no CUDA GPU"):
                task_runner_for("local-cuda")


def test_unknown_runner_fails_the_cli_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from i2score.flows.cli import app

    result = CliRunner().invoke(app, ["reconstruct", _manifest(tmp_path, 1), "--root", str(tmp_path / "r"),
                                      "--runner", "ray"])
    assert result.exit_code == 2, result.output
