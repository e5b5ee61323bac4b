"""FFHQ alignment (i2score.data.align) on scikit-image's astronaut and LFW faces: the aligned eyes
land where FFHQ's transform puts them, moved copies align to the same crop, no face is
``no_face``, several faces give the largest, and paste-back leaves everything outside the
face quad untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import affine_transform
from skimage import data

from i2score.data.align import (
    FFHQ_EYES,
    FaceAlignment,
    NoFaceError,
    align_face,
    detect_landmarks,
    eye_centres,
    ffhq_quad,
    paste_back,
    quad_mask,
    warp_quad,
)

#: Aligned side for the checks: the bundled generator's resolution (flows align to it).
SIZE = 64
#: Copies of each photo: (degrees, scale, shift as a fraction of the face quad's side), all
#: about the face's centre so that the quad keeps the photo's own pixels.
COPIES = {"rot+12": (12.0, 1.0, (0.0, 0.0)), "rot-10": (-10.0, 1.0, (0.0, 0.0)),
          "scale0.8": (0.0, 0.8, (0.0, 0.0)), "scale1.2": (0.0, 1.2, (0.0, 0.0)),
          "shift": (0.0, 1.0, (0.1, -0.07)), "all": (8.0, 1.15, (-0.06, 0.05))}


def _lfw(i: int) -> Image.Image:
    """LFW face ``i`` of scikit-image's subset (25 x 25 gray, tight crops): dlib's detector
    finds no face that small, so it is upscaled 4x (bicubic) and given a 50 px edge border
    (the detector wants some context around the face)."""
    face = Image.fromarray((data.lfw_subset()[i] * 255).round().astype(np.uint8)).convert("RGB")
    big = np.asarray(face.resize((100, 100), Image.Resampling.BICUBIC))
    return Image.fromarray(np.pad(big, ((50, 50), (50, 50), (0, 0)), mode="edge"))


def _moved(img: Image.Image, centre: np.ndarray, degrees: float, scale: float, shift: np.ndarray) -> Image.Image:
    """``img`` rotated by ``degrees``, scaled by ``scale`` about ``centre`` (x, y) and shifted."""
    a = np.asarray(img, dtype=np.float64)
    t = np.deg2rad(degrees)
    fwd = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])  # (row, col) space
    inv = np.linalg.inv(fwd)
    c = np.array([centre[1], centre[0]])
    offset = c - inv @ (c + np.array([shift[1], shift[0]]))
    out = np.stack([affine_transform(a[..., k], inv, offset=offset, order=3, mode="mirror") for k in range(3)], -1)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _eyes_found(aligned: Image.Image) -> np.ndarray:
    """Eye centres the detector finds again in an aligned image, as fractions of its side
    (upscaled to 256 first: the detector needs faces of about 80 px)."""
    big = aligned.resize((256, 256), Image.Resampling.BICUBIC)
    return eye_centres(detect_landmarks(big).points) / 256


def _psnr(a: Image.Image, b: Image.Image) -> float:
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean(d**2)))


PHOTOS = {"astronaut": lambda: Image.fromarray(data.astronaut()), "lfw0": lambda: _lfw(0),
          "lfw1": lambda: _lfw(1), "lfw2": lambda: _lfw(2), "lfw3": lambda: _lfw(3)}


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_aligned_eyes_land_at_their_ffhq_positions_and_moved_copies_align_to_the_same_crop(name):
    photo = PHOTOS[name]()
    aligned, al = align_face(photo, SIZE)
    assert aligned.size == (SIZE, SIZE)
    # Where FFHQ's transform puts this face's eyes (a function of its proportions: the
    # transform fixes the eyes' midpoint and the scale, not each eye).
    target = eye_centres(al.to_aligned(al.landmarks)) / SIZE
    assert np.abs(_eyes_found(aligned) - target).max() < 0.02
    side = float(np.hypot(*(al.quad[3] - al.quad[0])))
    for copy, (degrees, scale, shift) in COPIES.items():
        moved = _moved(photo, al.quad.mean(axis=0), degrees, scale, np.array(shift) * side)
        aligned2, al2 = align_face(moved, SIZE)
        err = np.abs(_eyes_found(aligned2) - target).max()
        assert err < 0.02, (copy, err)
        assert _psnr(aligned, aligned2) >= 25.0, (copy, _psnr(aligned, aligned2))
        assert al2.faces >= 1


def test_the_astronaut_eyes_land_at_the_canonical_ffhq_positions():
    aligned, _ = align_face(Image.fromarray(data.astronaut()), 256)
    assert np.abs(_eyes_found(aligned) - np.array(FFHQ_EYES)).max() < 0.02


def test_an_image_without_a_face_is_no_face():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 200)[None, :, None] * np.ones((200, 1, 3))
    img = Image.fromarray(np.clip(ramp + rng.normal(0, 8, ramp.shape), 0, 255).astype(np.uint8))
    with pytest.raises(NoFaceError) as e:
        align_face(img, SIZE)
    assert e.value.reason == "no_face"
    with pytest.raises(NoFaceError):
        align_face(Image.fromarray(data.coffee()), SIZE)


def test_several_faces_give_the_largest_and_their_count():
    face = Image.fromarray(data.astronaut()).crop((100, 0, 340, 240))
    canvas = Image.new("RGB", (600, 300), (128, 128, 128))
    canvas.paste(face, (0, 30))
    canvas.paste(face.resize((160, 160), Image.Resampling.LANCZOS), (400, 60))
    _, al = align_face(canvas, SIZE)
    assert al.faces == 2
    assert al.box[2] < 300  # the big face, on the left
    assert al.to_dict()["faces"] == 2


def test_the_transform_maps_both_ways_and_survives_json():
    _, al = align_face(Image.fromarray(data.astronaut()), SIZE)
    corners = np.array([[-0.5, -0.5], [-0.5, SIZE - 0.5], [SIZE - 0.5, SIZE - 0.5], [SIZE - 0.5, -0.5]])
    np.testing.assert_allclose(al.to_source(corners), al.sampled_quad, atol=1e-9)
    np.testing.assert_array_equal(al.sampled_quad, al.quad)  # no shrink at this size
    pts = np.array([[10.0, 20.0], [300.0, 400.0]])
    np.testing.assert_allclose(al.to_source(al.to_aligned(pts)), pts, atol=1e-9)
    back = FaceAlignment.from_dict(al.to_dict())
    np.testing.assert_allclose(back.matrix, al.matrix, atol=1e-3)
    assert (back.size, back.source_size, back.faces, back.box) == (al.size, al.source_size, al.faces, al.box)
    with pytest.raises(ValueError, match="'quad'"):
        FaceAlignment.from_dict({"size": 64, "source_size": [1, 1]})


def test_paste_back_changes_only_the_face_quad_and_restores_the_rest_exactly():
    photo = Image.fromarray(data.astronaut())
    aligned, al = align_face(photo, SIZE)
    edited = Image.fromarray(255 - np.asarray(aligned))  # an edit that changes every pixel
    out = np.asarray(paste_back(photo, edited, al))
    src = np.asarray(photo)
    inside = quad_mask(al)
    assert 0 < inside.mean() < 0.5
    np.testing.assert_array_equal(out[~inside], src[~inside])
    changed = (out != src).any(axis=2)
    assert changed[inside].mean() > 0.9
    # Pasting the unedited aligned image back reproduces the face (up to two resamplings).
    same = np.asarray(paste_back(photo, aligned.resize((256, 256), Image.Resampling.LANCZOS), al))
    np.testing.assert_array_equal(same[~inside], src[~inside])
    diff = same[inside].astype(float) - src[inside]
    assert 10 * np.log10(255.0**2 / np.mean(diff**2)) > 25
    with pytest.raises(ValueError, match="alignment was made on"):
        paste_back(photo.resize((100, 100)), edited, al)


def test_a_run_with_align_stops_before_it_starts_when_dlib_is_missing(tmp_path, monkeypatch):
    import importlib.util

    from i2score.data import align
    from i2score.runs.preflight import PreflightError, preflight

    assert align.check_available().endswith("shape_predictor_68_face_landmarks.dat")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    with pytest.raises(align.AlignUnavailableError, match="dlib-bin"):
        align.check_available()
    (tmp_path / "m.csv").write_text("id,image\na,a.png\n")
    with pytest.raises(PreflightError, match="--align: .*i2score\\[align\\]"):
        preflight("reconstruct", {"manifest": str(tmp_path / "m.csv"), "root": str(tmp_path / "r"), "align": True})


REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "ffhq_align_reference.npz"


@pytest.mark.parametrize("name", ["astronaut64", "big64"])
def test_the_crop_and_its_pixels_are_ffhqs(name):
    """Against outputs recorded from NVlabs/ffhq-dataset's own steps (``recreate_aligned_images``,
    transform at 4x the output side) on the same landmarks: the astronaut at 64 px, and a
    2048 px copy, where FFHQ first shrinks the photo 5x."""
    ref = np.load(REFERENCE)
    photo = Image.fromarray(data.astronaut())
    if name == "big64":
        photo = photo.resize((2048, 2048), Image.Resampling.LANCZOS)
    quad = ffhq_quad(ref[f"{name}_landmarks"])
    np.testing.assert_allclose(quad, ref[f"{name}_quad"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(warp_quad(photo, quad, 64)), ref[f"{name}_aligned"])


def test_paste_back_maps_to_the_pixels_really_sampled_after_a_shrink():
    photo = Image.fromarray(data.astronaut()).resize((2048, 2048), Image.Resampling.LANCZOS)
    aligned, al = align_face(photo, 64)
    assert not np.allclose(al.sampled_quad, al.quad)  # shrunk 5x: they differ by a fraction of a pixel
    assert np.abs(al.sampled_quad - al.quad).max() < 5
    # Landmarks mapped into the aligned image land where the detector finds them there.
    found = eye_centres(detect_landmarks(aligned.resize((256, 256), Image.Resampling.BICUBIC)).points) / 256
    mapped = eye_centres(al.to_aligned(al.landmarks)) / 64
    assert np.abs(found - mapped).max() < 0.02
