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

from i2score.cli.manifest import MASKS_HELP
from i2score.data import storage

#: Rejected rows listed in full without ``--all``; the rest are only counted by reason.
MAX_LISTED = 50


def validate_cmd(
    manifest: Annotated[str, typer.Argument(help="Manifest path or URL (.csv, .tsv, .parquet, .jsonl), or a folder "
                                                 "or glob of png/jpg/jpeg/webp images (./photos, 'photos/*.jpg', "
                                                 "s3://bucket/faces/).")],
    kind: Annotated[str | None, typer.Option(
        help="reconstruct | inpaint | edit (default: from the columns: an op column is edit, else a mask "
             "column is inpaint, else reconstruct)")] = None,
    check_files: Annotated[bool, typer.Option(
        "--check-files/--no-check-files",
        help="Also read and decode every image and mask (slower; same checks as a run).")] = True,
    model: Annotated[str | None, typer.Option(
        help="Generator the rows will run on (registry name, path or URL; default: the default model): "
             "its layers and W+ rows bound layer parameters, its resolution is what files are fitted to.")] = None,
    resolution: Annotated[int | None, typer.Option(
        help="Resolution the files are fitted to (default: the generator's).")] = None,
    list_all: Annotated[bool, typer.Option(
        "--all", help=f"List every rejected row (default: the first {MAX_LISTED}).")] = False,
    output: Annotated[str | None, typer.Option(
        "--output", help="Also write every rejection (row, id, reason, field, message, url) to this file: "
                         ".csv, .parquet or .jsonl.")] = None,
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="URL prefix files may come from (repeatable); default: the manifest's own folder, "
                        "as in a run.")] = None,
    max_input_bytes: Annotated[int | None, typer.Option(
        help="Largest input file read, in bytes (default 64 MiB).")] = None,
    masks: Annotated[str | None, typer.Option("--masks", help=MASKS_HELP)] = None,
) -> None:
    """Validate a manifest, or the rows of a folder or glob of images: print the valid count and
    a table of rejected rows with reasons.

    Exits 1 if any row is rejected, 2 if the manifest or the model cannot be read.
    """
    from i2score.data.inputs import policy_for_manifest
    from i2score.data.manifest import Manifest, ManifestError, absolute_url, validate_manifest, write_rejections
    from i2score.data.manifest.discover import discover, is_manifest_source
    from i2score.generator.checkpoints import load_generator
    from i2score.generator.registry import DEFAULT_MODEL
    from i2score.runs.ops import CATALOG, KINDS, generator_limits, infer_kind

    console = Console()
    if kind is not None and kind not in KINDS:
        console.print(f"[red]--kind must be one of {', '.join(KINDS)}[/red]")
        raise typer.Exit(2)
    if output is not None and output.rsplit(".", 1)[-1].lower() not in ("csv", "parquet", "jsonl"):
        console.print(Text(f"--output {output}: use a .csv, .parquet or .jsonl name", style="red"))
        raise typer.Exit(2)
    model_name = model or DEFAULT_MODEL
    try:
        inputs = policy_for_manifest(absolute_url(manifest), allow or None, max_input_bytes,
                                     None if masks is None else absolute_url(masks))
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    try:
        G = load_generator(model_name, device="cpu")
    except Exception as e:  # noqa: BLE001 - any failure to load the model is reported, exit 2
        console.print(Text(f"cannot load model {storage.redact(model_name)}: ", style="red") + Text(storage.redact(e)))
        raise typer.Exit(2) from None
    catalog = CATALOG.for_generator(generator_limits(G, model_name))
    try:
        if is_manifest_source(manifest):
            parsed = Manifest.read(manifest, masks=masks)
        else:
            found = discover(manifest, masks)
            console.print(Text(found.describe()))
            # Masks are rows' inputs of inpaint jobs only: another kind's rows would reject them.
            parsed = Manifest.from_bytes(found.to_csv(mask_column=kind in (None, "inpaint")), absolute_url(manifest))
    except (ManifestError, OSError) as e:
        console.print(Text("cannot read manifest: ", style="red") + Text(storage.redact(e)))
        raise typer.Exit(2) from None
    if kind is None:
        kind = infer_kind(parsed.columns)
        console.print(Text(f"kind {kind} (from the columns; --kind sets it)"))
    try:
        result = validate_manifest(parsed, catalog, kind=kind, check_files=check_files,
                                   resolution=(resolution or G.resolution) if check_files else None,
                                   inputs=inputs)
    except (ManifestError, OSError) as e:
        console.print(Text("cannot read manifest: ", style="red") + Text(storage.redact(e)))
        raise typer.Exit(2) from None

    checked = "schema + files" if check_files else "schema only"
    summary = Text(f"{storage.redact(result.manifest_url)} ({kind}, {checked}, model {storage.redact(model_name)}): ")
    summary.append(f"{result.n_total} rows", style="bold").append(", ")
    summary.append(f"{len(result.rows)} valid", style="green").append(", ")
    summary.append(f"{len(result.rejected)} rejected", style="red" if result.rejected else "green")
    console.print(summary, soft_wrap=True)  # one line a script can grep, whatever the terminal's width
    if output is not None:
        n = write_rejections(result.rejected, output)
        console.print(Text(f"wrote {n} rejections to {storage.redact(output)}"))
    if not result.rejected:
        return

    counts = Table(title="rejections by reason", box=box.SIMPLE_HEAD)
    counts.add_column("reason", style="bold")
    counts.add_column("rows", justify="right")
    for reason, n in result.counts_by_reason().items():
        counts.add_row(reason, str(n))
    console.print(counts)

    listed = result.rejected if list_all else result.rejected[:MAX_LISTED]
    table = Table(title="rejected rows", box=box.SIMPLE_HEAD)
    table.add_column("row", justify="right")
    table.add_column("id", overflow="fold")
    table.add_column("reason", no_wrap=True)
    table.add_column("message", overflow="fold")
    for r in listed:
        # Text(): ids and messages come from the manifest; never interpret them as markup
        table.add_row(str(r.row), Text(r.id if r.id is not None else "-"), r.reason_code,
                      Text(storage.redact(r.message)))
    console.print(table)
    if len(result.rejected) > len(listed):
        console.print(f"... and {len(result.rejected) - len(listed)} more rejected rows "
                      "(--all lists them, --output FILE writes them all)")
    raise typer.Exit(1)
