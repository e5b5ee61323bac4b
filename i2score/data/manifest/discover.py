"""Inputs as people have them: a folder or a glob of images (local or any fsspec URL) turned into
manifest rows.

The rules (README "Your own images"):

* **What is a folder or glob input.** A source whose name ends in a manifest extension (``.csv``,
  ``.tsv``, ``.parquet``/``.pq``, ``.jsonl``/``.ndjson``, optionally ``.gz``) or that is an
  ``http(s)`` URL is a manifest; anything else is a glob when it holds ``*``, ``?`` or ``[``,
  else a folder. The test is on the name alone, so confinement and run ids never depend on a
  listing.
* **Images** are the files ending in ``.png``, ``.jpg``, ``.jpeg`` or ``.webp`` (any case) found
  directly in the folder (not in subfolders: ``photos/**/*.jpg`` searches them), or matched by
  the glob. Other files and subfolders are skipped and reported.
* **Rows** come sorted by the image's URL; a row's id is the file name without its extension.
  Two images with the same id (compared case-insensitively, as validation compares ids), such
  as ``a.png`` and ``a.jpg``, are an error naming both files.
* **Masks**, without ``masks=``: ``name_mask.<ext>`` next to ``name.<ext>`` is the mask of
  ``name`` and not a row of its own; a ``*_mask`` file without its image is an error. With
  ``masks=FOLDER``: ``FOLDER/name.<ext>`` is the mask of ``name``, every image of the input is
  a row, and masks of no image are skipped and reported.

:func:`discover` lists the files through :mod:`i2score.data.storage` (fsspec, so ``s3://``
works as a local folder does); :meth:`Discovery.to_csv` writes the rows as a CSV manifest
(``id,image[,mask]``), which is what a run of a folder input reads as its manifest.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import posixpath
import urllib.parse
from dataclasses import dataclass, field

from i2score.data import storage
from i2score.data.manifest.schema import ManifestError

logger = logging.getLogger(__name__)

#: Extensions of the images a folder or glob input holds (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
#: ``name`` + this suffix (before the extension) is the mask of image ``name`` in the same folder.
MASK_SUFFIX = "_mask"
#: Extensions (after an optional ``.gz``) that make a source a manifest file.
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson")

_GLOB_CHARS = ("*", "?", "[")
_IMAGES_TEXT = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)


class DiscoveryError(ManifestError):
    """A folder or glob input that cannot become rows: no images, two images with one id, a mask
    of no image, a folder that is a file."""


def _path_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path if url.lower().startswith(("http://", "https://")) else url


def is_manifest_source(url: str) -> bool:
    """True when ``url`` names a manifest file, False for a folder or a glob (by its name alone:
    see the module docstring)."""
    if url.lower().startswith(("http://", "https://")):
        return True  # a web server cannot be listed
    name = posixpath.basename(url.rstrip("/")).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return posixpath.splitext(name)[1] in MANIFEST_EXTENSIONS


def is_glob(url: str) -> bool:
    """True when the folder-or-glob source ``url`` is a glob pattern."""
    return any(c in url for c in _GLOB_CHARS)


def _split_url(url: str) -> tuple[str, str]:
    """``(protocol prefix, path)``: ``("s3://", "b/k")``, ``("", "/abs/p")``."""
    if "://" in url:
        proto, path = url.split("://", 1)
        return f"{proto}://", path
    return "", url


def source_folder(url: str) -> str:
    """The folder a folder or glob input reads from: the folder itself, or the glob's path up to
    its first component with a wildcard (``/data/photos/*.jpg`` -> ``/data/photos``,
    ``s3://b/faces/**/*.png`` -> ``s3://b/faces/``). Local folders come absolute without a
    trailing ``/``, remote ones with one (as :func:`i2score.data.inputs.manifest_folder` gives
    a manifest's folder)."""
    proto, path = _split_url(url)
    if is_glob(path):
        parts = path.split("/")
        first = next(i for i, p in enumerate(parts) if is_glob(p))
        path = "/".join(parts[:first])
    if not proto or proto.lower() in ("file://", "local://"):
        local = os.path.abspath(os.path.expanduser(path or "/"))
        return local if not proto else f"{proto}{local}"
    return f"{proto}{path.rstrip('/')}/"


@functools.lru_cache(maxsize=2**16)
def _stem_ext(url: str) -> tuple[str, str, str]:
    """``(parent URL, stem, lower-case extension)`` of a file URL."""
    parent, name = url.rstrip("/").rsplit("/", 1) if "/" in url else ("", url)
    stem, ext = posixpath.splitext(name)
    return parent, stem, ext.lower()


@dataclass(frozen=True)
class Found:
    """One row of a folder or glob input: ``id`` (the file stem), the image's URL and its mask's
    URL (None when it has none)."""

    id: str
    image: str
    mask: str | None = None


@dataclass
class Discovery:
    """What :func:`discover` found: the rows in order and the files it skipped, each with why.

    Attributes:
        source: the folder or glob as given (local paths absolute).
        masks: the masks folder, or None (the ``name_mask`` rule).
        rows: one :class:`Found` per image, sorted by image URL.
        skipped: ``(url, reason)`` of every listed file or folder that is neither an image row
            nor a mask of one.
    """

    source: str
    masks: str | None
    rows: list[Found]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_masks(self) -> int:
        """Rows that have a mask."""
        return sum(r.mask is not None for r in self.rows)

    def to_csv(self, *, mask_column: bool = True, relative_to: str | None = None) -> bytes:
        """The rows as a CSV manifest: columns ``id,image``, plus ``mask`` when ``mask_column``
        and some row has a mask (rows without one leave it empty).

        ``relative_to`` is the folder of the manifest file being written: a file below it is
        written relative to it (``photos/a.png``), any other with its full URL. None writes
        full URLs (the manifest a run of a folder input reads).
        """
        with_mask = mask_column and self.n_masks > 0
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "image", "mask"] if with_mask else ["id", "image"])
        for r in self.rows:
            image = _relative(r.image, relative_to)
            if with_mask:
                w.writerow([r.id, image, _relative(r.mask, relative_to) if r.mask else ""])
            else:
                w.writerow([r.id, image])
        return buf.getvalue().encode()

    def describe(self) -> str:
        """One line: how many images and masks, and what was skipped."""
        text = f"{len(self.rows)} images ({self.n_masks} with a mask) in {storage.redact(self.source)}"
        if self.skipped:
            names = ", ".join(f"{storage.basename(u)} ({why.split(':')[0]})" for u, why in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            text += f"; skipped {len(self.skipped)}: {names}{more}"
        return text


def _relative(url: str, folder: str | None) -> str:
    if folder is None:
        return url
    base = folder.rstrip("/") + "/"
    local = "://" not in url and "://" not in folder
    if local:
        base = os.path.abspath(folder).rstrip(os.sep) + os.sep
    if url.startswith(base):
        rel = url[len(base):]
        return rel.replace(os.sep, "/") if local else rel
    return url


def _list(source: str) -> list[tuple[str, str]]:
    """The entries of a folder (not recursive) or of a glob's matches."""
    shown = storage.redact(source)
    if is_glob(source):
        return storage.glob(source)
    try:
        return storage.list_folder(source)
    except NotADirectoryError:
        raise DiscoveryError(
            f"{shown} is a file, and its extension is not a manifest's ({', '.join(MANIFEST_EXTENSIONS)}, "
            f"optionally .gz): give a manifest, a folder or a glob of images (such as "
            f"{shown.rsplit('/', 1)[0]}/*.png)") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"no folder {shown} (an input is a manifest file, a folder or a glob "
                                "of images)") from None


