"""The Prefect flows end to end on the bundled demo model (tiny schedules), under one session
Prefect test server, against a local folder and SeaweedFS S3."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from i2score.data import storage
from i2score.data.cache import LatentCache

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"
SCHEDULE = "4+4/3+3"  # embedding 4 + 4 steps, edits and inpainting 3 + 3

pytestmark = pytest.mark.usefixtures("prefect_api")


def _upload(root: str, name: str, data: bytes) -> str:
    url = storage.join(root, "inputs", name)
    storage.write_bytes(url, data)
    return url


def _manifest(root: str, name: str, header: list[str], rows: list[list[str]]) -> str:
    text = ",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows)
    return _upload(root, name, text.encode())


def _image(root: str, name: str) -> str:
    """A demo image copied into the store (so S3 runs read their inputs from S3 too)."""
    return _upload(root, name, (DEMO / "images" / name).read_bytes())


def _summary(result: dict) -> dict:
    return json.loads(storage.read_bytes(result["summary"]))


def _table(url: str):
    return pq.read_table(io.BytesIO(storage.read_bytes(url)))


def test_reconstruct_then_edit_embeds_nothing_twice(storage_root):
    from i2score.flows.edit import edit
    from i2score.flows.reconstruct import reconstruct

    imgs = {f"p{i}": _image(storage_root, f"heldout-0{i}.png") for i in range(3)}
    mask = _upload(storage_root, "face.png", (DEMO / "masks" / "region-face-01.png").read_bytes())
    rec_manifest = _manifest(storage_root, "rec.csv", ["id", "image"], [[k, v] for k, v in imgs.items()])
    rec = reconstruct(rec_manifest, root=storage_root, schedule=SCHEDULE, batch_size=2, device="cpu")
    s = _summary(rec)
    assert (s["rows"]["outputs"], s["rows"]["failed"], s["embedded"]) == (3, 0, 3)
    assert s["embedding_steps"] == 3 * 8 and s["cache_hits"] == 0
    assert len(LatentCache(storage_root).ls()) == 3
    out = _table(storage.join(rec["run_url"], "manifest.parquet"))
    assert sorted(out.column("id").to_pylist()) == ["p0", "p1", "p2"]
    assert all(p > 10 for p in out.column("psnr").to_pylist())
    for u in out.column("output_url").to_pylist():
        assert Image.open(io.BytesIO(storage.read_bytes(u))).size == (64, 64)
    for name in ("report.md", "report.html", "sheet.png", "errors.parquet"):
        assert storage.exists(storage.join(rec["run_url"], name)), name

    edit_manifest = _manifest(storage_root, "edit.csv", ["id", "op", "image", "ref", "mask", "params"], [
        ["morph", "morph", imgs["p0"], imgs["p1"], "", ""],
        ["mix", "style_mix", imgs["p1"], imgs["p2"], "", '"{""k"": 4}"'],
        ["cross", "crossover", imgs["p1"], imgs["p0"], mask, ""],
        ["attr", "attribute_transfer", imgs["p2"], imgs["p0"], mask, ""],
    ])
    ed = edit(edit_manifest, root=storage_root, schedule=SCHEDULE, batch_size=4, device="cpu")
    s = _summary(ed)
    assert s["embedding_steps"] == 0 and s["embedded"] == 0, "sources were embedded again"
    assert s["cache_hits"] == 3
    assert s["rows"]["outputs"] == 4 and s["rows"]["failed"] == 0
    assert s["edit_steps"] == 3 + 3  # only the crossover re-optimises
    ids = sorted(_table(storage.join(ed["run_url"], "manifest.parquet")).column("id").to_pylist())
    assert ids == ["attr", "cross", "mix", "morph"]


def test_same_reconstruct_twice_is_a_noop(tmp_path):
    from i2score.flows.reconstruct import reconstruct

    root = str(tmp_path / "store")
    manifest = _manifest(root, "m.csv", ["id", "image"], [["a", _image(root, "heldout-04.png")]])
    first = reconstruct(manifest, root=root, schedule=SCHEDULE, device="cpu")
    assert not first["noop"] and first["embedding_steps"] == 8
    run = Path(first["run_url"])
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    second = reconstruct(manifest, root=root, schedule=SCHEDULE, device="cpu")
    assert second["noop"] and second["embedding_steps"] == 0 and second["run_id"] == first["run_id"]
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert after == before, "a finished run was written again"
    # A different schedule is a different job: new run, new embeddings.
    third = reconstruct(manifest, root=root, schedule="3+3", device="cpu")
    assert third["run_id"] != first["run_id"] and third["embedding_steps"] == 6


def test_bad_rows_are_reported_and_good_rows_finish(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from i2score.flows.cli import app

    root = str(tmp_path / "store")
    good = [_image(root, f"heldout-1{i}.png") for i in range(3)]
    truncated = _upload(root, "truncated.png", (DEMO / "images" / "heldout-13.png").read_bytes()[:300])
    garbage = _upload(root, "garbage.png", b"this is not an image")
    manifest = _manifest(root, "m.csv", ["id", "image"], [
        ["g0", good[0]], ["missing", storage.join(root, "inputs", "nope.png")], ["g1", good[1]],
        ["trunc", truncated], ["bad/id", good[2]], ["garbage", garbage], ["g2", good[2]],
        ["outside", str(tmp_path / "elsewhere.png")],
    ])
    shutil.copy(DEMO / "images" / "heldout-10.png", tmp_path / "elsewhere.png")
    result = CliRunner().invoke(app, ["reconstruct", manifest, "--root", root, "--schedule", SCHEDULE,
                                      "--batch-size", "2", "--device", "cpu"])
    assert result.exit_code == 1, result.output  # rows failed: documented exit code 1
    run_url = next((Path(root) / "runs").iterdir())
    out = _table(str(run_url / "manifest.parquet"))
    assert sorted(out.column("id").to_pylist()) == ["g0", "g1", "g2"]
    errors = _table(str(run_url / "errors.parquet")).to_pylist()
    reasons = {e["row"]: e["reason_code"] for e in errors}
    assert reasons == {2: "missing_file", 4: "truncated_image", 5: "path_traversal", 6: "undecodable_image",
                       8: "outside_allowed_inputs"}
    assert all(e["message"] for e in errors)
    report = (run_url / "report.md").read_text()
    assert "truncated_image" in report and "g2" in report
    # Re-running retries only the failed rows; after fixing one file, it succeeds.
    storage.write_bytes(truncated, (DEMO / "images" / "heldout-13.png").read_bytes())
    from i2score.flows.reconstruct import reconstruct

    again = reconstruct(manifest, root=root, schedule=SCHEDULE, batch_size=2, device="cpu")
    s = _summary(again)
    assert not again["noop"] and s["embedded"] == 1 and s["batches_run"] == 1
    assert (s["rows"]["outputs"], s["rows"]["failed"]) == (4, 4)

    # A batch whose computation fails records its rows and the other batches finish.
    import i2score.runs.ops

    def broken_morph(*args, **kwargs):
        raise RuntimeError("simulated failure inside morph")

    monkeypatch.setattr(i2score.runs.ops, "morph", broken_morph)
    edit_manifest = _manifest(root, "e.csv", ["id", "op", "image", "ref", "params"], [
        ["mix", "style_mix", good[0], good[1], ""],
        ["morph", "morph", good[0], good[1], ""],
        ["unknown", "sharpen", good[0], "", ""],
    ])
    from i2score.flows.edit import edit

    res = edit(edit_manifest, root=root, schedule=SCHEDULE, device="cpu")
    assert (res["outputs"], res["failed"], res["embedding_steps"]) == (1, 2, 0)
    errors = {e["id"]: e for e in _table(storage.join(res["run_url"], "errors.parquet")).to_pylist()}
    assert errors["morph"]["reason_code"] == "processing_failed"
    assert "simulated failure inside morph" in errors["morph"]["message"]
    assert errors["unknown"]["reason_code"] == "unknown_op"


def test_killed_run_resumes_without_recomputing_finished_batches(tmp_path, prefect_api, monkeypatch):
    # The killed process holds the run's lease: the next attempt waits for it to expire, takes it
    # over (generation 2) and resumes. Short lease times, in the child and here.
    from i2score.flows.reconstruct import reconstruct
    from i2score.runs.lease import lease_folder, newest_lease

    lease_env = {"I2S_LEASE_TTL_S": "4", "I2S_LEASE_RENEW_S": "1", "I2S_LEASE_POLL_S": "0.2"}
    for k, v in lease_env.items():
        monkeypatch.setenv(k, v)

    root = str(tmp_path / "store")
    n = 4
    manifest = _manifest(root, "m.csv", ["id", "image"], [[f"r{i}", _image(root, f"heldout-0{i}.png")]
                                                           for i in range(n)])
    schedule, steps = "15+15", 30
    rng = random.Random()
    kill_after = rng.randint(1, n - 2)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(DEMO.parent.parent), **lease_env}
    proc = subprocess.Popen([sys.executable, "-m", "i2score.flows.cli", "reconstruct", manifest, "--root", root,
                             "--schedule", schedule, "--batch-size", "1", "--device", "cpu"],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def finished() -> list[Path]:
        return [p for p in (Path(root) / "runs").glob("*/batches/reconstruct-*.json")]

    deadline = time.monotonic() + 300
    while len(finished()) < kill_after:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:] if proc.stdout else "(no output)"
        assert time.monotonic() < deadline, "no batch finished in 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(finished())
    assert done_before < n, f"the run finished before it was killed (kill_after={kill_after})"

    res = reconstruct(manifest, root=root, schedule=schedule, batch_size=1, device="cpu", wait_for_lease=True)
    s = _summary(res)
    lease = newest_lease(root, res["run_id"])
    assert lease is not None and (lease.generation, lease.pid, lease.released) == (2, os.getpid(), True)
    assert len(storage.list_files(lease_folder(root, res["run_id"]), ".json")) == 2
    assert (s["rows"]["outputs"], s["rows"]["failed"]) == (n, 0)
    assert s["attempts"] == 2
    # Finished batches are not run again; a batch killed after its cache write is a cache hit.
    assert s["batches_run"] == n - done_before
    assert s["embedded"] + s["cache_hits"] == n - done_before
    assert s["embedding_steps"] == steps * s["embedded"]
    assert s["embedding_steps_all_attempts"] <= steps * n + steps  # at most the killed batch twice
    out = _table(storage.join(res["run_url"], "manifest.parquet"))
    assert sorted(out.column("id").to_pylist()) == [f"r{i}" for i in range(n)]
    cache = LatentCache(root)
    assert cache.verify().ok
    assert len(cache.ls()) == n
    assert cache.ls(dedupe=False).num_rows == n  # no image indexed twice
    # The same as one uninterrupted run, less the steps of a killed batch's embeddings that the
    # resumed attempt found cached (its record was never written, so no attempt counts them).
    ref_root = str(tmp_path / "ref")
    ref_manifest = _manifest(ref_root, "m.csv", ["id", "image"], [[f"r{i}", _image(ref_root, f"heldout-0{i}.png")]
                                                                   for i in range(n)])
    ref = _summary(reconstruct(ref_manifest, root=ref_root, schedule=schedule, batch_size=1, device="cpu"))
    assert (ref["rows"], ref["attempts"], ref["embedding_steps"]) == (s["rows"], 1, steps * n)
    assert s["embedding_steps_all_attempts"] + steps * s["cache_hits"] == ref["embedding_steps"]
    assert sum(a["embedding_steps"] for a in s["by_attempt"].values()) == s["embedding_steps_all_attempts"]
    for u in out.column("output_url").to_pylist():
        arr = np.asarray(Image.open(io.BytesIO(storage.read_bytes(u))))
        assert arr.shape == (64, 64, 3)


def test_inpaint_and_augment_flows(tmp_path):
    from i2score.flows.augment import augment
    from i2score.flows.inpaint import inpaint

    root = str(tmp_path / "store")
    img = _image(root, "heldout-05.png")
    hole = _upload(root, "hole.png", (DEMO / "masks" / "hole-rect-05.png").read_bytes())
    m = _manifest(root, "inp.csv", ["id", "image", "mask"], [["h", img, hole]])
    res = inpaint(m, root=root, k=2, schedule=SCHEDULE, device="cpu")
    ids = sorted(_table(storage.join(res["run_url"], "manifest.parquet")).column("id").to_pylist())
    assert ids == ["h-k0", "h-k1"] and res["failed"] == 0
    # The solutions are cached: the same job under another run id recomputes nothing.
    again = inpaint(m, root=root, k=2, schedule=SCHEDULE, device="cpu", run_id="again")
    assert _summary(again)["edit_steps"] == 0

    rows = [[f"a{i}", _image(root, f"heldout-0{i}.png")] for i in range(3)]
    m = _manifest(root, "aug.csv", ["id", "image"], rows)
    res = augment(m, root=root, n_per_image=2, ops=["style_mix", "noise", "interpolate"], schedule=SCHEDULE,
                  device="cpu")
    assert res["outputs"] == 6 and res["failed"] == 0
    dataset = storage.join(res["run_url"], "dataset.csv")
    from i2score.data.manifest import validate_manifest
    from i2score.runs.ops import CATALOG

    v = validate_manifest(dataset, CATALOG, kind="reconstruct", check_files=True)
    assert v.ok and len(v.rows) == 3 + 6
    lineage = [r for r in v.rows if r.extra.get("augmentation") != "original"]
    assert {r.extra["augmentation"] for r in lineage} == {"style_mix", "noise", "interpolate"}
    assert all(r.extra["source_id"] in {"a0", "a1", "a2"} for r in lineage)


def test_demo_command_writes_its_reports(tmp_path):
    from typer.testing import CliRunner

    from i2score.flows.cli import app

    root = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--root", str(root), "--schedule", "3+3/2+2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    runs = sorted(p.name.split("-")[0] for p in (root / "runs").iterdir())
    assert runs == ["edit", "reconstruct"]
    for run in (root / "runs").iterdir():
        s = json.loads((run / "summary.json").read_text())
        assert s["rows"]["failed"] == 0 and s["rows"]["outputs"] >= 8
        assert (run / "report.html").is_file() and (run / "sheet.png").is_file()
        if s["kind"] == "edit":
            assert s["embedding_steps"] == 0
    assert "report" in result.output


def test_the_encoder_schedule_and_engine_options_through_the_flow(storage_root):
    from i2score.flows.reconstruct import reconstruct

    imgs = {f"p{i}": _image(storage_root, f"heldout-0{i}.png") for i in range(2)}
    manifest = _manifest(storage_root, "enc.csv", ["id", "image"], [[k, v] for k, v in imgs.items()])
    res = reconstruct(manifest, root=storage_root, schedule="encoder", batch_size="auto", device="cpu",
                      precision="fp32")
    assert res["outputs"] == 2 and res["failed"] == 0 and res["embedding_steps"] == 0
    summary = _summary(res)
    assert summary["init"] == "encoder" and summary["encoder"]["id"] == "demo-faces-64-v2-e4e"
    assert summary["engine"] == {"precision": "fp32", "channels_last": False, "compile": False,
                                 "bit_reproducible": True}
    # The encoder's codes alone: far from the targets, but far better than the mean latent.
    assert 14 < summary["metrics"]["psnr"]["median"] < 30
