"""Image and mask decoding for the data plane: bytes in, fixed-size tensors out.

Everything here works on bytes already read from storage (see :mod:`i2score.data.storage`), so the
same code serves local files, object stores and tests. Failures raise :class:`ImageError` with a
stable ``reason`` code (the manifest validator turns it into a rejected row).

Policies (documented in ``manifests/README.md``):

* **Formats**: anything Pillow opens, except EPS (Pillow shells out to Ghostscript for it,
  which we will not run on untrusted input). Multi-frame files (GIF, APNG, TIFF, MPO) use their
  first frame.
* **Orientation**: the EXIF orientation tag is applied (``ImageOps.exif_transpose``); a corrupt
  EXIF block is ignored rather than rejecting an otherwise decodable image.
* **Colour**: the result is always 8-bit RGB. Grayscale (``1``, ``L``) is replicated to three
  channels; 16-bit (``I;16*``) and 32-bit integer (``I``, assumed to hold 16-bit data as PNG and
  TIFF decoders produce it) are scaled by ``255/65535``; float (``F``) is taken as [0, 1] when
  every value lies there, else as [0, 255]; CMYK, YCbCr, LAB and HSV go through Pillow's
  converters. ICC profiles are ignored (values are taken as sRGB).
* **Alpha** (``RGBA``, ``LA``, ``PA``, palette transparency): composited over a background
  colour, white by default (``background=``), so transparent regions are deterministic
  instead of whatever colour the encoder left under alpha 0.
* **Decompression bombs**: width x height above ``max_pixels`` (default 64 Mpx, below Pillow's
  own 89 Mpx warning level) is rejected from the header, before any pixel is decoded.
* **Fit to the generator**: :func:`fit_to_resolution` with ``center-crop`` (default: scale the
  short side to R, crop the centre), ``pad`` (scale the long side to R, pad with the
  background) or ``stretch`` (ignore the aspect ratio). Masks follow the exact same geometry
  (:func:`fit_mask`).
* **Masks**: single channel, luminance of the mask image after compositing alpha over black
  (so "white strokes on a transparent layer" works), scaled to [0, 1]. A mask is *non-binary*
  and rejected when more than ``max_ambiguous`` (5 %) of its pixels lie in
  ``(margin, 1 - margin)`` = (0.25, 0.75); otherwise it is thresholded at ``threshold`` (0.5),
  which absorbs anti-aliased edges and JPEG ringing. A mask whose size differs from the
  image is resized with nearest-neighbour when the aspect ratios agree (within one pixel),
  else rejected (``resize="error"`` rejects any size difference).
"""

from __future__ import annotations

import io
import warnings
from struct import error as struct_error  # some plugins raise it for corrupt headers
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FIT_POLICIES",
    "ImageError",
    "decode_image",
    "decode_mask",
    "fit_mask",
    "fit_to_resolution",
    "tensor_to_png_bytes",
    "to_tensor",
]

#: Largest accepted ``width * height`` (64 Mpx: an 8192 x 8192 image). Pillow warns at 89 Mpx
#: and refuses at 179 Mpx; we decide earlier and with our own error.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

FitPolicy = Literal["center-crop", "pad", "stretch"]
FIT_POLICIES: tuple[str, ...] = ("center-crop", "pad", "stretch")

#: Mask pixels in ``(MASK_MARGIN, 1 - MASK_MARGIN)`` count as ambiguous.
MASK_MARGIN = 0.25
#: A mask with more than this fraction of ambiguous pixels is rejected as non-binary.
MASK_MAX_AMBIGUOUS = 0.05

# Pillow formats we refuse: EPS is rendered by running Ghostscript, an external interpreter
# with a history of exploits; untrusted manifests must not reach it.
_REFUSED_FORMATS = frozenset({"EPS"})


