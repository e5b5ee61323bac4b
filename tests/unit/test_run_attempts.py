"""A run finished across attempts under the run lease (i2score.runs without Prefect): the summary
counts what each attempt did, a batch of an attempt that lost the lease is refused, and a later
attempt on the finished run is a no-op."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from i2score.data.cache import LatentCache
from i2score.runs.config import JobConfig
from i2score.runs.execute import run_batch
from i2score.runs.lease import LeaseLostError, LeaseSettings, RunLease
from i2score.runs.plan import plan_run, run_identity
from i2score.runs.records import RunPaths
from i2score.runs.report import finish_run

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"
SETTINGS = LeaseSettings(ttl_s=30.0, renew_s=5.0, poll_s=0.1)
STEPS_PER_IMAGE = 4  # the "2+2" schedule without early stopping


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def _config(tmp_path: Path, name: str) -> JobConfig:
    inputs = tmp_path / "inputs"
    if not inputs.exists():
        inputs.mkdir()
        for i in range(4):
            shutil.copy(DEMO / "images" / f"heldout-0{i}.png", inputs / f"p{i}.png")
        (inputs / "m.csv").write_text("id,image\n" + "".join(f"p{i},p{i}.png\n" for i in range(4)))
    return JobConfig("reconstruct", str(inputs / "m.csv"), str(tmp_path / name), None, "2+2", 2, "cpu", 0, None)


def _attempt(config: JobConfig, clock: Clock, batches: int | None = None) -> tuple[RunLease, list[str]]:
    """Take the lease and plan; run the first ``batches`` batches (all when None)."""
    ident = run_identity(config)
    held = RunLease(config.root, ident.run_id, SETTINGS, clock=clock)
    held.try_acquire()
    plan = plan_run(config, attempt=held.attempt, identity=ident, lease_generation=held.generation)
    ids = [b for phase in plan.phases for b in phase]
    for b in ids[:batches]:
        run_batch(config.root, ident.run_id, b)
    return held, ids


def test_a_run_taken_over_after_expiry_counts_each_attempt_and_equals_an_uninterrupted_run(tmp_path):
    clock = Clock()
    # The reference: one attempt from start to end.
    ref_config = _config(tmp_path, "ref")
    ref_lease, _ = _attempt(ref_config, clock)
    ref = finish_run(ref_config.root, ref_lease.run_id, ref_lease.attempt)
    ref_lease.release()

    config = _config(tmp_path, "store")
    first, first_ids = _attempt(config, clock, batches=1)  # then the owner is SIGKILLed: never released
    run_id = first.run_id
    assert run_id == ref_lease.run_id  # the root is not part of the job
    clock.t += SETTINGS.ttl_s + 1
    second, second_ids = _attempt(config, clock, batches=0)
    assert second.generation == 2
    # The dead attempt's unfinished batch is refused (a fence: its owner lost the lease).
    with pytest.raises(LeaseLostError):
        run_batch(config.root, run_id, first_ids[1])
    for b in second_ids:
        run_batch(config.root, run_id, b)
    s = finish_run(config.root, run_id, second.attempt)
    second.release()

    assert s["rows"] == ref["rows"] == {"outputs": 4, "input_rows_done": 4, "failed": 0}
    assert ref["embedding_steps"] == ref["embedding_steps_all_attempts"] == 4 * STEPS_PER_IMAGE
    assert s["embedding_steps_all_attempts"] == ref["embedding_steps"]
    assert s["embedding_steps"] == 2 * STEPS_PER_IMAGE and s["embedded"] == 2
    assert (s["attempts"], s["batches_run"], s["batches_total"]) == (2, 1, 2)
    assert (ref["attempts"], ref["batches_run"], ref["batches_total"]) == (1, 2, 2)
    by = s["by_attempt"]
    assert set(by) == {first.attempt, second.attempt}
    assert by[first.attempt]["embedding_steps"] == by[second.attempt]["embedding_steps"] == 2 * STEPS_PER_IMAGE
    assert first.record is not None
    assert by[first.attempt]["owner"] == by[second.attempt]["owner"] == first.record.owner
    # Every image embedded and indexed once.
    assert LatentCache(config.root).ls(dedupe=False).num_rows == 4

    # A later attempt (a process that waited for the lease) finds the run finished: nothing changes.
    summary_bytes = Path(RunPaths(config.root, run_id).url("summary.json")).read_bytes()
    third = RunLease(config.root, run_id, SETTINGS, clock=clock)
    third.try_acquire()
    again = plan_run(config, attempt=third.attempt, lease_generation=third.generation)
    third.release()
    assert again.noop and again.summary == s
    assert Path(RunPaths(config.root, run_id).url("summary.json")).read_bytes() == summary_bytes


def test_an_attempt_that_planned_but_ran_nothing_still_counts(tmp_path):
    clock = Clock()
    config = _config(tmp_path, "store")
    first, _ = _attempt(config, clock, batches=0)  # killed right after planning
    clock.t += SETTINGS.ttl_s + 1
    second, _ = _attempt(config, clock)
    s = finish_run(config.root, second.run_id, second.attempt)
    assert (s["attempts"], s["batches_run"], s["batches_total"]) == (2, 2, 2)
    assert s["embedding_steps"] == s["embedding_steps_all_attempts"] == 4 * STEPS_PER_IMAGE
    assert s["by_attempt"][first.attempt]["batches_run"] == 0