def _images_and_skipped(entries: list[tuple[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
    images: list[str] = []
    skipped: list[tuple[str, str]] = []
    for url, kind in entries:
        if kind == "directory":
            skipped.append((url, "a folder: not searched (a glob such as DIR/**/*.png searches subfolders)"))
        elif _stem_ext(url)[2] not in IMAGE_EXTENSIONS:
            skipped.append((url, f"not an image: only {_IMAGES_TEXT} files are read"))
        else:
            images.append(url)
    return images, skipped


def _by_id(urls: list[str], what: str) -> dict[str, str]:
    """``{stem: url}``; two files with one stem (case-insensitively) are an error naming both."""
    seen: dict[str, str] = {}
    for url in urls:
        stem = _stem_ext(url)[1]
        other = seen.get(stem.casefold())
        if other is not None:
            raise DiscoveryError(f"two {what} would have the id {stem!r}: {storage.redact(other)} and "
                                 f"{storage.redact(url)} (ids are file names without their extension, "
                                 "compared case-insensitively); rename or remove one")
        seen[stem.casefold()] = url
    return {_stem_ext(u)[1]: u for u in seen.values()}


def _check_no_credentials(urls: list[str]) -> None:
    joined = "\n".join(urls)
    if storage.redact(joined) == joined:
        return  # one call for the common case: redaction costs about 0.1 ms a call
    for url in urls:
        if storage.redact(url) != url:
            raise DiscoveryError(f"{storage.redact(url)}: a listed file name that looks like a credential "
                                 "(user:password@, token=, X-Amz-...); write a manifest for such files")


def discover(source: str, masks: str | None = None) -> Discovery:
    """The rows of a folder or glob input (rules in the module docstring).

    Args:
        source: a folder (``./photos``, ``s3://bucket/faces/``) or a glob (``photos/*.jpg``,
            ``s3://bucket/faces/**/*.png``); a local path is made absolute.
        masks: a folder whose ``name.<ext>`` is the mask of image ``name``; None uses the
            ``name_mask.<ext>`` rule.

    Returns:
        :class:`Discovery`, rows sorted by image URL.

    Raises:
        FileNotFoundError: the folder (or the masks folder) does not exist.
        DiscoveryError: ``source`` is a manifest, a file, or an ``http(s)`` URL; it holds no
            image; two images (or two masks) have one id; a ``name_mask`` file has no image
            ``name``; ``source`` or ``masks`` carries a credential.
    """
    if is_manifest_source(source):
        raise DiscoveryError(f"{storage.redact(source)} is a manifest, not a folder or a glob of images")
    if storage.redact(source) != source or (masks is not None and storage.redact(masks) != masks):
        raise DiscoveryError("a folder or glob URL cannot carry a credential: give the store's credentials "
                             "through the environment (FSSPEC_S3_KEY, AWS_*) or I2S_STORAGE_OPTIONS")
    source = source if "://" in source else os.path.abspath(os.path.expanduser(source))
    images, skipped = _images_and_skipped(_list(source))
    if masks is None:
        rows, skipped_masks = _pair_by_name(images, relist=is_glob(source))
    else:
        masks = masks if "://" in masks else os.path.abspath(os.path.expanduser(masks))
        if is_glob(masks) or is_manifest_source(masks):
            raise DiscoveryError(f"masks {storage.redact(masks)}: give a folder (its name.<ext> is the mask "
                                 "of image name)")
        if source_folder(masks) == source_folder(source):
            raise DiscoveryError(f"masks {storage.redact(masks)} is the images' own folder: name masks "
                                 "name_mask.<ext> next to their image instead, or keep them in another folder")
        rows, skipped_masks = _pair_by_folder(images, masks)
    skipped += skipped_masks
    _check_no_credentials([u for r in rows for u in (r.image, r.mask) if u])
    if not rows:
        detail = f"; skipped {len(skipped)} other entries" if skipped else ""
        raise DiscoveryError(f"no images ({_IMAGES_TEXT}) in {storage.redact(source)}{detail}")
    found = Discovery(source, masks, rows, sorted(skipped))
    if found.skipped:
        logger.info("input %s", found.describe())
    return found


def _is_mask(url: str) -> bool:
    return _stem_ext(url)[1].endswith(MASK_SUFFIX)


def _pair_by_name(images: list[str], relist: bool) -> tuple[list[Found], list[tuple[str, str]]]:
    """Rows of ``images`` with the ``name_mask`` rule. With ``relist`` (a glob input) each image's
    folder is listed, since the masks of a glob's images need not match the glob."""
    plain = [u for u in images if not _is_mask(u)]
    rows_by_id = _by_id(plain, "images")
    neighbours = set(images)
    if relist:
        for parent in sorted({_stem_ext(u)[0] for u in images}):
            neighbours.update(_images_and_skipped(storage.list_folder(parent))[0])
    masks_of: dict[tuple[str, str], list[str]] = {}
    for u in sorted(neighbours):
        parent, stem, _ = _stem_ext(u)
        if stem.endswith(MASK_SUFFIX):
            masks_of.setdefault((parent, stem[:-len(MASK_SUFFIX)]), []).append(u)
    neighbour_images = {_stem_ext(u)[:2] for u in neighbours if not _is_mask(u)}
    row_keys = {_stem_ext(u)[:2] for u in plain}
    matched = set(images)
    skipped: list[tuple[str, str]] = []
    for key, found in sorted(masks_of.items()):
        in_input = [u for u in found if u in matched]
        name = key[1]
        if key not in neighbour_images:
            if in_input:
                raise DiscoveryError(
                    f"{storage.redact(in_input[0])} is named as a mask ({name}{MASK_SUFFIX}.<ext>) but there "
                    f"is no image {name}.<ext> ({_IMAGES_TEXT}) next to it: rename it, add its image, or keep "
                    "masks in a folder of their own (--masks)")
        elif key not in row_keys:
            skipped += [(u, f"the mask of {name}, an image the input does not match") for u in in_input]
        elif len(found) > 1:
            raise DiscoveryError(f"two masks for image {name!r}: {storage.redact(found[0])} and "
                                 f"{storage.redact(found[1])}; remove one")
    rows = []
    for stem, url in rows_by_id.items():
        mask = masks_of.get((_stem_ext(url)[0], stem))
        rows.append(Found(stem, url, mask[0] if mask else None))
    return sorted(rows, key=lambda r: r.image), skipped


def _pair_by_folder(images: list[str], masks: str) -> tuple[list[Found], list[tuple[str, str]]]:
    """Rows of ``images`` whose masks are ``masks/<id>.<ext>``."""
    shown = storage.redact(masks)
    try:
        entries = storage.list_folder(masks)
    except NotADirectoryError:
        raise DiscoveryError(f"masks {shown} is a file, not a folder") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"no masks folder {shown}") from None
    mask_files, skipped = _images_and_skipped(entries)
    if not mask_files:
        raise DiscoveryError(f"no masks ({_IMAGES_TEXT}) in {shown}")
    masks_by_id = _by_id(mask_files, "masks")
    rows_by_id = _by_id(images, "images")
    folded = {k.casefold(): v for k, v in masks_by_id.items()}
    rows = [Found(stem, url, folded.get(stem.casefold())) for stem, url in rows_by_id.items()]
    used = {r.mask for r in rows if r.mask}
    skipped += [(u, "a mask of no image in the input") for u in mask_files if u not in used]
    return sorted(rows, key=lambda r: r.image), skipped


# ----------------------------------------------------------------------------------------------
# Writing the manifest of a folder (i2s manifest init)
# ----------------------------------------------------------------------------------------------


@dataclass
class WrittenManifest:
    """What :func:`init_manifest` wrote.

    Attributes:
        url: the manifest written.
        kind: ``reconstruct`` (columns id, image) or ``inpaint`` (id, image, mask).
        discovery: the rows and skipped files.
        outside: files (images, masks) not below the manifest's folder (written as full URLs; a
            run reads them only with ``--allow``).
        bad_ids: ``(id, message)`` of rows whose file name is not a valid id (validation
            rejects them until the id column is edited).
    """

    url: str
    kind: str
    discovery: Discovery
    outside: int
    bad_ids: list[tuple[str, str]]


def _folder_of(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/" if "://" in url else os.path.dirname(os.path.abspath(url))


def init_manifest(source: str, output: str, *, masks: str | None = None, kind: str | None = None,
                  force: bool = False) -> WrittenManifest:
    """Write the CSV manifest of a folder or glob of images to ``output`` for editing.

    Args:
        source, masks: as :func:`discover` takes them.
        output: a ``.csv`` path or URL; files below its folder are written relative to it.
        kind: ``reconstruct`` (no mask column) or ``inpaint``; None = ``inpaint`` when some
            image has a mask, else ``reconstruct``.
        force: overwrite an existing ``output``.

    Raises:
        FileExistsError: ``output`` exists and not ``force``.
        ValueError: ``output`` is not a ``.csv``; ``kind`` is unknown; ``inpaint`` without any mask.
        FileNotFoundError, DiscoveryError: as :func:`discover`.
    """
    from i2score.data.manifest.schema import check_id

    if not output.lower().endswith(".csv"):
        raise ValueError(f"{storage.redact(output)}: the manifest is written as CSV; name it *.csv")
    if kind not in (None, "reconstruct", "inpaint"):
        raise ValueError(f"kind must be reconstruct or inpaint, got {kind!r}")
    output = output if "://" in output else os.path.abspath(os.path.expanduser(output))
    if not force and storage.exists(output):
        raise FileExistsError(f"{storage.redact(output)} exists; --force overwrites it")
    found = discover(source, masks)
    if kind is None:
        kind = "inpaint" if found.n_masks else "reconstruct"
    elif kind == "inpaint" and not found.n_masks:
        raise ValueError(f"no masks for the images of {storage.redact(found.source)}: name the mask of "
                         f"name.png {'name' + MASK_SUFFIX}.png next to it, or give a masks folder")
    folder = _folder_of(output)
    data = found.to_csv(mask_column=kind == "inpaint", relative_to=folder)
    storage.write_bytes(output, data)
    files = [u for r in found.rows for u in (r.image, r.mask if kind == "inpaint" else None) if u]
    outside = sum(_relative(u, folder) == u for u in files)
    bad = [(r.id, why[1]) for r in found.rows if (why := check_id(r.id)) is not None]
    return WrittenManifest(output, kind, found, outside, bad)
