"""The sample data under ``manifests/demo/``: held-out portraits, masks, scribbles, real photos
and example manifests. ``write_sample_data`` regenerates all of it deterministically
(``python -m i2score.demo.sample_data manifests/demo``); the committed files are its output.

Layout (``R`` = model resolution, 64 for the demo model):

* ``images/heldout-NN.png``: portraits from held-out seeds (never used for training).
* ``photos/{astronaut,coffee,chelsea}.png``: scikit-image's photos, centre-cropped to ``R``.
* ``masks/hole-rect-NN.png``, ``masks/hole-free-NN.png``: inpainting holes (rectangle,
  free-form brush strokes) for image NN; white = missing.
* ``masks/half-left.png``, ``masks/half-top.png``: crossover masks (white = from ``image``).
* ``masks/region-{face,eyes,mouth,background}-NN.png``: regions of image NN drawn from the
  portrait's own geometry (attribute transfer, style transfer, crossover).
* ``scribbles/heldout-NN.png`` + ``masks/scribble-NN.png``: image NN with coloured strokes,
  and the stroke region.
* ``images/expression-{neutral,smile}.png``: one held-out person (seed of image 14) with a
  closed and a smiling mouth, the pair of an expression transfer.
* ``reconstruct.{csv,jsonl}``, ``inpaint.{csv,jsonl}``, ``edit.{csv,jsonl}``: manifests.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from i2score.demo.portraits import REGIONS, heldout_seeds, region_mask, render_portrait
from i2score.method.masks import free_hole, rect_hole

PHOTOS = ("astronaut", "coffee", "chelsea")
EXPRESSION_PAIR = {"neutral": "closed", "smile": "smile"}
"""The expression pair's file names and the mouth each shows."""


def _save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(path, optimize=True)


