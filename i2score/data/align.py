"""FFHQ face alignment: find the face, crop and rotate it as the FFHQ dataset was, and put an
edited aligned image back into the original photo.

Every FFHQ generator was trained on faces aligned one way (NVlabs/ffhq-dataset,
``recreate_aligned_images``): an oriented square from the eyes and the mouth. This module
reproduces that transform from dlib's 68 landmarks:

1. **Detect** with dlib's HOG frontal-face detector; several faces -> the largest box (by
   area, ties by detector score), the count is kept (:attr:`FaceAlignment.faces`). No face ->
   :class:`NoFaceError` (reason ``no_face``).
2. **Landmarks**: dlib's 68-point shape predictor on that box.
3. **Quad**: ``e`` = mean of the eye centres, ``m`` = mean of the mouth corners,
   ``x = (eye_to_eye - rot90(eye_to_mouth))`` normalised and scaled to
   ``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)``, ``y = rot90(x)``, centre ``e + 0.1 eye_to_mouth``;
   the crop is the square ``centre +- x +- y`` (side ``2 |x|``).
4. **Sample**: shrink by an integer factor when the quad is at least 4x the output side,
   crop around the quad with a 10 % border, where the quad leaves the photo pad by reflection
   (at least 30 % of the quad side) and fade the padding towards a blurred copy
   (sigma 2 % of the quad side) and then the median colour, warp the quad to a square of
   ``supersample x size`` (bilinear) and reduce to ``size`` (Lanczos). FFHQ warps to 4096 for
   1024 outputs; ``supersample=4`` keeps that ratio at every output size.

The transform is affine (the quad is a square), so :class:`FaceAlignment` holds everything
needed to map points both ways and to paste an edit back (:func:`paste_back`): only pixels
inside the quad change (feathered inwards from its edge), every pixel outside is the
original's, exactly.

The detector and predictor weights come from the ``face-recognition-models`` package (dlib's
own ``.dat`` files) and dlib from ``dlib-bin``: ``pip install 'i2score[align]'``. Nothing is
downloaded at run time.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "ALIGN_VERSION",
    "FFHQ_EYES",
    "AlignUnavailableError",
    "FaceAlignment",
    "FaceLandmarks",
    "NoFaceError",
    "align_face",
    "check_available",
    "detect_landmarks",
    "ffhq_quad",
    "eye_centres",
    "paste_back",
    "quad_mask",
    "warp_quad",
]

#: Bumped when the aligned pixels of an unchanged input would change (it is part of the
#: embedding cache's key through the run's parameters).
ALIGN_VERSION = 1

#: Where FFHQ's transform puts the eye centres, as fractions of the aligned side (x, y), for
#: a face whose two scale terms agree (``2 |eye_to_eye| = 1.8 |eye_to_mouth|``) and whose eyes
#: and mouth are symmetric: the eyes are then half the quad's half-width apart and
#: ``0.1 |eye_to_mouth|`` above the centre. Real faces differ by a few tenths of a percent to
#: about 1 % of the side.
FFHQ_EYES = ((0.375, 0.5 - 1.0 / 36.0), (0.625, 0.5 - 1.0 / 36.0))

# dlib's 68-point layout (iBUG 300-W).
_EYE_LEFT = slice(36, 42)
_EYE_RIGHT = slice(42, 48)
_MOUTH_LEFT, _MOUTH_RIGHT = 48, 54


class AlignUnavailableError(RuntimeError):
    """dlib or the landmark weights are not installed."""


class NoFaceError(ValueError):
    """The detector found no face; ``reason`` is ``no_face`` (a row's error code)."""

    reason = "no_face"


@dataclass(frozen=True)
class FaceLandmarks:
    """The face the aligner chose.

    Attributes:
        points: ``[68, 2]`` float64 landmark (x, y) in source pixel coordinates (pixel centres
            at integers, as dlib reports them).
        box: the detector's box ``(left, top, right, bottom)``, inclusive pixel indices.
        faces: how many faces the detector found (the largest box was taken).
    """

    points: np.ndarray
    box: tuple[int, int, int, int]
    faces: int


@dataclass(frozen=True)
class FaceAlignment:
    """An FFHQ alignment: where the aligned square lies in the source photo.

    Attributes:
        quad: ``[4, 2]`` float64, FFHQ's crop as its script computes it: the source (x, y) of
            the aligned image's corners in its order top-left, bottom-left, bottom-right,
            top-right; pixel centres at integers. The pixels were sampled from
            :attr:`sampled_quad` (the same unless the photo was shrunk first).
        size: the aligned image's side in pixels.
        source_size: the source photo's ``(width, height)``.
        faces: faces found in the source (the largest was aligned).
        box: the detector's box of that face ``(left, top, right, bottom)``.
        landmarks: ``[68, 2]`` source landmarks of that face.
    """

    quad: np.ndarray
    size: int
    source_size: tuple[int, int]
    faces: int = 1
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def sampled_quad(self) -> np.ndarray:
        """``[4, 2]`` the corners the aligned pixels were really sampled from. FFHQ's shrink step
        divides the quad by the integer factor while the photo is resized to a rounded size
        (and pixel centres move by half a pixel), so the sampled square is off ``quad`` by up to
        half a shrunk pixel; equal to ``quad`` when there was no shrink."""
        q = np.asarray(self.quad, dtype=np.float64)
        shrunk = _shrink(float(np.hypot(*(q[3] - q[0]))), self.size, self.source_size)
        if shrunk is None:
            return q
        factor, (rw, rh) = shrunk
        w, h = self.source_size
        # A point p of the resized photo (pixel centres at p + 0.5) is (p + 0.5) * W / rw - 0.5.
        return (q / factor + 0.5) * np.array([w / rw, h / rh]) - 0.5

    @property
    def matrix(self) -> np.ndarray:
        """``[2, 3]`` affine map from aligned pixel (u, v) to source (x, y), both with pixel
        centres at integers: ``src = A @ (u + 0.5, v + 0.5) / size + t`` (from
        :attr:`sampled_quad`)."""
        q = self.sampled_quad
        a = np.stack([q[3] - q[0], q[1] - q[0]], axis=1) / self.size
        t = q[0] + a @ np.array([0.5, 0.5])
        return np.concatenate([a, t[:, None]], axis=1)

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """Aligned ``[N, 2]`` (u, v) -> source ``[N, 2]`` (x, y)."""
        m = self.matrix
        return np.asarray(points, dtype=np.float64) @ m[:, :2].T + m[:, 2]

    def to_aligned(self, points: np.ndarray) -> np.ndarray:
        """Source ``[N, 2]`` (x, y) -> aligned ``[N, 2]`` (u, v)."""
        m = self.matrix
        return (np.asarray(points, dtype=np.float64) - m[:, 2]) @ np.linalg.inv(m[:, :2]).T

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lineage, manifests, the cache's metadata)."""
        return {"version": ALIGN_VERSION, "quad": np.round(self.quad, 4).tolist(), "size": self.size,
                "source_size": list(self.source_size), "faces": self.faces, "box": list(self.box),
                "landmarks": np.round(self.landmarks, 2).tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FaceAlignment:
        """Inverse of :meth:`to_dict`; a missing field is an error naming it."""
        for name in ("quad", "size", "source_size"):
            if name not in d:
                raise ValueError(f"alignment record has no {name!r} field")
        quad = np.asarray(d["quad"], dtype=np.float64)
        if quad.shape != (4, 2):
            raise ValueError(f"alignment quad must be [4, 2], got {list(quad.shape)}")
        w, h = d["source_size"]
        box = tuple(int(v) for v in d.get("box", (0, 0, 0, 0)))
        return cls(quad=quad, size=int(d["size"]), source_size=(int(w), int(h)),
                   faces=int(d.get("faces", 1)), box=(box[0], box[1], box[2], box[3]),
                   landmarks=np.asarray(d.get("landmarks", np.zeros((0, 2))), dtype=np.float64).reshape(-1, 2))


def _models_dir() -> Path:
    # face_recognition_models imports pkg_resources at import time (gone from recent
    # setuptools), so find its data folder without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise AlignUnavailableError("face alignment needs the landmark weights of the "
                                    "'face-recognition-models' package: pip install 'i2score[align]'")
    return Path(spec.origin).parent / "models"


def check_available() -> str:
    """That dlib and the 68-point landmark weights are installed (nothing is loaded); returns
    where the weights are. Raises :class:`AlignUnavailableError` naming what is missing."""
    if importlib.util.find_spec("dlib") is None:
        raise AlignUnavailableError("face alignment needs dlib (the 'dlib-bin' wheel): pip install 'i2score[align]'")
    path = _models_dir() / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise AlignUnavailableError(f"the 68-point landmark model is missing: {path}")
    return str(path)


@functools.lru_cache(maxsize=1)
def _dlib_models() -> tuple[Any, Any]:
    try:
        import dlib
    except ImportError as e:
        raise AlignUnavailableError("face alignment needs dlib (the 'dlib-bin' wheel): "
                                    "pip install 'i2score[align]'") from e
    path = _models_dir() / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise AlignUnavailableError(f"the 68-point landmark model is missing: {path}")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


def detect_landmarks(img: Image.Image | np.ndarray, *, upsample: int = 1) -> FaceLandmarks:
    """Find the largest face in an RGB image and its 68 landmarks.

    Args:
        img: RGB PIL image or ``[H, W, 3]`` uint8 array.
        upsample: dlib's detector pyramid upsampling (each step doubles the image; 1 finds
            faces down to about 40 px, 2 about 20 px, at 4x the time per step).

    Raises:
        NoFaceError: no face found.
        AlignUnavailableError: dlib or the weights are not installed.
    """
    detector, predictor = _dlib_models()
    a = np.ascontiguousarray(np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img,
                                        dtype=np.uint8))
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] RGB image, got {list(a.shape)}")
    boxes, scores, _ = detector.run(a, upsample, 0.0)
    if len(boxes) == 0:
        raise NoFaceError(f"no face found in the {a.shape[1]}x{a.shape[0]} image")
    best = max(range(len(boxes)), key=lambda i: (boxes[i].width() * boxes[i].height(), scores[i]))
    rect = boxes[best]
    shape = predictor(a, rect)
    points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
    return FaceLandmarks(points=points, box=(rect.left(), rect.top(), rect.right(), rect.bottom()),
                         faces=len(boxes))


