"""How far a run is, in optimisation steps, and how long the rest will take.

A run's cost is its optimisation steps (the forward-only ops and cache hits are cheap), so the
plan gives every batch a step budget (:func:`i2score.runs.plan.planned_steps`) and progress is
counted against the budgets of each phase (embed, then edit or augment). Steps arrive two ways:

- as step events from the batches running in this process (the ``local`` runner): the executor
  calls :func:`emit_step` once per optimiser step, so a bar moves inside an hour-long batch;
- as a finished batch (:meth:`RunProgress.batch_done`), from any runner: the batch's budget is
  then complete, whatever it used (converge-stopping and warm starts end early).

The flow makes a :class:`RunProgress` and :func:`track` s it; displays (the CLI's bar) register
with :func:`show`. Estimates are measured, never assumed: the first one comes from the run's
own first steps (after :data:`MIN_SAMPLE_S` seconds of work).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: A run estimated to take longer than this (seconds) gets a warning with the estimate
#: (``I2S_LONG_RUN_WARN_S`` overrides it in the flows and the CLI).
LONG_RUN_WARN_S = 15 * 60
#: Seconds of measured steps before the first estimate: a shorter sample is dominated by
#: one-off costs (the first steps' allocations). With step events the clock starts at the first
#: step (loading the model and the images is not a step's cost); without, at the first batch.
MIN_SAMPLE_S = 5.0


class ProgressDisplay(Protocol):
    """What shows progress (the CLI's bar). Called from the flow's and the batches' threads."""

    def planned(self, run: RunProgress) -> None:
        """A run's batches are planned and start now."""

    def changed(self, run: RunProgress) -> None:
        """Steps ran or a batch finished."""

    def warning(self, run: RunProgress, text: str) -> None:
        """A one-time warning: the run will be long (see :meth:`RunProgress.long_run_warning`)."""


_displays: list[ProgressDisplay] = []
_runs: list[RunProgress] = []
_lock = threading.Lock()


def show(display: ProgressDisplay) -> Callable[[], None]:
    """Send the progress of runs in this process to ``display``; returns the function that stops it."""
    with _lock:
        _displays.append(display)

    def stop() -> None:
        with _lock:
            _displays.remove(display)
    return stop


def _each_display(fn: Callable[[ProgressDisplay], None]) -> None:
    with _lock:
        displays = list(_displays)
    for d in displays:
        fn(d)


def track(run: RunProgress) -> Callable[[], None]:
    """Count this process's step events against ``run`` and tell the displays it started;
    returns the function that stops tracking it."""
    with _lock:
        _runs.append(run)
    _each_display(lambda d: d.planned(run))

    def stop() -> None:
        with _lock:
            _runs.remove(run)
    return stop


def tracked(run_id: str) -> RunProgress | None:
    """The tracked progress of ``run_id`` in this process, if any."""
    with _lock:
        return next((r for r in _runs if r.run_id == run_id), None)


def emit_step(batch_id: str) -> None:
    """One optimisation step of ``batch_id`` ran in this process."""
    with _lock:
        runs = [r for r in _runs if r.has(batch_id)]
    for run in runs:
        run.step(batch_id)


def step_callback(batch_id: str) -> Callable[[int, Any], None] | None:
    """An optimisation-loop callback (``callback(step, loss)``) that counts a step of
    ``batch_id``; None when no run of this process tracks it (a Dask worker, a library call),
    so the loop skips the call. It never reads the loss: no synchronisation with the device."""
    with _lock:
        if not any(r.has(batch_id) for r in _runs):
            return None
    return lambda _step, _loss: emit_step(batch_id)


@dataclass
class PhaseProgress:
    """One phase of a run: its batches' budgets and what is done of them."""

    kind: str
    budgets: dict[str, int]
    steps_seen: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    started_at: float | None = None

    @property
    def total_steps(self) -> int:
        return sum(self.budgets.values())

    @property
    def done_steps(self) -> int:
        """Finished batches count their whole budget; running ones the steps seen (capped)."""
        return sum(b if bid in self.finished else min(self.steps_seen.get(bid, 0), b)
                   for bid, b in self.budgets.items())

    @property
    def batches_done(self) -> int:
        return len(self.finished)


def format_duration(seconds: float) -> str:
    """``3 h 05 min``, ``12 min``, ``40 s``: a duration for people."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min"
    return f"{s} s"


class RunProgress:
    """A run's progress in optimisation steps, phase by phase, with a measured estimate of the
    time left and a one-time warning when that estimate is long. Thread-safe (step events come
    from the batches' threads).

    Args:
        run_id: the run.
        phases: batch ids per phase, in run order.
        budgets: each batch's step budget (0 for batches that only render).
        kinds: each batch's kind (``reconstruct``, ``embed``, ``edit``, ``augment``).
        device, schedule: for the warning's text.
        warn_after_s: warn once when the measured estimate of the time left exceeds it.
        on_warning: also called with the warning's text (the flow logs it).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, run_id: str, phases: Sequence[Sequence[str]], budgets: Mapping[str, int],
                 kinds: Mapping[str, str], *, device: str = "", schedule: str = "",
                 warn_after_s: float = LONG_RUN_WARN_S, on_warning: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run_id = run_id
        self.phases = [PhaseProgress(kinds[p[0]] if p else "", {b: int(budgets.get(b, 0)) for b in p})
                       for p in phases]
        self.total_steps = sum(p.total_steps for p in self.phases)
        self.device, self.schedule, self.warn_after_s = device, schedule, warn_after_s
        self._on_warning = on_warning
        self._phase_of = {b: i for i, p in enumerate(phases) for b in p}
        self._clock = clock
        self._lock = threading.Lock()
        self._work_started: float | None = None  # the first batch submitted: planning excluded
        self._first_step: tuple[float, int] | None = None  # (time, steps done before it)
        self._done = 0
        self._warned = False

    def has(self, batch_id: str) -> bool:
        """Whether ``batch_id`` is a batch of this run."""
        return batch_id in self._phase_of

    @property
    def done_steps(self) -> int:
        """Finished batches count their whole budget; running ones the steps seen (capped)."""
        return self._done

    def batch_started(self, batch_id: str) -> None:
        """``batch_id`` was submitted (starts the clock of its phase and of the estimate)."""
        with self._lock:
            phase = self.phases[self._phase_of[batch_id]]
            now = self._clock()
            phase.started_at = phase.started_at if phase.started_at is not None else now
            self._work_started = self._work_started if self._work_started is not None else now

    def step(self, batch_id: str, n: int = 1) -> None:
        """``n`` optimisation steps of ``batch_id`` ran."""
        with self._lock:
            phase = self.phases[self._phase_of[batch_id]]
            if batch_id in phase.finished:
                return
            before = min(phase.steps_seen.get(batch_id, 0), phase.budgets[batch_id])
            phase.steps_seen[batch_id] = phase.steps_seen.get(batch_id, 0) + n
            self._done += min(phase.steps_seen[batch_id], phase.budgets[batch_id]) - before
            if self._first_step is None:  # an event marks the end of its steps: count from here
                self._first_step = (self._clock(), self._done)
        self._changed()

    def batch_done(self, batch_id: str) -> None:
        """``batch_id`` finished (or failed for good): its whole budget counts as done."""
        with self._lock:
            phase = self.phases[self._phase_of[batch_id]]
            if batch_id in phase.finished:
                return
            self._done += phase.budgets[batch_id] - min(phase.steps_seen.get(batch_id, 0), phase.budgets[batch_id])
            phase.finished.add(batch_id)
        self._changed()

    def _changed(self) -> None:
        _each_display(lambda d: d.changed(self))
        text = self.long_run_warning()
        if text is not None:
            if self._on_warning is not None:
                self._on_warning(text)
            _each_display(lambda d: d.warning(self, text))

    def seconds_left(self) -> float | None:
        """Measured seconds per step so far times the steps left; None before
        :data:`MIN_SAMPLE_S` seconds of measured steps, or when no step is planned."""
        with self._lock:
            start, done_before = self._first_step or (self._work_started, 0)
            if start is None:
                return None
            elapsed = self._clock() - start
            measured = self._done - done_before
            left = self.total_steps - self._done
        if self.total_steps == 0 or measured <= 0 or elapsed < MIN_SAMPLE_S:
            return None
        return elapsed / measured * left

    def long_run_warning(self) -> str | None:
        """The warning, once, when the measured estimate of the time left exceeds
        ``warn_after_s`` (None otherwise, and every time after the first)."""
        if self._warned:
            return None
        left = self.seconds_left()
        if left is None or left <= self.warn_after_s:
            return None
        with self._lock:
            if self._warned:
                return None
            self._warned = True
        hint = (" ('--schedule fast' starts from the encoder and stops when converged: about a tenth of "
                "'paper')" if self.schedule not in ("fast", "encoder") else "")
        return (f"run {self.run_id} will take about {format_duration(left)} more on {self.device or 'this device'} "
                f"(schedule {self.schedule!r}, {self.total_steps - self.done_steps:,} optimisation steps left, "
                f"measured on its first steps){hint}")