def scribble(image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw 2-3 coloured strokes on ``uint8 [R, R, 3]``; returns (scribbled image, stroke mask)."""
    rng = np.random.default_rng([seed, 0x5C21])
    r = image.shape[0]
    img = Image.fromarray(image)
    mask = Image.new("L", (r, r), 0)
    di, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(2, 4))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        pts = [tuple(float(v) for v in rng.uniform(0.25, 0.75, 2) * r)]
        for _ in range(3):
            pts.append(tuple(float(np.clip(v + rng.normal(0, 0.08 * r), 0.15 * r, 0.85 * r)) for v in pts[-1]))
        width = max(2, int(r / 20))
        di.line(pts, fill=color, width=width, joint="curve")
        dm.line(pts, fill=255, width=width + 2, joint="curve")
    return np.asarray(img), np.asarray(mask) >= 128


def photo(name: str, resolution: int) -> np.ndarray:
    """A scikit-image sample photo, centre-cropped and area-resized to ``uint8 [R, R, 3]``."""
    try:
        from skimage import data as skdata
    except ImportError as e:  # dev extra only
        raise RuntimeError("the real photos come from scikit-image: pip install scikit-image") from e
    arr = getattr(skdata, name)()
    img = ImageOps.fit(Image.fromarray(arr).convert("RGB"), (resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(img)


def write_sample_data(out: str | Path, resolution: int = 64, n_heldout: int = 16) -> dict[str, int]:
    """Write the whole sample set into ``out``; returns counts of files per kind."""
    root = Path(out)
    for sub in ("images", "photos", "masks", "scribbles"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    seeds = heldout_seeds(n_heldout)
    ids = [f"heldout-{i:02d}" for i in range(n_heldout)]
    for i, (seed, name) in enumerate(zip(seeds, ids, strict=True)):
        Image.fromarray(render_portrait(seed, resolution)).save(root / "images" / f"{name}.png", optimize=True)
        _save_mask(rect_hole(seed, resolution), root / "masks" / f"hole-rect-{i:02d}.png")
        _save_mask(free_hole(seed, resolution), root / "masks" / f"hole-free-{i:02d}.png")
        for region in REGIONS:
            _save_mask(region_mask(seed, region, resolution), root / "masks" / f"region-{region}-{i:02d}.png")
    for i in range(4):
        scr, m = scribble(render_portrait(seeds[i], resolution), seeds[i])
        Image.fromarray(scr).save(root / "scribbles" / f"{ids[i]}.png", optimize=True)
        _save_mask(m, root / "masks" / f"scribble-{i:02d}.png")
    for expression, mouth in EXPRESSION_PAIR.items():
        Image.fromarray(render_portrait(seeds[14 % n_heldout], resolution, mouth=mouth)).save(
            root / "images" / f"expression-{expression}.png", optimize=True)
    half = np.zeros((resolution, resolution), dtype=bool)
    half[:, : resolution // 2] = True
    _save_mask(half, root / "masks" / "half-left.png")
    _save_mask(half.T.copy(), root / "masks" / "half-top.png")
    for name in PHOTOS:
        Image.fromarray(photo(name, resolution)).save(root / "photos" / f"{name}.png", optimize=True)

    recon = [{"id": n, "image": f"images/{n}.png"} for n in ids]
    recon += [{"id": p, "image": f"photos/{p}.png"} for p in PHOTOS]
    inpaint = []
    for i, n in enumerate(ids):
        inpaint.append({"id": f"{n}-rect", "image": f"images/{n}.png", "mask": f"masks/hole-rect-{i:02d}.png",
                        "params": {"k": 1}})
        inpaint.append({"id": f"{n}-free", "image": f"images/{n}.png", "mask": f"masks/hole-free-{i:02d}.png",
                        "params": {"k": 3 if i < 2 else 1, "seed": 0}})
    edit = _edit_rows(ids)
    _write_manifest(root / "reconstruct", recon)
    _write_manifest(root / "inpaint", inpaint)
    _write_manifest(root / "edit", edit)
    demo_recon, demo_edit = _demo_rows(ids)
    _write_manifest(root / "demo-reconstruct", demo_recon)
    _write_manifest(root / "demo-edit", demo_edit)
    return {"images": n_heldout, "photos": len(PHOTOS), "reconstruct_rows": len(recon),
            "inpaint_rows": len(inpaint), "edit_rows": len(edit)}


def _edit_rows(ids: list[str]) -> list[dict[str, object]]:
    img = lambda i: f"images/{ids[i]}.png"  # noqa: E731
    rows: list[dict[str, object]] = [
        {"id": "crossover-left", "op": "crossover", "image": img(0), "ref": img(1),
         "mask": "masks/half-left.png", "params": {"blur_sigma": 2.0}},
        {"id": "crossover-face", "op": "crossover", "image": img(2), "ref": img(3),
         "mask": "masks/region-face-03.png", "params": {}},
        {"id": "scribble-00", "op": "scribble", "image": img(0), "ref": "scribbles/heldout-00.png",
         "mask": "masks/scribble-00.png", "params": {"layers": 4}},
        {"id": "scribble-01", "op": "scribble", "image": img(1), "ref": "scribbles/heldout-01.png",
         "mask": "masks/scribble-01.png", "params": {"layers": 6}},
        {"id": "style-background", "op": "style_transfer", "image": img(4), "ref": img(5),
         "mask": "masks/region-background-04.png", "params": {}},
        {"id": "attribute-eyes", "op": "attribute_transfer", "image": img(6), "ref": img(7),
         "mask": "masks/region-eyes-06.png", "params": {"layer": 4, "mode": "copy"}},
        {"id": "attribute-mouth", "op": "attribute_transfer", "image": img(8), "ref": img(9),
         "mask": "masks/region-mouth-08.png", "params": {"layer": 4, "mode": "average"}},
        {"id": "morph-10-11", "op": "morph", "image": img(10), "ref": img(11), "params": {"t": 0.5}},
        {"id": "style-mix-12-13", "op": "style_mix", "image": img(12), "ref": img(13), "params": {"k": 4}},
        {"id": "neutral", "op": "reconstruct", "image": "images/expression-neutral.png"},
        {"id": "smiling", "op": "reconstruct", "image": "images/expression-smile.png"},
        {"id": "expression-00", "op": "expression_transfer", "image": img(0),
         "params": {"a": "neutral", "b": "smiling", "strength": 1.0}},
    ]
    return rows


def _demo_rows(ids: list[str]) -> tuple[list[dict[str, str]], list[dict[str, object]]]:
    """The manifests of ``i2s demo``: 8 portraits to reconstruct, then edits that only use
    their cached latents (so the edit run embeds nothing)."""
    img = lambda i: f"images/{ids[i]}.png"  # noqa: E731
    expression = [{"id": "neutral", "image": "images/expression-neutral.png"},
                  {"id": "smiling", "image": "images/expression-smile.png"}]
    recon = [{"id": ids[i], "image": img(i)} for i in range(6)] + expression
    reconstruct_rows: list[dict[str, object]] = [{"id": r["id"], "op": "reconstruct", "image": r["image"]}
                                                 for r in expression]
    edit: list[dict[str, object]] = reconstruct_rows + [
        {"id": "crossover-face", "op": "crossover", "image": img(2), "ref": img(3),
         "mask": "masks/region-face-03.png", "params": {}},
        {"id": "inpaint-00", "op": "inpaint", "image": img(0), "mask": "masks/hole-free-00.png",
         "params": {"k": 1}},
        {"id": "attribute-eyes", "op": "attribute_transfer", "image": img(4), "ref": img(5),
         "mask": "masks/region-eyes-04.png", "params": {"layer": 4, "mode": "copy"}},
        {"id": "morph-00-01", "op": "morph", "image": img(0), "ref": img(1), "params": {"t": 0.5}},
        {"id": "style-mix-02-03", "op": "style_mix", "image": img(2), "ref": img(3), "params": {"k": 4}},
        {"id": "expression-01", "op": "expression_transfer", "image": img(1),
         "params": {"a": "neutral", "b": "smiling", "strength": 1.0}},
    ]
    return recon, edit


def _write_manifest(stem: Path, rows: Sequence[Mapping[str, object]]) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for c, v in r.items()})
    with open(stem.with_suffix(".jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=False) + "\n")


if __name__ == "__main__":  # python -m i2score.demo.sample_data OUT_DIR
    print(write_sample_data(sys.argv[1] if len(sys.argv) > 1 else "manifests/demo"))
