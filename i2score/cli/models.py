"""``i2s models ...``: the registries of pretrained generators and encoders, the local model cache, samples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from i2score.generator.registry import DEFAULT_MODEL

models_app = typer.Typer(
    help="Pretrained generator checkpoints: list the registry, fetch into the local cache.",
    no_args_is_help=True,
)

CacheDirOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Model cache directory (default: $I2S_CACHE_DIR, else "
                                     "~/.cache/i2score/models)."),
]


@models_app.command("list")
def models_list(cache_dir: CacheDirOption = None) -> None:
    """Show the registered models and whether each is already in the local cache."""
    from i2score.generator.registry import MODELS, model_cache_path

    console = Console()
    rows = [(spec, model_cache_path(spec.name, cache_dir).is_file()) for spec in MODELS.values()]
    url_width = max(len(spec.url) for spec, _ in rows)
    # URLs are long; folding them inside a cell breaks copy-paste, so in a narrow terminal
    # they go below the table on lines of their own instead.
    inline_urls = console.width >= url_width + 80

    # Fits 80 columns: one-space gaps, the default model and pinned checksums in the caption.
    table = Table(title="i2score model registry", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                  caption=f"* default model; sha256 pinned: "
                          f"{', '.join(s.name for s, _ in rows if s.sha256) or 'none'}")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("family", no_wrap=True)
    table.add_column("format", no_wrap=True)
    table.add_column("res", justify="right")
    table.add_column("domain")
    table.add_column("cached")
    if inline_urls:
        table.add_column("url", no_wrap=True)
    for spec, cached in rows:
        cells = [spec.name + (" *" if spec.name == DEFAULT_MODEL else ""), spec.family, spec.format,
                 str(spec.resolution), spec.domain,
                 "bundled" if spec.url.startswith("bundled://") else "yes" if cached else "no"]
        table.add_row(*cells, *([spec.url] if inline_urls else []))
    console.print(table)
    if not inline_urls:
        for spec, _ in rows:
            console.print(f"{spec.name}  {spec.url}", soft_wrap=True, highlight=False,
                          markup=False)
    _encoders_table(console, cache_dir)


def _encoders_table(console: Console, cache_dir: Path | None) -> None:
    from i2score.encoders.registry import DEFAULT_ENCODER, ENCODERS, encoder_cache_path

    table = Table(title="i2score encoder registry", box=box.SIMPLE_HEAD)
    for column in ("name", "arch", "generator", "cached", "default for"):
        table.add_column(column, no_wrap=column != "default for", style="bold" if column == "name" else None)
    for spec in ENCODERS.values():
        defaults = ", ".join(g for g, e in DEFAULT_ENCODER.items() if e == spec.name)
        cached = "yes" if encoder_cache_path(spec.name, cache_dir).is_file() else "no"
        table.add_row(spec.name, spec.arch, spec.generator, cached, defaults)
    console.print(table)
    # Google Drive links: a person may have to download by hand, so print the authors' page.
    for spec in (s for s in ENCODERS.values() if s.page):  # bundled ones have no download page
        console.print(f"{spec.name}  {spec.page}", soft_wrap=True, highlight=False, markup=False)


@models_app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="Registry name, local path or fsspec URL.")],
    cache_dir: CacheDirOption = None,
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 (hex).")] = None,
    timeout: Annotated[float, typer.Option(help="Connect/read timeout in seconds.")] = 30.0,
) -> None:
    """Resolve a model into the cache and print its local path (the only stdout line)."""
    from i2score.generator.registry import (
        ChecksumMismatchError,
        ModelUnavailableError,
        resolve_model_file,
    )

    try:
        path = resolve_model_file(name, cache_dir=cache_dir, sha256=sha256, timeout=timeout)
    except (ModelUnavailableError, ChecksumMismatchError, ValueError) as exc:
        # Text, not markup: paths and URLs in the message may contain "[...]".
        Console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(exc)),
                                   soft_wrap=True)
        raise typer.Exit(code=1) from None
    # Plain print: scripts capture this line, so no rich markup or wrapping.
    typer.echo(str(path))


@models_app.command("samples")
def models_samples(
    out: Annotated[Path, typer.Argument(help="PNG file to write.")],
    model: Annotated[str, typer.Option(help="Registry name, local path or fsspec URL.")] = DEFAULT_MODEL,
    n: Annotated[int, typer.Option(help="Number of samples (a square number).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of z and noise.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
) -> None:
    """Write a contact sheet of random samples of a model (a square grid, native resolution)."""
    import math

    from PIL import Image

    from i2score.demo.training import sample_grid
    from i2score.generator.checkpoints import load_generator

    if n < 1 or math.isqrt(n) ** 2 != n:
        raise typer.BadParameter(f"n must be a square number, got {n}", param_hint="--n")
    G = load_generator(model, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample_grid(G, n, seed=seed)).save(out, optimize=True)
    typer.echo(str(out))
