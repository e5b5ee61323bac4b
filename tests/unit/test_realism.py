"""The realism score (Kynkäänniemi et al. 2019) and the augmentation gate built on it."""

from __future__ import annotations

import math

import pytest
import torch

from i2score.demo.portraits import render_portrait
from i2score.features.realism import build_reference, realism_features, realism_scores
from i2score.runs.realism_gate import BELOW_MIN_REALISM, gate_rows


def _portrait(seed: int) -> torch.Tensor:
    return torch.from_numpy(render_portrait(seed, 64)).permute(2, 0, 1).float() / 127.5 - 1.0


def _line_reference() -> torch.Tensor:
    # Four references one apart on the x axis: with k=1 every radius is 1 (all kept by the median rule).
    return torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])


def test_scores_follow_the_definition_on_constructed_features():
    ref = build_reference(_line_reference(), k=1)
    assert ref.radii.tolist() == [1.0, 1.0, 1.0, 1.0] and ref.kept.all()
    # Straight above reference 0: its distance d is the smallest, so the score is 1 / d.
    queries = torch.tensor([[0.0, 0.5], [0.0, 2.0], [0.0, 4.0]])
    assert realism_scores(ref, queries).tolist() == pytest.approx([2.0, 0.5, 0.25], rel=1e-12)


def test_median_pruning_leaves_out_references_with_large_radii():
    # Reference 3 is far from the others: its 1-NN radius (10) is above the median and it is pruned,
    # so a query on top of it is scored against the kept ones only.
    ref = build_reference(torch.tensor([[0.0], [1.0], [2.0], [12.0]]), k=1)
    assert ref.kept.tolist() == [True, True, True, False]
    assert realism_scores(ref, torch.tensor([[12.0]])).item() == pytest.approx(1.0 / 10.0)


def test_leave_one_out_excludes_the_reference_itself():
    ref = build_reference(_line_reference(), k=1)
    # Reference 0 against the others: nearest kept is reference 1 at distance 1, radius 1.
    s = realism_scores(ref, ref.features[:1], exclude=[0])
    assert s.item() == pytest.approx(1.0)
    assert realism_scores(ref, ref.features[:1]).item() > 1e9  # an exact copy: the distance floor
    with pytest.raises(ValueError, match="not a reference index"):
        realism_scores(ref, ref.features[:1], exclude=[4])


def test_too_few_references_is_an_error_that_names_the_count():
    with pytest.raises(ValueError, match="k=3 needs at least 4 reference images .*got 3"):
        build_reference(torch.zeros(3, 8), k=3)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        build_reference(torch.zeros(3, 8), k=0)


def test_the_gate_drops_exactly_the_rows_below_the_threshold():
    ref = build_reference(_line_reference(), k=1)
    # Scores 2, 1, 0.5, 0.25 (distances 0.5, 1, 2, 4 above reference 0), then gate at 0.5:
    # the row at exactly 0.5 stays, only the 0.25 one goes.
    queries = torch.tensor([[0.0, 0.5], [0.0, 1.0], [0.0, 2.0], [0.0, 4.0]])
    ids = ["a", "b", "c", "d"]
    scores = dict(zip(ids, realism_scores(ref, queries).tolist(), strict=True))
    rows = [(i, "jitter") for i in ids]
    dropped = gate_rows(scores, rows, 0.5)
    assert [d["id"] for d in dropped] == ["d"]
    assert dropped[0]["reason_code"] == BELOW_MIN_REALISM and dropped[0]["realism"] == pytest.approx(0.25)
    assert [d["id"] for d in gate_rows(scores, rows, 1.5)] == ["b", "c", "d"]
    assert gate_rows(scores, rows, 0.0) == []
    with pytest.raises(ValueError, match="no realism score for augmented rows \\['e'\\]"):
        gate_rows(scores, [*rows, ("e", "noise")], 0.5)


def test_features_and_scores_are_deterministic_and_batch_independent(vgg):
    images = torch.stack([_portrait(s) for s in (1_000_100, 1_000_101, 1_000_102)])
    one = realism_features(images, vgg, batch_size=1, size=64)
    three = realism_features(images, vgg, batch_size=3, size=64)
    assert one.dtype == torch.float64 and one.shape == (3, 512)
    assert torch.equal(one, three)
    assert torch.equal(one, realism_features(images, vgg, batch_size=2, size=64))
    ref = build_reference(torch.cat([one, one.flip(1)]), k=2)
    together = realism_scores(ref, one)
    alone = torch.cat([realism_scores(ref, one[i:i + 1]) for i in range(3)])
    assert torch.equal(together, alone)


def test_an_original_scores_real_against_its_near_copies_and_noise_does_not(vgg):
    g = torch.Generator().manual_seed(0)
    original = _portrait(1_000_200)
    # k + 1 = 4 near copies (the portrait shifted by one pixel, each way) make a tight cluster
    # around it whose radii the median rule keeps; the other portraits (larger radii) are pruned.
    near = [original.roll(shift, dims=dim) for shift in (-1, 1) for dim in (1, 2)]
    others = [_portrait(1_000_201 + i) for i in range(4)]
    noise = torch.rand(original.shape, generator=g) * 2 - 1
    feats = realism_features(torch.stack([*near, *others, original, noise]), vgg)  # the paper's 224 x 224
    ref = build_reference(feats[:8], k=3)
    assert ref.kept[:4].all()
    s_original, s_noise = realism_scores(ref, feats[8:]).tolist()
    assert 0.9 <= s_original < 1e6, s_original
    assert s_noise < 0.4 and s_noise < s_original / 3, (s_noise, s_original)
    assert math.isfinite(s_original)


def test_the_job_checks_the_gate_settings():
    from i2score.runs.config import DEFAULT_MIN_REALISM, JobConfig
    from i2score.runs.plan import job_identity

    base = JobConfig("augment", "/data/m.csv", "/root")
    assert base.min_realism == DEFAULT_MIN_REALISM and base.realism_k == 3
    # Defaults stay out of the run id (earlier runs keep theirs); a threshold enters it.
    assert "min_realism" not in job_identity(base)
    assert job_identity(JobConfig("augment", "/data/m.csv", "/root", min_realism=0.5))["min_realism"] == 0.5
    with pytest.raises(ValueError, match="min_realism must be a finite number >= 0"):
        JobConfig("augment", "/data/m.csv", "/root", min_realism=-0.1)
    with pytest.raises(ValueError, match="min_realism must be a finite number >= 0"):
        JobConfig("augment", "/data/m.csv", "/root", min_realism=float("nan"))
    with pytest.raises(ValueError, match="realism_k must be an integer >= 1"):
        JobConfig("augment", "/data/m.csv", "/root", realism_k=0)
    with pytest.raises(ValueError, match="belong to augment jobs, not to a reconstruct job"):
        JobConfig("reconstruct", "/data/m.csv", "/root", min_realism=0.5)
