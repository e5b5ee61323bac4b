"""``i2s manifest init``: write the manifest of a folder or glob of images, to edit before a run
(a thin wrapper over :func:`i2score.data.manifest.discover.init_manifest`). Registered by
``i2score.cli.app`` as ``app.add_typer(manifest_app, name="manifest")``.

Exit codes: 0 written; 2 nothing written (the output exists, no images, a bad argument).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

manifest_app = typer.Typer(
    help="Manifests: write one from a folder or glob of images (i2s manifest init).",
    no_args_is_help=True,
)

#: The ``--masks`` option of every command that takes a folder or glob of images.
MASKS_HELP = ("Folder of masks for a folder or glob input: FOLDER/name.png (or .jpg, .jpeg, .webp) is the mask "
              "of image name. Default: name_mask.png next to name.png.")


@manifest_app.command("init")
def init_cmd(
    src: Annotated[str, typer.Argument(help="A folder (./photos, s3://bucket/faces/) or a glob (photos/*.jpg, "
                                            "'s3://bucket/faces/**/*.png') of png, jpg, jpeg or webp images.")],
    output: Annotated[str, typer.Option("--output", "-o", help="The manifest to write (.csv); paths below its "
                                                               "folder are written relative to it.")],
    masks: Annotated[str | None, typer.Option("--masks", help=MASKS_HELP)] = None,
    kind: Annotated[str | None, typer.Option(help="reconstruct (id,image) or inpaint (id,image,mask); default: "
                                                  "inpaint when masks are found, else reconstruct.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT when it exists.")] = False,
) -> None:
    """Write the manifest (CSV: id,image[,mask]) of the images in SRC, one row per image, sorted;
    the id is the file name without its extension."""
    from i2score.data import storage
    from i2score.data.manifest import ManifestError
    from i2score.data.manifest.discover import init_manifest, source_folder

    err = Console(stderr=True, soft_wrap=True)
    try:
        written = init_manifest(src, output, masks=masks, kind=kind, force=force)
    except (ManifestError, OSError, ValueError) as e:
        err.print(Text(f"{storage.redact(e)}", style="red"))
        raise typer.Exit(2) from None
    console = Console(soft_wrap=True)
    found = written.discovery
    columns = "id,image,mask" if written.kind == "inpaint" else "id,image"
    console.print(Text(f"wrote {storage.redact(written.url)}: {len(found.rows)} rows ({written.kind}; {columns}), "
                       f"{found.n_masks} with a mask"))
    for url, why in found.skipped:
        console.print(Text(f"  skipped {storage.redact(url)}: {why}"))
    if written.bad_ids:
        message = written.bad_ids[0][1]
        console.print(Text(f"  {len(written.bad_ids)} file names are not valid ids (e.g. {message}): edit the id "
                           "column before a run, or those rows are rejected", style="yellow"))
    if written.outside:
        allow = " ".join(f"--allow {storage.redact(source_folder(f))}" for f in (found.source, found.masks) if f)
        console.print(Text(f"  {written.outside} files are outside the manifest's folder (written as full paths); "
                           f"a run reads them only with {allow}", style="yellow"))
