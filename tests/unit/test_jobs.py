"""i2score.runs without Prefect: batches prefetch the inputs of the next batch."""

from __future__ import annotations

import shutil
from pathlib import Path

from i2score.runs import prefetch
from i2score.runs.config import JobConfig
from i2score.runs.execute import run_batch
from i2score.runs.plan import plan_run
from i2score.runs.records import RunPaths, read_json

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"


def test_next_batch_inputs_are_prefetched_while_a_batch_runs(tmp_path):
    for i in range(2):
        shutil.copy(DEMO / "images" / f"heldout-0{i}.png", tmp_path / f"p{i}.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image\np0,p0.png\np1,p1.png\n")
    config = JobConfig("reconstruct", str(manifest), str(tmp_path / "root"), None, "2+2", 1, "cpu", 0, None)
    plan = plan_run(config)
    first, second = plan.phases[0]
    specs = [read_json(RunPaths(config.root, plan.run_id).spec_url(b)) for b in (first, second)]
    assert specs[0]["next_batch"] == second and specs[1]["next_batch"] is None

    assert len(run_batch(config.root, plan.run_id, first).outputs) == 1
    assert prefetch.prefetch_thread is not None
    prefetch.prefetch_thread.join(timeout=30)
    # The second batch's image is gone from disk: the batch can only succeed from the prefetch.
    (tmp_path / "p1.png").unlink()
    out = run_batch(config.root, plan.run_id, second)
    assert [o["id"] for o in out.outputs] == ["p1"] and out.errors == []
