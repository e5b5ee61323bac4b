"""Progress in optimisation steps: budgets from the plan, steps from the optimisation loops,
a measured estimate of the time left and a one-time long-run warning."""

from __future__ import annotations

import pytest

from i2score.runs import progress
from i2score.runs.config import Schedule
from i2score.runs.ops import AUGMENTATIONS, OPS
from i2score.runs.plan import planned_steps


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _run(clock: FakeClock, **kw) -> progress.RunProgress:
    # Two phases: an embed phase of two batches (100 steps each), an edit phase of a forward-only
    # batch (0 steps) and an optimising one (40 steps).
    return progress.RunProgress("r1", [["e1", "e2"], ["x1", "x2"]], {"e1": 100, "e2": 100, "x1": 0, "x2": 40},
                                {"e1": "embed", "e2": "embed", "x1": "edit", "x2": "edit"},
                                device="cpu", schedule="paper", clock=clock, **kw)


def test_budgets_come_from_the_schedule_and_the_op_declarations():
    s = Schedule.parse("30+20/7+5")
    assert planned_steps("embed", [{"source": {}}], s) == 50
    assert planned_steps("reconstruct", [{"key": "k"}], s) == 50
    assert planned_steps("reconstruct", [{"key": "k"}], s, embeds=False) == 0  # cache hits only render
    assert planned_steps("edit", [{"row": {"op": "crossover"}}], s) == 12
    assert planned_steps("edit", [{"row": {"op": "morph"}}], s) == 0
    assert planned_steps("edit", [{"row": {"op": "inpaint"}}], s) == s.inpaint_steps_w + s.inpaint_steps_n
    assert planned_steps("augment", [{"augmentation": {"op": "noise"}}, {"augmentation": {"op": "crossover"}}],
                         s) == 12
    # Every op that optimises says so; the forward-only ones do not.
    assert {n for n, op in OPS.items() if op.optimises} == {"inpaint", "crossover", "scribble", "style_transfer"}
    assert {n for n, op in AUGMENTATIONS.items() if op.optimises} == {"crossover"}


def test_steps_and_finished_batches_count_against_the_budgets():
    clock = FakeClock()
    run = _run(clock)
    assert run.total_steps == 240 and run.done_steps == 0
    run.batch_started("e1")
    run.step("e1", 30)
    assert run.done_steps == 30 and run.phases[0].done_steps == 30
    run.step("e1", 500)  # more events than the budget (a warm start's resumed steps): capped
    assert run.done_steps == 100
    run.batch_done("e2")  # converge-stopped or run elsewhere: its whole budget is done
    run.batch_done("e2")
    assert run.done_steps == 200 and run.phases[0].batches_done == 1
    run.batch_done("x1")
    assert run.phases[1].done_steps == 0 and run.phases[1].batches_done == 1


def test_estimate_is_measured_from_the_first_steps_and_warns_once():
    clock = FakeClock()
    warnings: list[str] = []
    run = _run(clock, warn_after_s=60, on_warning=warnings.append)
    run.batch_started("e1")
    clock.t += 30  # loading the model: not a step's cost
    run.step("e1")
    assert run.seconds_left() is None  # no measured interval yet
    clock.t += 4
    run.step("e1", 9)
    assert run.seconds_left() is None and warnings == []  # under MIN_SAMPLE_S of steps
    clock.t += 6
    run.step("e1", 10)  # 19 steps in 10 s since the first: 0.526 s per step, 220 left
    assert run.seconds_left() == pytest.approx(10 / 19 * 220)
    assert len(warnings) == 1
    assert "about 1 min more on cpu" in warnings[0] and "'paper'" in warnings[0] and "220" in warnings[0]
    clock.t += 10
    run.step("e1", 10)
    assert len(warnings) == 1  # once


def test_a_short_run_does_not_warn():
    clock = FakeClock()
    warnings: list[str] = []
    run = _run(clock, warn_after_s=3600, on_warning=warnings.append)
    run.batch_started("e1")
    for _ in range(20):
        clock.t += 1
        run.step("e1")
    assert run.seconds_left() is not None and warnings == []


def test_step_events_reach_only_the_tracked_run_and_its_displays():
    seen: list[tuple[str, int]] = []

    class Display:
        def planned(self, run):
            seen.append(("planned", run.total_steps))

        def changed(self, run):
            seen.append(("changed", run.done_steps))

        def warning(self, run, text):
            seen.append(("warning", 0))

    assert progress.step_callback("e1") is None  # nobody tracks it: the loop skips the call
    stop_display = progress.show(Display())
    clock = FakeClock()
    run = _run(clock)
    untrack = progress.track(run)
    try:
        assert progress.tracked("r1") is run
        cb = progress.step_callback("e1")
        assert cb is not None
        cb(0, None)
        cb(1, None)
        progress.emit_step("not-a-batch-of-r1")
    finally:
        untrack()
        stop_display()
    assert seen == [("planned", 240), ("changed", 1), ("changed", 2)]
    assert progress.tracked("r1") is None and progress.step_callback("e1") is None


def test_durations_read_as_people_write_them():
    assert progress.format_duration(40) == "40 s"
    assert progress.format_duration(12 * 60 + 5) == "12 min"
    assert progress.format_duration(3 * 3600 + 5 * 60) == "3 h 05 min"