def ffhq_quad(points: np.ndarray) -> np.ndarray:
    """FFHQ's oriented crop from 68 landmarks: ``[4, 2]`` source corners (top-left,
    bottom-left, bottom-right, top-right)."""
    lm = np.asarray(points, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected [68, 2] landmarks, got {list(lm.shape)}")
    eye_l, eye_r = lm[_EYE_LEFT].mean(axis=0), lm[_EYE_RIGHT].mean(axis=0)
    eyes = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = (lm[_MOUTH_LEFT] + lm[_MOUTH_RIGHT]) / 2 - eyes
    # rot90 of (dx, dy) is (-dy, dx): the mouth direction turned to point along the eyes.
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    x *= max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth)) / np.hypot(*x)
    y = np.array([-x[1], x[0]])
    c = eyes + 0.1 * eye_to_mouth
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _pad_reflect_blurred(a: np.ndarray, pad: tuple[int, int, int, int], qsize: float) -> np.ndarray:
    """FFHQ's padding: reflect, then fade towards a blur and the median colour away from the
    photo. ``pad`` is (left, top, right, bottom); returns float32."""
    from scipy.ndimage import gaussian_filter

    left, top, right, bottom = pad
    img = np.pad(a.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w, _ = img.shape
    yy, xx = np.ogrid[:h, :w]
    # 0 inside the photo, rising to 1 at the padded edge (the closer side of each axis).
    fx = 1.0 - np.minimum(xx.astype(np.float32) / left, (w - 1 - xx).astype(np.float32) / right)
    fy = 1.0 - np.minimum(yy.astype(np.float32) / top, (h - 1 - yy).astype(np.float32) / bottom)
    mask = np.maximum(fx, fy)[..., None]
    blur = qsize * 0.02
    img += (gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return img


def _shrink(qsize: float, size: int, source_size: tuple[int, int]) -> tuple[int, tuple[int, int]] | None:
    """FFHQ's shrink step: ``(factor, resized (w, h))`` when the quad is at least four times the
    output side, else None."""
    factor = int(math.floor(qsize / size * 0.5))
    if factor <= 1:
        return None
    w, h = source_size
    return factor, (max(1, round(w / factor)), max(1, round(h / factor)))


def warp_quad(img: Image.Image, quad: np.ndarray, size: int, *, supersample: int = 4) -> Image.Image:
    """Sample the square ``quad`` (source corners, FFHQ order) of an RGB image into a
    ``size x size`` RGB image, as FFHQ does (shrink, crop, reflect-pad with blur, warp, reduce)."""
    img = img.convert("RGB")
    quad = np.asarray(quad, dtype=np.float64).copy()
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    shrunk = _shrink(qsize, size, img.size)
    if shrunk is not None:
        # As FFHQ: the quad is divided by the factor, the photo resized to the rounded size
        # (FaceAlignment.sampled_quad accounts for the difference when mapping back).
        factor, rsize = shrunk
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= factor
        qsize /= factor
    border = max(round(qsize * 0.1), 3)
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0),
            min(hi[0] + border, img.width), min(hi[1] + border, img.height))
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise ValueError("the face quad lies outside the image")
    if crop[2] - crop[0] < img.width or crop[3] - crop[1] < img.height:
        img = img.crop(crop)
        quad -= crop[:2]
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    pad = (max(-lo[0] + border, 0), max(-lo[1] + border, 0),
           max(hi[0] - img.width + border, 0), max(hi[1] - img.height + border, 0))
    if max(pad) > border - 4:
        least = round(qsize * 0.3)
        pad = (max(pad[0], least), max(pad[1], least), max(pad[2], least), max(pad[3], least))
        padded = _pad_reflect_blurred(np.asarray(img), pad, qsize)
        img = Image.fromarray(np.clip(np.rint(padded), 0, 255).astype(np.uint8), "RGB")
        quad += pad[:2]
    side = size * supersample
    # PIL's AFFINE takes the inverse map: output (X, Y) -> input (a X + b Y + c, d X + e Y + f),
    # in continuous coordinates (pixel centres at +0.5).
    ux, vy = (quad[3] - quad[0]) / side, (quad[1] - quad[0]) / side
    o = quad[0] + 0.5
    data = (ux[0], vy[0], o[0], ux[1], vy[1], o[1])
    out = img.transform((side, side), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    if side != size:
        out = out.resize((size, size), Image.Resampling.LANCZOS)
    return out


def align_face(img: Image.Image, size: int, *, upsample: int = 1, supersample: int = 4
               ) -> tuple[Image.Image, FaceAlignment]:
    """Detect, landmark and FFHQ-align the largest face of an RGB photo.

    Returns:
        ``(aligned, alignment)``: the ``size x size`` RGB aligned image and the transform.

    Raises:
        NoFaceError: no face in the photo.
        AlignUnavailableError: dlib or the landmark weights are not installed.
    """
    if size < 8:
        raise ValueError(f"aligned size must be at least 8 px, got {size}")
    img = img.convert("RGB")
    face = detect_landmarks(img, upsample=upsample)
    quad = ffhq_quad(face.points)
    aligned = warp_quad(img, quad, size, supersample=supersample)
    return aligned, FaceAlignment(quad=quad, size=size, source_size=img.size, faces=face.faces,
                                  box=face.box, landmarks=face.points)


def _bilinear(a: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``[H, W, C]`` at float pixel coordinates (centres at integers), edges clamped."""
    h, w = a.shape[:2]
    u = np.clip(u, 0.0, w - 1.0)
    v = np.clip(v, 0.0, h - 1.0)
    u0 = np.minimum(np.floor(u).astype(int), w - 2) if w > 1 else np.zeros_like(u, dtype=int)
    v0 = np.minimum(np.floor(v).astype(int), h - 2) if h > 1 else np.zeros_like(v, dtype=int)
    fu = (u - u0)[..., None]
    fv = (v - v0)[..., None]
    u1, v1 = np.minimum(u0 + 1, w - 1), np.minimum(v0 + 1, h - 1)
    top = a[v0, u0] * (1 - fu) + a[v0, u1] * fu
    bottom = a[v1, u0] * (1 - fu) + a[v1, u1] * fu
    return top * (1 - fv) + bottom * fv


def paste_back(original: Image.Image, edited: Image.Image, alignment: FaceAlignment, *,
               feather: float = 0.1) -> Image.Image:
    """Put an edited aligned image back into the photo it was aligned from.

    Args:
        original: the source photo (``alignment.source_size``), RGB.
        edited: the edited aligned image, any square size (scaled to the alignment's).
        alignment: the transform :func:`align_face` returned for ``original``.
        feather: width of the blend ramp inside the quad's edge, as a fraction of its side
            (0 = a hard edge).

    Returns:
        The photo with the quad replaced by the edit (blended over ``feather`` inside its
        edge). Every pixel outside the quad is the original's, bit for bit.
    """
    if original.size != tuple(alignment.source_size):
        raise ValueError(f"the photo is {original.size[0]}x{original.size[1]}, the alignment was made on "
                         f"{alignment.source_size[0]}x{alignment.source_size[1]}")
    if edited.width != edited.height:
        raise ValueError(f"the edited image must be square, got {edited.width}x{edited.height}")
    src = np.asarray(original.convert("RGB"))
    out = src.copy()
    quad = alignment.sampled_quad
    w, h = original.size
    x0, y0 = (max(int(math.floor(v)), 0) for v in quad.min(axis=0))
    x1, y1 = min(int(math.ceil(quad[:, 0].max())), w - 1), min(int(math.ceil(quad[:, 1].max())), h - 1)
    if x1 < x0 or y1 < y0:
        return original.convert("RGB").copy()
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    uv = alignment.to_aligned(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64))
    # Quad coordinates in [0, 1] across the aligned square (its outer pixel edges).
    s = (uv + 0.5) / alignment.size
    inside = np.minimum(np.minimum(s[:, 0], 1 - s[:, 0]), np.minimum(s[:, 1], 1 - s[:, 1]))
    weight = np.clip(inside / feather, 0.0, 1.0) if feather > 0 else (inside >= 0).astype(np.float64)
    weight[inside < 0] = 0.0
    sel = weight > 0
    if not sel.any():
        return Image.fromarray(out, "RGB")
    e = np.asarray(edited.convert("RGB"), dtype=np.float64)
    k = edited.width / alignment.size
    samples = _bilinear(e, (uv[sel, 0] + 0.5) * k - 0.5, (uv[sel, 1] + 0.5) * k - 0.5)
    py, px = ys.ravel()[sel], xs.ravel()[sel]
    wgt = weight[sel][:, None]
    out[py, px] = np.clip(np.rint(src[py, px] * (1 - wgt) + samples * wgt), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


def quad_mask(alignment: FaceAlignment) -> np.ndarray:
    """``[H, W]`` bool: the source pixels whose centres lie inside the alignment's quad (the
    only pixels :func:`paste_back` may change)."""
    w, h = alignment.source_size
    ys, xs = np.mgrid[0:h, 0:w]
    uv = alignment.to_aligned(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64))
    s = (uv + 0.5) / alignment.size
    inside = (s >= 0).all(axis=1) & (s <= 1).all(axis=1)
    return np.asarray(inside.reshape(h, w))


def eye_centres(points: np.ndarray) -> np.ndarray:
    """``[2, 2]`` the mean of each eye's six landmarks (left, right in the image)."""
    lm = np.asarray(points, dtype=np.float64)
    return np.stack([lm[_EYE_LEFT].mean(axis=0), lm[_EYE_RIGHT].mean(axis=0)])

