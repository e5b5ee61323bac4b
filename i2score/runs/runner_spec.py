"""The ``runner`` parameter of a job as text: which forms exist and what each needs installed.

The Prefect task runners themselves are built in :mod:`i2score.flows.runners`; this module only parses,
so that the checks before a run (:mod:`i2score.runs.preflight`) can tell a bad runner without
importing Prefect.
"""

from __future__ import annotations

import importlib.util

RUNNER_HELP = "local | dask-local[:N] | local-cuda | dask://HOST:PORT"


class RunnerError(ValueError):
    """An unknown runner, or one whose packages are not installed."""


def check_runner(runner: str) -> None:
    """Raise :class:`RunnerError` when ``runner`` is not one of :data:`RUNNER_HELP`'s forms."""
    if runner == "local":
        return
    if runner.startswith("dask://"):
        if ":" not in runner[len("dask://"):]:
            raise RunnerError(f"runner {runner!r}: expected dask://HOST:PORT")
        return
    if runner == "local-cuda" or runner == "dask-local":
        return
    if runner.startswith("dask-local:"):
        n = runner.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise RunnerError(f"runner {runner!r}: the number of workers must be a positive integer")
        return
    raise RunnerError(f"runner {runner!r}: supported runners are {RUNNER_HELP}")


def missing_packages(runner: str) -> str | None:
    """What ``runner`` (already :func:`check_runner`-ed) needs that is not installed, as a
    ``pip install`` hint; None when nothing is missing. Looks the packages up without importing
    them."""
    if runner == "local":
        return None
    if importlib.util.find_spec("prefect_dask") is None or importlib.util.find_spec("distributed") is None:
        return "Dask runners need prefect-dask and distributed: pip install 'i2score[dask]'"
    if runner == "local-cuda" and importlib.util.find_spec("dask_cuda") is None:
        return "runner 'local-cuda' needs dask-cuda: pip install 'i2score[cuda]'"
    return None
