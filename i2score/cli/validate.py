"""``i2s validate``: check a manifest before a run (wired into :mod:`i2score.cli.app`).

Exit codes: 0 every row is valid; 1 at least one row was rejected (the table says why);
2 the manifest itself cannot be read (missing, unknown format, unparsable).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from i2score.data import storage

#: Rejected rows listed in full; the rest are only counted by reason.
MAX_LISTED = 50


def validate_cmd(
    manifest: Annotated[str, typer.Argument(help="Manifest path or URL (.csv, .tsv, .parquet, .jsonl).")],
    kind: Annotated[str, typer.Option(help="reconstruct | inpaint | edit")] = "reconstruct",
    check_files: Annotated[bool, typer.Option(
        "--check-files/--no-check-files",
        help="Also read and decode every image and mask (slower; same checks as a run).")] = True,
    resolution: Annotated[int, typer.Option(help="Generator resolution the files are fitted to.")] = 64,
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="URL prefix files may come from (repeatable); default: the manifest's own folder, "
                        "as in a run.")] = None,
    max_input_bytes: Annotated[int | None, typer.Option(
        help="Largest input file read, in bytes (default 64 MiB).")] = None,
) -> None:
    """Validate a manifest: print the valid count and a table of rejected rows with reasons.

    Exits 1 if any row is rejected, 2 if the manifest cannot be read.
    """
    from i2score.data.inputs import policy_for_manifest
    from i2score.data.manifest import ManifestError, absolute_url, validate_manifest
    from i2score.runs.ops import CATALOG, KINDS

    console = Console()
    if kind not in KINDS:
        console.print(f"[red]--kind must be one of {', '.join(KINDS)}[/red]")
        raise typer.Exit(2)
    try:
        inputs = policy_for_manifest(absolute_url(manifest), allow or None, max_input_bytes)
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    try:
        result = validate_manifest(manifest, CATALOG, kind=kind, check_files=check_files,
                                   resolution=resolution if check_files else None, inputs=inputs)
    except (ManifestError, OSError) as e:
        console.print(Text("cannot read manifest: ", style="red") + Text(storage.redact(e)))
        raise typer.Exit(2) from None

    checked = "schema + files" if check_files else "schema only"
    summary = Text(f"{storage.redact(result.manifest_url)} ({kind}, {checked}): ")
    summary.append(f"{result.n_total} rows", style="bold").append(", ")
    summary.append(f"{len(result.rows)} valid", style="green").append(", ")
    summary.append(f"{len(result.rejected)} rejected", style="red" if result.rejected else "green")
    console.print(summary)
    if not result.rejected:
        return

    counts = Table(title="rejections by reason", box=box.SIMPLE_HEAD)
    counts.add_column("reason", style="bold")
    counts.add_column("rows", justify="right")
    for reason, n in result.counts_by_reason().items():
        counts.add_row(reason, str(n))
    console.print(counts)

    table = Table(title="rejected rows", box=box.SIMPLE_HEAD)
    table.add_column("row", justify="right")
    table.add_column("id", overflow="fold")
    table.add_column("reason", no_wrap=True)
    table.add_column("message", overflow="fold")
    for r in result.rejected[:MAX_LISTED]:
        # Text(): ids and messages come from the manifest; never interpret them as markup
        table.add_row(str(r.row), Text(r.id if r.id is not None else "-"), r.reason_code,
                      Text(storage.redact(r.message)))
    console.print(table)
    if len(result.rejected) > MAX_LISTED:
        console.print(f"... and {len(result.rejected) - MAX_LISTED} more rejected rows")
    raise typer.Exit(1)