class ImageError(ValueError):
    """An image or mask that cannot be used; ``reason`` is a stable code.

    Codes: ``empty_file``, ``truncated_image``, ``undecodable_image``, ``decompression_bomb``,
    ``mask_size_mismatch``, ``non_binary_mask``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _allowed_formats() -> list[str]:
    Image.init()
    return [f for f in Image.OPEN if f not in _REFUSED_FORMATS]


def _looks_truncated(data: bytes) -> bool:
    """Container-level evidence that ``data`` ends early (decoders word this differently)."""
    if data[:4] == b"RIFF" and len(data) >= 12:  # WebP: RIFF size field covers the file
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-12:]
    if data[:2] == b"\xff\xd8":  # JPEG without its end-of-image marker
        return b"\xff\xd9" not in data[-16:]
    return False


def _open(data: bytes, max_pixels: int, what: str) -> Image.Image:
    """Open, guard, fully decode and orient ``data``; the mode is left as decoded."""
    if len(data) == 0:
        raise ImageError("empty_file", f"{what}: file is empty (0 bytes)")
    # Pillow's bomb check warns (or raises its own error) inside Image.open; our own check below
    # is the guard, the filter only keeps Pillow's duplicate message out of the logs (it is
    # process-global, so concurrent decodes may briefly share it: harmless, it is this narrow).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message="(?i).*(exif|truncated)", category=UserWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=_allowed_formats())
        except Image.DecompressionBombError as e:
            raise ImageError("decompression_bomb", f"{what}: {e}") from None
        except UnidentifiedImageError:
            fmt = "EPS/PostScript is refused" if data[:4] in (b"%!PS", b"\xc5\xd0\xd3\xc6") else (
                "not a recognised image format")
            raise ImageError("undecodable_image", f"{what}: {fmt}") from None
        except Exception as e:  # noqa: BLE001 - untrusted input: any plugin error is a bad file
            reason = "truncated_image" if _looks_truncated(data) else "undecodable_image"
            raise ImageError(reason, f"{what}: cannot read header: {e}") from None
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageError("undecodable_image", f"{what}: image has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise ImageError("decompression_bomb",
                             f"{what}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
        try:
            im.load()
        except (OSError, EOFError, SyntaxError, ValueError, struct_error) as e:
            text = str(e).lower()
            truncated = isinstance(e, EOFError) or "truncat" in text or _looks_truncated(data)
            reason = "truncated_image" if truncated else "undecodable_image"
            raise ImageError(reason, f"{what}: {im.format or 'image'} data cannot be decoded: {e}") from None
        except Image.DecompressionBombError as e:
            raise ImageError("decompression_bomb", f"{what}: {e}") from None
        except Exception as e:  # noqa: BLE001 - untrusted input: any decoder error is a bad file
            raise ImageError("undecodable_image", f"{what}: {type(e).__name__}: {e}") from None
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - corrupt EXIF: keep the pixels as stored (documented)
            oriented = im
    return oriented if oriented is not None else im


def _high_bit_to_uint8(im: Image.Image) -> np.ndarray:
    """``I;16*``/``I``/``F`` image -> ``[H, W]`` uint8 (policy in the module docstring)."""
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        finite = a[np.isfinite(a)]
        scale = 255.0 if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0 else 1.0
        a = np.nan_to_num(a, nan=0.0, posinf=255.0 / scale, neginf=0.0) * scale
    else:
        # I;16, I;16B, I;16L, I;16N decode to native uint16 values; I to int32.
        a = np.asarray(im).astype(np.float64) * (255.0 / 65535.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGBA -> RGB over ``background``."""
    base = Image.new("RGB", im.size, background)
    base.paste(im, mask=im.getchannel("A"))
    return base


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_high_bit_to_uint8(im), "L").convert("RGB")
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        return _composite(im.convert("RGBA"), background) if has_alpha else im.convert("RGB")
    if mode in ("RGBA", "LA", "RGBa", "La"):
        return _composite(im.convert("RGBA"), background)
    if mode == "L" and "transparency" in im.info:
        return _composite(im.convert("RGBA"), background)
    return im.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV, RGBX


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 background: tuple[int, int, int] = (255, 255, 255), what: str = "image") -> Image.Image:
    """Decode encoded image bytes into an oriented 8-bit RGB PIL image at its native size.

    Args:
        data: the encoded file (PNG, JPEG, WebP, TIFF, GIF, BMP, ... anything Pillow reads but EPS).
        max_pixels: largest accepted ``width * height``; checked from the header, before decoding.
        background: RGB colour that transparent pixels are composited over.
        what: label used in error messages (``"image"``, ``"ref"``).

    Raises:
        ImageError: ``empty_file``, ``truncated_image``, ``undecodable_image`` or
            ``decompression_bomb``.
    """
    return _to_rgb(_open(data, max_pixels, what), background)


