"""``i2s cache ...``: inspect and maintain the latent cache (thin wrappers over
:class:`i2score.data.cache.LatentCache`). Registered by ``i2score.cli.app`` as ``app.add_typer(cache_app,
name="cache")``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

cache_app = typer.Typer(
    help="Latent cache: list, inspect, verify and compact the index under a storage root.",
    no_args_is_help=True,
)

RootArg = Annotated[str, typer.Argument(help="Storage root URL (local path, s3://bucket/prefix, ...).")]


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}" if n >= 10 * scale else f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _model(generator_id: str | None) -> str:
    # A model given as a path or URL is named by its file: the folder is in `i2s cache show`.
    return generator_id.rstrip("/").rsplit("/", 1)[-1] if generator_id else "-"


@cache_app.command("ls")
def cache_ls(
    root: RootArg,
    limit: Annotated[int, typer.Option(help="Show at most this many (newest) entries; 0 = all.")] = 50,
    source: Annotated[str | None, typer.Option(help="Only the entries of this source id (a manifest row id).")] = None,
) -> None:
    """List cache entries, newest first (newest row per key): source id, key prefix (for
    `i2s cache show`), model, settings (W+ steps + noise steps; the algorithm when not a
    reconstruction), steps run, PSNR (dB, w and noise), NPZ size and date (UTC). Fits 80 columns."""
    import pyarrow.compute as pc

    from i2score.data.cache import LatentCache
    from i2score.data.cache.view import settings_label
    from i2score.data.storage import redact

    table = LatentCache(root).ls()  # oldest first
    if source is not None:
        table = table.filter(pc.equal(table.column("source_id"), source))
    total = table.num_rows
    shown = table.slice(max(0, total - limit)) if limit else table
    console = Console()
    what = f" of source {source!r}" if source is not None else ""
    # The heading on its own line: a table's title wraps at the table's width, often narrower.
    console.print(Text(f"latent cache {redact(root)}: {total} entries{what}"), overflow="fold")
    # One space between columns (the box's divider, no padding) and short cells: 80 columns.
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    out.add_column("source id", overflow="fold")
    out.add_column("key", no_wrap=True)
    out.add_column("model", overflow="ellipsis", max_width=18)
    out.add_column("settings", overflow="fold")
    out.add_column("steps", justify="right", no_wrap=True)
    out.add_column("psnr", justify="right", no_wrap=True)
    out.add_column("size", justify="right", no_wrap=True)
    out.add_column("date", no_wrap=True)
    for r in reversed(shown.to_pylist()):
        algorithm = r["algorithm"].rsplit("/", 1)[-1]
        settings = settings_label(json.loads(r["params"]))
        if algorithm != "reconstruct":
            settings = f"{algorithm} {settings}"
        if r["status"] != "ok":
            settings += f" ({r['status']})"
        # Text cells: ids are data, never rich markup.
        out.add_row(Text(_fmt(r["source_id"])), r["key"][:8], Text(_model(r["generator_id"])), settings,
                    _fmt(r["steps"]), _fmt(r["psnr_wn"], 1), _size(r["npz_bytes"]),
                    r["created_at"].strftime("%Y-%m-%d"))
    console.print(out)
    if limit and total > limit:
        console.print(f"({total - limit} older entries not shown; --limit 0 shows all)")


@cache_app.command("show")
def cache_show(
    root: RootArg,
    key: Annotated[str, typer.Argument(help="Cache key, or a unique prefix of one (>= 6 hex digits).")],
) -> None:
    """Show one entry: its index rows, whether its NPZ exists and verifies, its metadata."""
    from i2score.data.cache import LatentCache

    cache = LatentCache(root)
    try:
        full = cache.resolve(key)
    except (KeyError, ValueError) as e:
        typer.echo(f"error: {e.args[0] if e.args else e}", err=True)
        raise typer.Exit(2) from None
    info = cache.show(full)
    console = Console()
    out = Table(title=f"cache entry {full}", box=box.SIMPLE_HEAD, show_header=False)
    out.add_column("field", style="bold", no_wrap=True)
    out.add_column("value", overflow="fold")
    out.add_row("npz", info["npz_path"])
    out.add_row("npz exists", "yes" if info["npz_exists"] else "no")
    out.add_row("npz verified", "yes" if info["npz_ok"] else f"NO ({info['reason']})")
    out.add_row("index rows", str(info["index_rows"]))
    if info["entries"]:
        entry = info["entries"][-1]
        out.add_row("source id", _fmt(entry.source_id))
        out.add_row("image sha256", entry.image_sha256)
        out.add_row("mask sha256", _fmt(entry.mask_sha256))
        out.add_row("generator", f"{_fmt(entry.generator_id)} ({entry.generator_sha256})")
        out.add_row("algorithm", f"{entry.algorithm} v{entry.algorithm_version}")
        out.add_row("params", entry.params_json)
        out.add_row("w shape", f"{entry.w_shape[0]}x{entry.w_shape[1]}")
        out.add_row("noise dtype", entry.noise_dtype)
        out.add_row("metrics", ", ".join(f"{k}={_fmt(v, 4)}" for k, v in entry.metrics.items()))
        out.add_row("timings", ", ".join(f"{k}={_fmt(v)}" for k, v in entry.timings.items()))
        out.add_row("status", entry.status)
        out.add_row("created", entry.created_at.isoformat())
    if info.get("meta"):
        out.add_row("latents meta", json.dumps(info["meta"], sort_keys=True))
    console.print(out)


@cache_app.command("verify")
def cache_verify(
    root: RootArg,
    adopt: Annotated[bool, typer.Option("--adopt/--no-adopt", help="First index valid orphan NPZs.")] = False,
) -> None:
    """Check every entry (NPZ exists, loads, checksum and shapes match its index row); exit 1
    when anything is missing, corrupt, mismatched or an index part is unreadable."""
    from i2score.data.cache import LatentCache
    from i2score.data.storage import redact

    cache = LatentCache(root)
    adopted = cache.adopt_orphans() if adopt else []
    rep = cache.verify()
    console = Console()
    out = Table(title=f"verify {redact(root)}", box=box.SIMPLE_HEAD, show_header=False)
    out.add_column("check", style="bold")
    out.add_column("count", justify="right")
    for name, value in (("index parts", rep.index_parts), ("index rows", rep.index_rows), ("keys", rep.keys),
                        ("NPZs verified", rep.verified), ("adopted now", len(adopted)),
                        ("orphans (NPZ without row)", len(rep.orphans)), ("missing NPZ", len(rep.missing)),
                        ("corrupt NPZ", len(rep.corrupt)), ("row/NPZ mismatch", len(rep.mismatched)),
                        ("unreadable index parts", len(rep.bad_parts))):
        out.add_row(name, str(value))
    console.print(out)
    problems = ([(k, "missing NPZ") for k in rep.missing] + list(rep.corrupt.items())
                + list(rep.mismatched.items()) + list(rep.bad_parts.items()))
    if problems:
        bad = Table(title="problems", box=box.SIMPLE_HEAD)
        bad.add_column("key / part", no_wrap=True)
        bad.add_column("reason")
        for k, why in problems:
            bad.add_row(redact(k), redact(why))
        console.print(bad)
    if rep.orphans and not adopt:
        console.print(f"{len(rep.orphans)} orphan NPZ(s): `i2s cache verify --adopt` indexes them.")
    if not rep.ok:
        raise typer.Exit(1)
    console.print("[green]cache OK[/green]")


@cache_app.command("compact")
def cache_compact(root: RootArg) -> None:
    """Merge all index parts into one per w shape (no row is lost; duplicates collapse)."""
    from i2score.data.cache import LatentCache
    from i2score.data.storage import redact

    rep = LatentCache(root).compact()
    console = Console()
    if rep.parts_before <= 1:
        console.print(f"nothing to compact ({rep.parts_before} index part)")
        return
    console.print(f"index parts {rep.parts_before} -> {rep.parts_after}; rows {rep.rows_before} -> "
                  f"{rep.rows_after} ({rep.duplicates_dropped} duplicate rows collapsed)")
    for url, why in rep.bad_parts.items():
        console.print(f"[yellow]left unreadable part in place:[/yellow] {redact(url)}: {redact(why)}")
