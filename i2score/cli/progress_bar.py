"""The flow commands' progress bar: one line per phase of a run, in optimisation steps, with
the time left per phase (rich estimates it from the phase's recent speed) and the run's
long-run warning printed above the bars."""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from i2score.runs import progress

#: Seconds between redraws of a bar driven by step events (a step can take milliseconds).
REFRESH_S = 0.2


class StepProgressBar:
    """A :class:`i2score.runs.progress.ProgressDisplay` drawn with rich; a context manager that
    shows the progress of the runs of this process while it is open.

    A phase whose batches run no optimisation step (cache hits, forward-only edits) counts
    batches instead."""

    def __init__(self, label: str, console: Console) -> None:
        self._bar = Progress(TextColumn(f"[bold]{label}[/bold] {{task.description}}"), BarColumn(),
                             TextColumn("{task.fields[count]}"),
                             TimeElapsedColumn(), TextColumn("elapsed ·"), TimeRemainingColumn(), TextColumn("left"),
                             console=console, transient=True, refresh_per_second=1 / REFRESH_S)
        self._label = label
        self._tasks: dict[tuple[str, int], TaskID] = {}
        self._lock = threading.Lock()
        self._started: set[TaskID] = set()
        self._planning = self._bar.add_task("planning", total=None, count="", start=False)

    def __enter__(self) -> StepProgressBar:
        self._bar.__enter__()
        self._unshow = progress.show(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._unshow()
        self._bar.__exit__(exc_type, exc, tb)

    def planned(self, run: progress.RunProgress) -> None:
        with self._lock:
            self._bar.update(self._planning, visible=False)
            for i, phase in enumerate(run.phases):
                steps = phase.total_steps > 0
                # "reconstruct" runs one phase of its own name; the others say which phase a bar is.
                self._tasks[(run.run_id, i)] = self._bar.add_task(
                    "" if phase.kind == self._label else phase.kind,
                    total=phase.total_steps if steps else len(phase.budgets), count="", start=False)
        self.changed(run)

    def changed(self, run: progress.RunProgress) -> None:
        with self._lock:
            for i, phase in enumerate(run.phases):
                task = self._tasks.get((run.run_id, i))
                if task is None:
                    continue
                if phase.started_at is not None and task not in self._started:
                    self._bar.start_task(task)
                    self._started.add(task)
                steps = phase.total_steps > 0
                done = phase.done_steps if steps else phase.batches_done
                total = phase.total_steps if steps else len(phase.budgets)
                self._bar.update(task, completed=done,
                                 count=f"{done:,}/{total:,} {'steps' if steps else 'batches'}")

    def warning(self, run: progress.RunProgress, text: str) -> None:
        self._bar.console.print(f"[yellow]warning:[/yellow] {text}")
