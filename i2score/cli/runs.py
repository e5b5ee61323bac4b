"""``i2s runs ...``: list the runs under a storage root and show one (thin wrappers over
:mod:`i2score.runs.results`). Registered by ``i2score.cli.app`` as ``app.add_typer(runs_app,
name="runs")``. Tables fit an 80-column terminal.

Exit codes: 0 shown; 2 no such run, or its files cannot be read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

runs_app = typer.Typer(
    help="Runs under a storage root: list them, show one (config, counts, metrics, where its files are).",
    no_args_is_help=True,
)

RootOpt = Annotated[str, typer.Option("--root", help="Storage root URL: a local folder, s3://bucket/prefix, ... "
                                                     "(the flows' --root).")]

#: How ``i2s runs ls`` writes a state (one word where the library's name is long).
_STATE_LABEL = {"completed with failures": "with failures"}
_STATE_STYLE = {"completed": "green", "completed with failures": "yellow", "failed": "red", "running": "cyan",
                "unreadable": "red"}


def _fail(console: Console, message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", overflow="fold", highlight=False)
    raise typer.Exit(2)


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t else "-"


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


@runs_app.command("ls")
def runs_ls(root: RootOpt = "i2s-data") -> None:
    """List the runs under the root, newest first: id, kind, state, outputs, failed rows and
    when each finished (or was planned, when it has not finished), in UTC."""
    from i2score.data.storage import redact
    from i2score.runs.results import UNREADABLE, list_runs

    console = Console()
    try:
        runs = list_runs(root)
    except Exception as e:  # noqa: BLE001 - a store that cannot be listed is one line, not a traceback
        _fail(console, f"cannot list {redact(root)}/runs: {type(e).__name__}: {redact(str(e))}")
    if not runs:
        console.print(Text(f"no runs under {redact(root)}"))
        return
    # One space between columns (the box's divider, no padding): a default run id, its kind,
    # state, counts and date then fit 80 columns.
    console.print(Text(f"runs under {redact(root)}, newest first"), overflow="fold")
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    out.add_column("run id", overflow="fold")
    out.add_column("kind", no_wrap=True)
    out.add_column("state", overflow="fold")
    out.add_column("out", justify="right", no_wrap=True)
    out.add_column("failed", justify="right", no_wrap=True)
    out.add_column("updated (UTC)", no_wrap=True)
    for r in runs:
        # Text cells: ids and paths are data, never rich markup.
        out.add_row(Text(r.run_id), Text(r.kind or "-"),
                    Text(_STATE_LABEL.get(r.state, r.state), style=_STATE_STYLE.get(r.state, "")),
                    _count(r.outputs), _count(r.failed), _when(r.updated))
    console.print(out)
    for r in runs:
        if r.state == UNREADABLE:
            console.print(Text.assemble((r.run_id, "red"), f": {r.reason}"), overflow="fold")


def _medians(summary: dict[str, Any]) -> str:
    parts, n = [], 0
    for name, unit, digits in (("psnr", " dB", 1), ("lpips", "", 3), ("ssim", "", 3)):
        dist = (summary.get("metrics") or {}).get(name)
        if dist:
            parts.append(f"{name} {dist['median']:.{digits}f}{unit}")
            n = max(n, int(dist["n"]))
    return f"{', '.join(parts)} (n={n})" if parts else "- (this run's ops measure none)"


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run id (`i2s runs ls` lists them).")],
    root: RootOpt = "i2s-data",
    failures: Annotated[int, typer.Option(help="List at most this many failed rows.")] = 10,
) -> None:
    """Show one run: its job, state, counts, metric medians and where its outputs and report are."""
    from i2score.data.storage import redact
    from i2score.runs.results import RunNotFoundError, open_run

    console = Console()
    try:
        run = open_run(root, run_id)
    except (RunNotFoundError, ValueError) as e:
        _fail(console, str(e))
    except Exception as e:  # noqa: BLE001 - an unreadable store or run is one line, not a traceback
        _fail(console, f"cannot read run {run_id} under {redact(root)}: {type(e).__name__}: {redact(str(e))}")
    cfg, plan, s = run.config, run.plan, run.summary if run.finished else None
    sched = plan.get("schedule") or {}
    out = Table(title=f"run {run.run_id}", box=box.SIMPLE_HEAD, show_header=False, pad_edge=False)
    out.add_column("field", style="bold", no_wrap=True)
    out.add_column("value", overflow="fold")

    def row(name: str, value: str) -> None:
        out.add_row(name, Text(value))  # data, never rich markup

    row("kind", run.kind)
    row("state", run.state)
    row("manifest", redact(cfg["manifest"]))
    gen = run.generator
    row("model", f"{gen['id']} ({gen['resolution']} px, sha256 {gen['sha256'][:12]})")
    row("schedule", f"{sched.get('name')}: {sched.get('steps_w')}+{sched.get('steps_n')} steps, "
                    f"edits {sched.get('edit_steps_w')}+{sched.get('edit_steps_n')}")
    row("seed", str(cfg.get("seed")))
    engine = plan.get("engine") or {}
    row("engine", f"device {cfg.get('device')}, batch {cfg.get('batch_size')}, {engine.get('precision', '-')}")
    if s is not None:
        rows = s["rows"]
        reasons = ", ".join(f"{k} {v}" for k, v in (s.get("errors_by_reason") or {}).items())
        row("outputs", str(rows["outputs"]))
        row("failed rows", f"{rows['failed']}" + (f" ({reasons})" if reasons else ""))
        row("medians", _medians(s))
        row("embedding", f"{s.get('embedded', 0)} images, {s.get('embedding_steps', 0)} steps, "
                         f"{s.get('cache_hits', 0)} cache hits")
        wall = s.get("wall_seconds")
        row("batches", f"{s.get('batches_total')} ({s.get('attempts')} attempt(s))"
                       + (f", wall {wall:.0f} s" if wall is not None else ""))
    else:
        counts = plan.get("counts") or {}
        row("planned", ", ".join(f"{k} {v}" for k, v in counts.items()))
        row("outputs", f"{len(run.outputs)} so far (not finished: re-run the job to resume)")
    files = run.files
    row("outputs in", redact(files["outputs"]))
    if s is not None:
        row("report", redact(files["report_html"]))
        row("", redact(files["report"]))
        row("errors", redact(files["errors"]))
    console.print(out)
    failed = run.failed
    if failed and failures:
        bad = Table(title=f"failed rows ({len(failed)})", box=box.SIMPLE_HEAD, pad_edge=False)
        bad.add_column("row", justify="right", no_wrap=True)
        bad.add_column("id", overflow="fold")
        bad.add_column("reason", overflow="fold")
        bad.add_column("message", overflow="fold")
        for f in failed[:failures]:
            bad.add_row(str(f.row), Text(f.id or "-"), f.reason, Text(redact(f.message)))
        console.print(bad)
        if len(failed) > failures:
            console.print(Text(f"({len(failed) - failures} more; all in {redact(files['errors'])})"), overflow="fold")
