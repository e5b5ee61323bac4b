"""Procedural portraits, region masks and the committed sample data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from i2score.data.manifest import validate_manifest
from i2score.demo.portraits import (
    HELDOUT_SEED_BASE,
    REGIONS,
    TRAIN_SEEDS,
    heldout_seeds,
    region_mask,
    render_portrait,
    sample_params,
)
from i2score.demo.sample_data import write_sample_data
from i2score.method.masks import free_hole, rect_hole
from i2score.runs.ops import CATALOG

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "demo"


def test_render_is_deterministic_and_varied() -> None:
    a, b = render_portrait(7), render_portrait(7)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    others = [render_portrait(s) for s in range(8, 14)]
    assert all(np.abs(a.astype(int) - o).mean() > 10 for o in others)
    assert render_portrait(7, 128).shape == (128, 128, 3)


def test_factors_cover_their_ranges() -> None:
    params = [sample_params(s) for s in range(400)]
    assert {p.hair_style for p in params} == {"bald", "short", "long", "bun", "bangs", "curly"}
    assert {p.mouth for p in params} == {"closed", "smile", "open"}
    assert 0.15 < np.mean([p.glasses for p in params]) < 0.45
    assert 0.15 < np.mean([p.earrings for p in params]) < 0.45
    assert len({p.skin for p in params}) > 300
    assert min(p.rotation for p in params) < -6 and max(p.rotation for p in params) > 6


def test_heldout_seeds_are_outside_training() -> None:
    seeds = heldout_seeds(16)
    assert min(seeds) == HELDOUT_SEED_BASE >= TRAIN_SEEDS


@pytest.mark.parametrize("region", REGIONS)
def test_region_masks_line_up(region: str) -> None:
    seed = HELDOUT_SEED_BASE + 3
    m = region_mask(seed, region)
    assert m.dtype == bool and m.shape == (64, 64)
    assert 0.02 < m.mean() < 0.9
    face = region_mask(seed, "face")
    if region in ("eyes", "mouth"):
        assert (m & face).sum() > 0.5 * m.sum() * 0.6
    if region == "background":
        assert not (m & face).any()


def test_holes_are_binary_and_reasonable() -> None:
    for seed in range(20):
        r, f = rect_hole(seed, 64), free_hole(seed, 64)
        assert 0.04 < r.mean() < 0.25 and 0.02 < f.mean() < 0.5


def test_committed_sample_data_is_what_the_generator_writes(tmp_path: Path) -> None:
    counts = write_sample_data(tmp_path)
    assert counts["images"] == 16 and counts["photos"] == 3
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*") if p.is_file())
    assert written == committed
    for rel in written:
        if rel.suffix == ".png":
            a = np.asarray(Image.open(tmp_path / rel))
            b = np.asarray(Image.open(SAMPLE / rel))
            assert np.array_equal(a, b), rel
        else:
            assert (tmp_path / rel).read_text() == (SAMPLE / rel).read_text(), rel


@pytest.mark.parametrize("kind", ["reconstruct", "inpaint", "edit"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_sample_manifests_validate(kind: str, fmt: str) -> None:
    result = validate_manifest(str(SAMPLE / f"{kind}.{fmt}"), CATALOG, kind=kind, check_files=True, resolution=64)
    assert len(result.rejected) == 0, result.rejected
    assert len(result.rows) == {"reconstruct": 19, "inpaint": 32, "edit": 12}[kind]


def test_render_portrait_overrides_change_one_factor_and_reject_bad_ones() -> None:
    from i2score.demo.portraits import render_portrait

    neutral = render_portrait(1_000_014, 64, mouth="closed").astype(int)
    smile = render_portrait(1_000_014, 64, mouth="smile").astype(int)
    changed = np.abs(neutral - smile).sum(-1) > 30
    assert 0 < changed.mean() < 0.05  # the mouth only, not the person
    with pytest.raises(ValueError, match="unknown portrait factors"):
        render_portrait(1, 64, moustache=True)
    with pytest.raises(ValueError, match="mouth must be one of"):
        render_portrait(1, 64, mouth="frown")
