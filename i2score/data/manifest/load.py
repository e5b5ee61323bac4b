"""Loading a validated row: read its files, decode them and fit them to the generator.

Every per-row file problem (missing, unreadable, empty, truncated, undecodable, too many
pixels, a bad mask) raises :class:`~i2score.data.manifest.schema.RowError` with the reason code
validation uses for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from i2score.data import storage
from i2score.data.images import (
    DEFAULT_MAX_PIXELS,
    MASK_MARGIN,
    MASK_MAX_AMBIGUOUS,
    FitPolicy,
    ImageError,
    decode_image,
    decode_mask,
    fit_mask,
    fit_to_resolution,
    to_tensor,
)
from i2score.data.inputs import InputPolicy, InputRejected
from i2score.data.manifest.schema import ManifestRow, Reason, RowError


@dataclass
class LoadedRow:
    """A row's decoded inputs, fitted to the generator.

    Attributes:
        row: the manifest row.
        image: ``[3, R, R]`` float32 in [-1, 1].
        mask: ``[1, R, R]`` float32 in {0, 1} (1 = the region the user names) or None.
        ref: ``[3, R, R]`` float32 in [-1, 1] or None.
        image_bytes, mask_bytes, ref_bytes: the files as read (for cache keys).
        image_size: native ``(width, height)`` of the image before fitting.
        alignment, ref_alignment: the FFHQ alignment of the image and of the ref
            (:class:`~i2score.data.align.FaceAlignment`) when the row was loaded with
            ``align=True``, else None.
        original: the image at its native size (PIL RGB) when aligned (for paste-back), else None.
    """

    row: ManifestRow
    image: Tensor
    mask: Tensor | None
    ref: Tensor | None
    image_bytes: bytes
    mask_bytes: bytes | None
    ref_bytes: bytes | None
    image_size: tuple[int, int]
    alignment: Any | None = None
    ref_alignment: Any | None = None
    original: Any | None = None


@dataclass
class DecodedRow:
    """A row's files decoded at their native size (images as PIL RGB, the mask as ``[1, H, W]``)."""

    row: ManifestRow
    image: Any  # PIL RGB
    mask: Any | None  # [1, H, W] at the image's size
    ref: Any | None  # PIL RGB
    image_bytes: bytes
    mask_bytes: bytes | None
    ref_bytes: bytes | None


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while not isinstance(seen, FileNotFoundError) and (seen.__cause__ or seen.__context__):
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return seen if isinstance(seen, FileNotFoundError) else exc


#: Inputs read by library calls that pass no policy: anywhere, regular files, the default size.
UNCONFINED = InputPolicy()


def _read(url: str, name: str, fetched: Mapping[str, bytes | BaseException] | None,
          inputs: InputPolicy) -> bytes:
    """Bytes of ``url`` (from ``fetched`` when there, else read under ``inputs``); refusals and
    storage errors -> :class:`RowError`."""
    shown = storage.redact(url)
    try:
        if fetched is not None and url in fetched:
            got = fetched[url]
            if isinstance(got, BaseException):
                raise got
            data = got
        else:
            data = inputs.read(url)
    except InputRejected as e:
        raise RowError(e.reason, f"{name} {e}", field=name, url=e.url) from None
    except Exception as e:  # noqa: BLE001 - any read failure is this row's error, never the run's
        cause = _root_cause(e)
        if isinstance(cause, FileNotFoundError):
            raise RowError(Reason.MISSING_FILE.value, f"{name} {shown!r} does not exist",
                           field=name, url=shown) from None
        if isinstance(cause, IsADirectoryError):
            raise RowError(Reason.NOT_A_REGULAR_FILE.value, f"{name} {shown!r} is a folder",
                           field=name, url=shown) from None
        raise RowError(Reason.UNREADABLE_FILE.value,
                       storage.redact(f"{name} {shown!r} cannot be read: {type(e).__name__}: {e}"),
                       field=name, url=shown) from None
    if len(data) == 0:
        raise RowError(Reason.EMPTY_FILE.value, f"{name} {shown!r} is empty (0 bytes)",
                       field=name, url=shown)
    return bytes(data)


def decode_row(row: ManifestRow, fetched: Mapping[str, bytes | BaseException] | None = None, *,
                threshold: float = 0.5, mask_resize: Literal["nearest", "error"] = "nearest",
                max_pixels: int = DEFAULT_MAX_PIXELS,
                background: tuple[int, int, int] = (255, 255, 255),
                inputs: InputPolicy | None = None) -> DecodedRow:
    """Read and decode a row's files at native size: the one per-row file error path. Files not
    in ``fetched`` are read under ``inputs`` (None: :data:`UNCONFINED`)."""
    policy = inputs or UNCONFINED
    current = ("image", row.image)
    try:
        image_bytes = _read(row.image, "image", fetched, policy)
        image = decode_image(image_bytes, max_pixels=max_pixels, background=background, what="image")
        mask_bytes = ref_bytes = mask = ref = None
        if row.mask is not None:
            current = ("mask", row.mask)
            mask_bytes = _read(row.mask, "mask", fetched, policy)
            mask = decode_mask(mask_bytes, image.size, threshold=threshold, resize=mask_resize,
                               margin=MASK_MARGIN, max_ambiguous=MASK_MAX_AMBIGUOUS,
                               max_pixels=max_pixels)
        if row.ref is not None:
            current = ("ref", row.ref)
            ref_bytes = _read(row.ref, "ref", fetched, policy)
            ref = decode_image(ref_bytes, max_pixels=max_pixels, background=background, what="ref")
    except ImageError as e:
        raise RowError(e.reason, e.message, field=current[0],
                       url=storage.redact(current[1])) from None
    return DecodedRow(row, image, mask, ref, image_bytes, mask_bytes, ref_bytes)


