"""``i2s align``: FFHQ-align the faces of a folder, glob or manifest (a thin wrapper over
:func:`i2score.runs.align.align_images`; wired into :mod:`i2score.cli.app`).

Exit codes: 0 every image aligned; 1 some rows rejected (``no_face`` and the manifest's own
reasons, listed in ``OUT/errors.csv``; the others are written); 2 nothing could run (no input,
dlib or the landmark weights missing, a bad argument).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text


def align_cmd(
    src: Annotated[str, typer.Argument(help="A manifest (.csv, .tsv, .parquet, .jsonl with id,image), a folder "
                                            "(./photos, s3://bucket/faces/) or a glob ('photos/*.jpg') of images.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder to write the aligned <id>.png, aligned.csv "
                                                               "(a reconstruct manifest with the transforms) and "
                                                               "errors.csv to.")],
    size: Annotated[int, typer.Option(help="Aligned side in pixels (FFHQ: 1024; use the generator's resolution "
                                           "for a run).")] = 1024,
    upsample: Annotated[int, typer.Option(help="Face detector upsampling steps (1 finds faces down to about 40 px, "
                                               "2 about 20 px, 4x slower per step).")] = 1,
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="URL prefix files may come from (repeatable); default: the input's own folder.")] = None,
) -> None:
    """FFHQ-align every image of SRC: the largest face of each (eyes and mouth -> FFHQ's oriented
    square crop), written as OUT/<id>.png with its transform in OUT/aligned.csv; an image
    without a face is a no_face row of OUT/errors.csv and the others go on."""
    from i2score.data import storage
    from i2score.data.align import AlignUnavailableError
    from i2score.data.manifest import ManifestError
    from i2score.runs.align import align_images

    err = Console(stderr=True, soft_wrap=True)
    if not 8 <= size <= 4096 or not 0 <= upsample <= 3:
        err.print(Text("--size must be in 8..4096 and --upsample in 0..3", style="red"))
        raise typer.Exit(2)
    try:
        result = align_images(src, output, size=size, allowed=allow, upsample=upsample)
    except (AlignUnavailableError, ManifestError, OSError, ValueError) as e:
        err.print(Text(storage.redact(str(e)), style="red"))
        raise typer.Exit(2) from None
    console = Console(soft_wrap=True)
    several = sum(1 for r in result.rows if int(r["faces"]) > 1)
    console.print(Text(f"aligned {len(result.rows)} images ({size}x{size}) in {result.seconds:.1f} s, "
                       f"{len(result.rejected)} rejected"
                       + (f"; {several} had several faces (the largest was taken)" if several else "")))
    console.print(Text(f"  manifest: {storage.redact(result.manifest_url)}"))
    if result.rejected:
        console.print(Text(f"  errors:   {storage.redact(result.errors_url)}"))
        for r in result.rejected[:20]:
            console.print(Text(f"  row {r.row} {r.id}: {r.reason_code}: {r.message}", style="yellow"))
        raise typer.Exit(1)
