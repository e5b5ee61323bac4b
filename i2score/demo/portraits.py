"""Procedural portraits: the training data of the bundled demo generator.

Every image is a pure function of ``(seed, resolution)``: a seed draws a
:class:`PortraitParams` (head shape/size/position, skin tone, hair style and colour, eyes with
shape, iris colour and gaze, eyebrows, nose, mouth closed/smiling/open, glasses, earrings,
clothing, background gradient, light direction, small rotation, texture noise), and
:func:`render_portrait` draws it with Pillow at 4x supersampling, then filters it down.
Factors are drawn independently, so a generator trained on them has separable causes of
variation to learn, which is what the edits (crossover, attribute transfer) need.

Seeds ``0 .. TRAIN_SEEDS-1`` are the training set; :data:`HELDOUT_SEED_BASE` and up are
never used for training (the sample data and quality tables use them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

TRAIN_SEEDS = 16_384
"""Training uses seeds ``0 .. TRAIN_SEEDS-1``."""

HELDOUT_SEED_BASE = 1_000_000
"""Held-out images use seeds from here up; no training run draws them."""

SUPERSAMPLE = 4

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 105], [198, 134, 66],
                  [141, 85, 36], [92, 56, 33]], dtype=np.float64)
_HAIR = np.array([[20, 18, 18], [60, 38, 25], [110, 70, 40], [200, 160, 90],
                  [230, 210, 150], [150, 60, 30], [170, 170, 170], [60, 80, 160],
                  [150, 60, 130]], dtype=np.float64)
_HAIR_P = np.array([0.22, 0.2, 0.15, 0.1, 0.08, 0.08, 0.07, 0.05, 0.05])
_IRIS = np.array([[90, 55, 30], [40, 90, 160], [60, 120, 60], [110, 120, 130],
                  [30, 25, 20]], dtype=np.float64)
HAIR_STYLES = ("bald", "short", "long", "bun", "bangs", "curly")
MOUTHS = ("closed", "smile", "open")


@dataclass(frozen=True)
class PortraitParams:
    """All factors of one portrait. Lengths are fractions of the image side."""

    bg_top: tuple[int, int, int]
    bg_bottom: tuple[int, int, int]
    bg_angle: float
    head_cx: float
    head_cy: float
    head_w: float
    head_h: float
    skin: tuple[int, int, int]
    hair_style: str
    hair_color: tuple[int, int, int]
    hair_volume: float
    clothes: tuple[int, int, int]
    eye_dy: float
    eye_sep: float
    eye_w: float
    eye_h: float
    iris: tuple[int, int, int]
    gaze: tuple[float, float]
    brow_thick: float
    brow_tilt: float
    brow_raise: float
    nose_len: float
    nose_w: float
    mouth: str
    mouth_w: float
    lip: tuple[int, int, int]
    glasses: bool
    glasses_round: bool
    glasses_color: tuple[int, int, int]
    earrings: bool
    earring_color: tuple[int, int, int]
    light: tuple[float, float]
    light_strength: float
    rotation: float
    noise_sigma: float


def _color(rgb: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(np.round(rgb), 0, 255).astype(int)
    return int(c[0]), int(c[1]), int(c[2])


def sample_params(seed: int) -> PortraitParams:
    """Draw every factor of portrait ``seed`` (deterministic, independent of the resolution)."""
    rng = np.random.default_rng([seed, 0x1257])
    u = rng.uniform
    bg_top = rng.uniform(20, 235, 3)
    bg_bottom = np.clip(bg_top + rng.normal(0, 45, 3), 0, 255)
    t = u(0, len(_SKIN) - 1)
    i = int(t)
    skin = _SKIN[i] + (t - i) * (_SKIN[min(i + 1, len(_SKIN) - 1)] - _SKIN[i]) + rng.normal(0, 6, 3)
    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] + rng.normal(0, 10, 3)
    iris = _IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 8, 3)
    lip = np.clip(skin * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 8, 3) + [30, 0, 0], 0, 255)
    head_w = u(0.34, 0.46)
    return PortraitParams(
        bg_top=_color(bg_top), bg_bottom=_color(bg_bottom), bg_angle=u(0, 2 * math.pi),
        head_cx=0.5 + u(-0.06, 0.06), head_cy=0.47 + u(-0.05, 0.05),
        head_w=head_w, head_h=head_w * u(1.18, 1.42), skin=_color(skin),
        hair_style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))], hair_color=_color(hair),
        hair_volume=u(0.0, 1.0), clothes=_color(rng.uniform(15, 240, 3)),
        eye_dy=u(-0.07, -0.02), eye_sep=u(0.26, 0.34), eye_w=u(0.16, 0.24), eye_h=u(0.08, 0.14),
        iris=_color(iris), gaze=(u(-0.35, 0.35), u(-0.25, 0.25)),
        brow_thick=u(0.02, 0.045), brow_tilt=u(-0.25, 0.25), brow_raise=u(0.0, 0.06),
        nose_len=u(0.10, 0.2), nose_w=u(0.06, 0.12),
        mouth=MOUTHS[int(rng.integers(len(MOUTHS)))], mouth_w=u(0.22, 0.38), lip=_color(lip),
        glasses=bool(u() < 0.3), glasses_round=bool(u() < 0.5),
        glasses_color=_color(rng.choice([[20, 20, 20], [180, 140, 40], [150, 30, 30],
                                         [200, 200, 210]]) + rng.normal(0, 6, 3)),
        earrings=bool(u() < 0.3), earring_color=_color(rng.choice([[230, 190, 60], [210, 210, 220]])),
        light=(math.cos(a := u(0, 2 * math.pi)), math.sin(a)), light_strength=u(0.0, 0.35),
        rotation=u(-8.0, 8.0), noise_sigma=u(1.0, 5.0),
    )


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, s: float,
             fill: tuple[int, ...] | int | None = None, outline: tuple[int, ...] | int | None = None,
             width: float = 0) -> None:
    draw.ellipse([(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=fill,
                 outline=outline, width=max(1, int(round(width * s))) if outline else 0)


def _background(p: PortraitParams, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    t = np.clip(0.5 + xx * math.cos(p.bg_angle) + yy * math.sin(p.bg_angle), 0, 1)[..., None]
    return (1 - t) * np.array(p.bg_top) + t * np.array(p.bg_bottom)


def _draw_face(p: PortraitParams, size: int) -> Image.Image:
    """Everything but the background, on a transparent RGBA layer of ``size`` pixels."""
    s = float(size)
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cx, cy, hw, hh = p.head_cx, p.head_cy, p.head_w / 2, p.head_h / 2
    hair = p.hair_color + (255,)
    skin = p.skin + (255,)
    shade = tuple(int(c * 0.8) for c in p.skin) + (255,)
    vol = 0.02 + 0.05 * p.hair_volume

    # Shoulders and neck.
    _ellipse(d, cx, 1.08, 0.42, 0.22, s, fill=p.clothes + (255,))
    d.rectangle([(cx - hw * 0.42) * s, (cy + hh * 0.6) * s, (cx + hw * 0.42) * s, 0.93 * s], fill=shade)
    # Hair behind the head.
    if p.hair_style == "long":
        d.rounded_rectangle([(cx - hw - vol) * s, (cy - hh - vol) * s, (cx + hw + vol) * s,
                             (cy + hh * (1.1 + 0.5 * p.hair_volume)) * s], radius=hw * s, fill=hair)
    elif p.hair_style == "curly":
        for k in range(14):
            a = math.pi * (0.95 + 1.1 * k / 13)
            _ellipse(d, cx + (hw + vol * 0.5) * math.cos(a), cy - hh * 0.15 + (hh + vol * 0.5) * math.sin(a),
                     0.06 + 0.03 * p.hair_volume, 0.06 + 0.03 * p.hair_volume, s, fill=hair)
    elif p.hair_style == "bun":
        _ellipse(d, cx, cy - hh - 0.05 - 0.03 * p.hair_volume, 0.08 + 0.03 * p.hair_volume,
                 0.07 + 0.03 * p.hair_volume, s, fill=hair)
    # Ears and earrings.
    for side in (-1, 1):
        ex = cx + side * hw * 0.98
        _ellipse(d, ex, cy + 0.01, 0.035, 0.06, s, fill=skin)
        if p.earrings:
            _ellipse(d, ex, cy + 0.085, 0.016, 0.016, s, fill=p.earring_color + (255,))
    # Head.
    _ellipse(d, cx, cy, hw, hh, s, fill=skin)
    # Hair on top of the head.
    if p.hair_style in ("short", "long", "bangs", "bun", "curly"):
        top = cy - hh - vol
        cap_bottom = cy - hh * (0.35 if p.hair_style == "bangs" else 0.55)
        d.chord([(cx - hw - vol * 0.6) * s, top * s, (cx + hw + vol * 0.6) * s,
                 (2 * cap_bottom - top) * s], 180, 360, fill=hair)
        if p.hair_style == "bangs":
            d.rectangle([(cx - hw * 0.8) * s, cap_bottom * s - 1, (cx + hw * 0.8) * s,
                         (cap_bottom + 0.05) * s], fill=hair)
    ey = cy + p.eye_dy
    # Eyes.
    for side in (-1, 1):
        ex = cx + side * p.eye_sep * hw
        rx, ry = p.eye_w * hw / 2 * 1.1, p.eye_h * hh / 2 * 1.2
        _ellipse(d, ex, ey, rx, ry, s, fill=(250, 250, 250, 255))
        ir = min(rx, ry) * 0.9
        ix, iy = ex + p.gaze[0] * (rx - ir), ey + p.gaze[1] * (ry - ir * 0.6)
        _ellipse(d, ix, iy, ir, ir, s, fill=p.iris + (255,))
        _ellipse(d, ix, iy, ir * 0.45, ir * 0.45, s, fill=(10, 10, 10, 255))
        # Eyebrow: a thick tilted line above the eye.
        by = ey - ry - 0.025 - p.brow_raise
        dy = side * p.brow_tilt * rx
        d.line([((ex - rx * 1.1) * s, (by + dy) * s), ((ex + rx * 1.1) * s, (by - dy) * s)],
               fill=tuple(int(c * 0.7) for c in p.hair_color) + (255,), width=max(1, int(p.brow_thick * s)))
    # Glasses.
    if p.glasses:
        g = p.glasses_color + (255,)
        lw = 0.012
        for side in (-1, 1):
            ex = cx + side * p.eye_sep * hw
            r = p.eye_w * hw * 0.8
            box = [(ex - r) * s, (ey - r * 0.8) * s, (ex + r) * s, (ey + r * 0.8) * s]
            if p.glasses_round:
                d.ellipse(box, outline=g, width=max(1, int(lw * s)))
            else:
                d.rectangle(box, outline=g, width=max(1, int(lw * s)))
        inner = p.eye_sep * hw - p.eye_w * hw * 0.8
        d.line([((cx - inner) * s, ey * s), ((cx + inner) * s, ey * s)], fill=g, width=max(1, int(lw * s)))
    # Nose: a shaded wedge.
    ny0, ny1 = ey + 0.03, ey + 0.03 + p.nose_len
    d.polygon([(cx * s, ny0 * s), ((cx - p.nose_w / 2) * s, ny1 * s), ((cx + p.nose_w / 2) * s, ny1 * s)],
              fill=shade)
    # Mouth.
    my = _mouth_y(p)
    mw = p.mouth_w * hw
    lip = p.lip + (255,)
    if p.mouth == "closed":
        d.line([((cx - mw) * s, my * s), ((cx + mw) * s, my * s)], fill=lip, width=max(1, int(0.018 * s)))
    elif p.mouth == "smile":
        d.chord([(cx - mw) * s, (my - 0.04) * s, (cx + mw) * s, (my + 0.05) * s], 0, 180, fill=lip)
        d.chord([(cx - mw * 0.8) * s, (my - 0.03) * s, (cx + mw * 0.8) * s, (my + 0.025) * s], 0, 180,
                fill=(245, 245, 240, 255))
    else:
        _ellipse(d, cx, my + 0.01, mw * 0.7, 0.04, s, fill=lip)
        _ellipse(d, cx, my + 0.01, mw * 0.55, 0.027, s, fill=(60, 20, 25, 255))
    return layer


def render_portrait(seed: int, resolution: int = 64, **overrides: Any) -> np.ndarray:
    """Portrait ``seed`` as ``uint8 [resolution, resolution, 3]`` (deterministic).

    ``overrides`` replace factors of :class:`PortraitParams` (e.g. ``mouth="smile"``): the same
    person with another expression, for expression transfer.
    """
    if resolution < 16:
        raise ValueError(f"resolution must be >= 16, got {resolution}")
    unknown = set(overrides) - {f.name for f in fields(PortraitParams)}
    if unknown:
        raise ValueError(f"unknown portrait factors: {sorted(unknown)}")
    if "mouth" in overrides and overrides["mouth"] not in MOUTHS:
        raise ValueError(f"mouth must be one of {MOUTHS}, got {overrides['mouth']!r}")
    p = replace(sample_params(seed), **overrides)
    big = resolution * SUPERSAMPLE
    face = _draw_face(p, big).rotate(p.rotation, resample=Image.Resampling.BICUBIC, center=(big / 2, big * 0.55))
    # A soft shadow under the figure separates it from the background.
    alpha = np.asarray(face, dtype=np.float64)[..., 3:] / 255.0
    rgb = np.asarray(face, dtype=np.float64)[..., :3]
    yy, xx = (np.mgrid[0:big, 0:big] + 0.5) / big - 0.5
    light = 1.0 + p.light_strength * (xx * p.light[0] + yy * p.light[1]) * 2
    composed = _background(p, big) * (1 - alpha) + rgb * alpha * light[..., None]
    img = Image.fromarray(np.clip(composed, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(SUPERSAMPLE * 0.35))
    img = img.resize((resolution, resolution), Image.Resampling.BOX)
    out = np.asarray(img, dtype=np.float64)
    noise = np.random.default_rng([seed, 0x7E47]).normal(0, p.noise_sigma, out.shape)
    return np.clip(np.round(out + noise), 0, 255).astype(np.uint8)


REGIONS = ("face", "eyes", "mouth", "background")


def _mouth_y(p: PortraitParams) -> float:
    ey = p.head_cy + p.eye_dy
    return min(ey + 0.03 + p.nose_len + 0.07, p.head_cy + p.head_h / 2 * 0.75)


def region_mask(seed: int, region: str, resolution: int = 64) -> np.ndarray:
    """Binary mask ``bool [resolution, resolution]`` of a named region of portrait ``seed``.

    ``face``: the head ellipse; ``eyes``: a band over both eyes and eyebrows; ``mouth``: a box
    around the mouth; ``background``: everything not covered by the figure. Drawn with the
    portrait's own geometry and rotation, so it lines up with :func:`render_portrait`.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    p = sample_params(seed)
    big = resolution * SUPERSAMPLE
    s = float(big)
    if region == "background":  # the figure's coverage, inverted after the rotation
        layer = Image.fromarray(np.asarray(_draw_face(p, big), dtype=np.uint8)[..., 3], "L")
    else:
        layer = Image.new("L", (big, big), 0)
        d = ImageDraw.Draw(layer)
        cx, cy, hw, hh = p.head_cx, p.head_cy, p.head_w / 2, p.head_h / 2
        ey = cy + p.eye_dy
        if region == "face":
            _ellipse(d, cx, cy, hw, hh, s, fill=255)
        elif region == "eyes":
            half = p.eye_sep * hw + p.eye_w * hw * 0.9 + 0.02
            d.rectangle([(cx - half) * s, (ey - p.eye_h * hh / 2 - 0.09 - p.brow_raise) * s,
                         (cx + half) * s, (ey + p.eye_h * hh / 2 + 0.04) * s], fill=255)
        else:
            my, mw = _mouth_y(p), p.mouth_w * hw
            d.rectangle([(cx - mw - 0.04) * s, (my - 0.06) * s, (cx + mw + 0.04) * s, (my + 0.08) * s], fill=255)
    layer = layer.rotate(p.rotation, resample=Image.Resampling.BICUBIC, center=(big / 2, big * 0.55), fillcolor=0)
    small = np.asarray(layer.resize((resolution, resolution), Image.Resampling.BOX), dtype=np.float64) >= 127.5
    return ~small if region == "background" else small


def render_dataset(seeds: range | list[int], resolution: int = 64) -> np.ndarray:
    """Render many portraits: ``uint8 [N, resolution, resolution, 3]``."""
    seeds = list(seeds)
    out = np.empty((len(seeds), resolution, resolution, 3), dtype=np.uint8)
    for i, seed in enumerate(seeds):
        out[i] = render_portrait(seed, resolution)
    return out


def heldout_seeds(n: int) -> list[int]:
    """The first ``n`` held-out seeds (never used for training)."""
    return [HELDOUT_SEED_BASE + i for i in range(n)]


def heldout_images(n: int = 16, resolution: int = 64) -> torch.Tensor:
    """The first ``n`` held-out portraits as ``float32 [n, 3, R, R]`` in [-1, 1]: the pixels of
    ``manifests/demo/images/heldout-NN.png`` (rendered the same way and stored losslessly), the
    images the demo encoder is measured on."""
    arr = np.stack([render_portrait(s, resolution) for s in heldout_seeds(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