def fit_row(d: DecodedRow, resolution: int, policy: FitPolicy) -> tuple[Any, Any | None, Any | None]:
    image = to_tensor(fit_to_resolution(d.image, resolution, policy))
    mask = fit_mask(d.mask, resolution, policy) if d.mask is not None else None
    ref = to_tensor(fit_to_resolution(d.ref, resolution, policy)) if d.ref is not None else None
    return image, mask, ref


def _aligned(img: Any, resolution: int, row: ManifestRow, name: str) -> tuple[Any, Any]:
    """FFHQ-align ``img``; no face -> :class:`RowError` ``no_face`` naming the row's file."""
    from i2score.data.align import NoFaceError, align_face

    try:
        return align_face(img, resolution)
    except NoFaceError as e:
        url = row.image if name == "image" else row.ref
        raise RowError(Reason.NO_FACE.value, f"{name}: {e}", field=name,
                       url=storage.redact(url) if url else None) from None


def align_row(d: DecodedRow, resolution: int) -> tuple[Any, Any | None, Any | None, Any, Any | None]:
    """FFHQ-align a decoded row (:mod:`i2score.data.align`): the image and the ref each to their
    own largest face, the mask warped with the image's transform (re-thresholded at 0.5).

    Returns ``(image, mask, ref, alignment, ref_alignment)``: tensors as :func:`fit_row`'s.

    Raises:
        RowError: ``no_face`` when the image or the ref has no face.
    """
    import numpy as np
    import torch
    from PIL import Image

    from i2score.data.align import warp_quad

    image, alignment = _aligned(d.image, resolution, d.row, "image")
    mask = None
    if d.mask is not None:
        m = Image.fromarray((d.mask[0].numpy() * 255).astype(np.uint8), "L").convert("RGB")
        warped = np.asarray(warp_quad(m, alignment.quad, resolution))[..., 0]
        mask = torch.from_numpy((warped >= 128).astype(np.float32))[None]
    ref = ref_alignment = None
    if d.ref is not None:
        ref, ref_alignment = _aligned(d.ref, resolution, d.row, "ref")
    return (to_tensor(image), mask, None if ref is None else to_tensor(ref), alignment, ref_alignment)


def load_row(row: ManifestRow, *, resolution: int, policy: FitPolicy = "center-crop",
             threshold: float = 0.5, mask_resize: Literal["nearest", "error"] = "nearest",
             max_pixels: int = DEFAULT_MAX_PIXELS,
             background: tuple[int, int, int] = (255, 255, 255),
             fetched: Mapping[str, bytes | BaseException] | None = None,
             inputs: InputPolicy | None = None, align: bool = False) -> LoadedRow:
    """Read, decode and fit one row's files to ``resolution x resolution``.

    Args:
        row: a validated row.
        resolution: the generator's resolution R.
        policy: ``center-crop`` | ``pad`` | ``stretch`` (:func:`i2score.data.images.fit_to_resolution`);
            image, mask and ref all use it.
        threshold, mask_resize, max_pixels, background: see :mod:`i2score.data.images`.
        fetched: bytes (or read errors) already fetched, e.g. by :meth:`InputPolicy.read_many`.
        inputs: what may be read (:class:`~i2score.data.inputs.InputPolicy`); None reads
            anywhere, still only regular files up to the default size limit.
        align: FFHQ-align image and ref instead of fitting them (:func:`align_row`; ``policy``
            is then unused); needs the ``align`` extra.

    Returns:
        :class:`LoadedRow` with ``image``/``ref`` ``[3, R, R]`` in [-1, 1] and ``mask``
        ``[1, R, R]`` in {0, 1}.

    Raises:
        RowError: with the reason codes validation uses (``missing_file``, ``unreadable_file``,
            ``empty_file``, ``truncated_image``, ``undecodable_image``, ``decompression_bomb``,
            ``mask_size_mismatch``, ``non_binary_mask``, ``outside_allowed_inputs``,
            ``not_a_regular_file``, ``file_too_large``; with ``align``, ``no_face``).
    """
    d = decode_row(row, fetched, threshold=threshold, mask_resize=mask_resize,
                    max_pixels=max_pixels, background=background, inputs=inputs)
    if align:
        image, mask, ref, alignment, ref_alignment = align_row(d, resolution)
        return LoadedRow(row=row, image=image, mask=mask, ref=ref, image_bytes=d.image_bytes,
                         mask_bytes=d.mask_bytes, ref_bytes=d.ref_bytes, image_size=d.image.size,
                         alignment=alignment, ref_alignment=ref_alignment, original=d.image)
    image, mask, ref = fit_row(d, resolution, policy)
    return LoadedRow(row=row, image=image, mask=mask, ref=ref, image_bytes=d.image_bytes,
                     mask_bytes=d.mask_bytes, ref_bytes=d.ref_bytes, image_size=d.image.size)