def _mask_values(im: Image.Image) -> np.ndarray:
    """Mask image -> ``[H, W]`` float32 in [0, 1] (alpha composited over black)."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _high_bit_to_uint8(im).astype(np.float32) / 255.0
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        im = _composite(im.convert("RGBA"), (0, 0, 0))
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """True if ``a`` scaled to ``b``'s width gives ``b``'s height within one pixel (both ways)."""
    (aw, ah), (bw, bh) = a, b
    return abs(ah * bw / aw - bh) <= 1.0 and abs(aw * bh / ah - bw) <= 1.0


def decode_mask(data: bytes, size: tuple[int, int], *, threshold: float = 0.5,
                resize: Literal["nearest", "error"] = "nearest", margin: float = MASK_MARGIN,
                max_ambiguous: float = MASK_MAX_AMBIGUOUS,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """Decode a mask to a binary single-channel tensor at the image's native size.

    Args:
        data: encoded mask file (any format :func:`decode_image` accepts).
        size: ``(width, height)`` of the image the mask belongs to (PIL order).
        threshold: values ``>= threshold`` become 1.
        resize: ``"nearest"`` resizes a same-aspect mask to ``size``; ``"error"`` rejects any
            size difference.
        margin, max_ambiguous: the mask is rejected as non-binary when more than
            ``max_ambiguous`` of its pixels lie in ``(margin, 1 - margin)``.
        max_pixels: decompression-bomb limit.

    Returns:
        ``[1, H, W]`` float32 with values in {0, 1}; 1 marks the region the user names.

    Raises:
        ImageError: the codes of :func:`decode_image`, plus ``mask_size_mismatch`` and
            ``non_binary_mask``.
    """
    im = _open(data, max_pixels, "mask")
    values = _mask_values(im)
    ambiguous = float(np.mean((values > margin) & (values < 1.0 - margin)))
    if ambiguous > max_ambiguous:
        raise ImageError("non_binary_mask",
                         f"mask: {ambiguous:.1%} of pixels are between {margin:g} and {1 - margin:g} "
                         f"(at most {max_ambiguous:.0%} allowed); save it as black/white")
    binary = (values >= threshold).astype(np.float32)
    width, height = size
    if im.size != (width, height):
        if resize == "error" or not _same_aspect(im.size, (width, height)):
            raise ImageError("mask_size_mismatch",
                             f"mask is {im.size[0]}x{im.size[1]}, image is {size[0]}x{size[1]}"
                             + ("" if resize == "error" else " (different aspect ratio)"))
        resized = Image.fromarray((binary * 255).astype(np.uint8), "L").resize(
            (width, height), Image.Resampling.NEAREST)
        binary = (np.asarray(resized) >= 128).astype(np.float32)
    return torch.from_numpy(binary)[None]


def _fit_geometry(size: tuple[int, int], resolution: int, policy: str
                  ) -> tuple[tuple[float, float, float, float] | None, tuple[int, int], tuple[int, int]]:
    """Where a ``size`` image goes in an R x R square.

    Returns ``(crop_box or None, resized (w, h), paste offset (x, y))``: crop the source to the
    box, resize to ``resized`` and paste at the offset into the R x R canvas.
    """
    w, h = size
    r = resolution
    if policy == "stretch":
        return None, (r, r), (0, 0)
    if policy == "center-crop":
        side = min(w, h)
        left, top = (w - side) / 2.0, (h - side) / 2.0
        return (left, top, left + side, top + side), (r, r), (0, 0)
    if policy == "pad":
        scale = r / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        return None, (nw, nh), ((r - nw) // 2, (r - nh) // 2)
    raise ValueError(f"policy must be one of {FIT_POLICIES}, got {policy!r}")


def fit_to_resolution(img: Image.Image, resolution: int, policy: FitPolicy = "center-crop", *,
                      background: tuple[int, int, int] = (0, 0, 0),
                      resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Fit an RGB image to the generator's ``resolution x resolution``.

    Policies:
        ``center-crop`` (default): crop the central square (side = short side), resize to R.
            Nothing is distorted; the ends of the long side are lost.
        ``pad``: resize so the long side is R, centre it on a ``background`` square.
            Nothing is lost; the generator sees borders it never saw in training.
        ``stretch``: resize to R x R, ignoring the aspect ratio.

    Resampling is Lanczos (antialiased when downscaling). Masks must use :func:`fit_mask`, which
    applies the same geometry.
    """
    box, (nw, nh), offset = _fit_geometry(img.size, resolution, policy)
    if box is None and (nw, nh) == img.size and offset == (0, 0):
        return img.copy()
    out = img.resize((nw, nh), resample, box=box, reducing_gap=3.0)
    if (nw, nh) == (resolution, resolution):
        return out
    canvas = Image.new(img.mode, (resolution, resolution), background)
    canvas.paste(out, offset)
    return canvas


def fit_mask(mask: Tensor, resolution: int, policy: FitPolicy = "center-crop") -> Tensor:
    """Fit a ``[1, H, W]`` binary mask with the same geometry as :func:`fit_to_resolution`.

    The mask is area-averaged (box filter) and re-thresholded at 0.5, which keeps thin strokes
    that nearest-neighbour sampling would drop when downscaling a lot. Padding is 0 (outside the
    named region). Returns ``[1, R, R]`` float32 in {0, 1}.
    """
    if mask.ndim != 3 or mask.shape[0] != 1:
        raise ValueError(f"mask must be [1, H, W], got {list(mask.shape)}")
    im = Image.fromarray(mask[0].detach().cpu().float().numpy(), "F")
    box, (nw, nh), offset = _fit_geometry(im.size, resolution, policy)
    out = im.resize((nw, nh), Image.Resampling.BOX, box=box)
    canvas = Image.new("F", (resolution, resolution), 0.0)
    canvas.paste(out, offset)
    return torch.from_numpy((np.asarray(canvas) >= 0.5).astype(np.float32))[None]


def to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image ``W x H`` -> ``[3, H, W]`` float32 in [-1, 1] (``v / 127.5 - 1``, as
    :func:`i2score.method.applications.images_to_tensor`)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def tensor_to_png_bytes(t: Tensor) -> bytes:
    """``[3, H, W]`` (or ``[1, 3, H, W]``) float in [-1, 1] -> PNG bytes (8-bit RGB).

    Values outside [-1, 1] are clipped; quantisation rounds to the nearest level, so
    ``to_tensor(decode_image(tensor_to_png_bytes(x)))`` is within 1/127.5 of ``x``.
    """
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected [3, H, W], got {list(t.shape)}")
    a = ((t.detach().cpu().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB").save(buf, "PNG")
    return buf.getvalue()
