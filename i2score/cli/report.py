"""``i2s report RUN_URL``: write a finished run's report again from its records (wired into
:mod:`i2score.cli.app`), e.g. after an upgrade of the report, or to get ``report.html``,
``metrics.png`` and a worst-first ``sheet.png`` for a run finished by an older version.

Exit codes: 0 written; 2 not a finished run folder (no ``summary.json``) or unreadable.
"""

from __future__ import annotations

from typing import Annotated

import typer

from i2score.data import storage


def report_cmd(
    run_url: Annotated[str, typer.Argument(
        help="The run's folder, <root>/runs/<run-id> (a path or any fsspec URL, e.g. s3://bucket/i2s/runs/edit-…).")],
) -> None:
    """Re-render a finished run's report.md, report.html, sheet.png and metrics.png from its records."""
    from i2score.runs.report import rerender_report

    try:
        summary = rerender_report(run_url)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {storage.redact(e)}", err=True)
        raise typer.Exit(2) from None
    files = summary["files"]
    rows = summary["rows"]
    typer.echo(f"run {summary['run_id']}: {rows['outputs']} outputs, {rows['failed']} failed rows")
    for name in ("report_html", "report", "sheet", "metrics_plot"):
        if files.get(name):
            typer.echo(f"  {files[name]}")
