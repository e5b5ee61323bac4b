"""Augmentation planning (determinism, round-robin, partners, validation) and running (shapes,
per-op semantics, agreement with the edits, batch independence, order) on a small random
generator."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from typing import Any

import pytest
import torch

from i2score.data.latents import Latents
from i2score.method.applications import crossover, crossover_mask, morph, style_mix
from i2score.method.masks import free_hole, rect_hole
from i2score.runs.augment import Augmentation, plan_augmentations, run_augmentations
from i2score.runs.ops import AUGMENT_OPS

IDS = ["img-a", "img-b", "img-c", "img-d"]
STEPS: dict[str, Any] = {"steps_w": 3, "steps_n": 3}


@pytest.fixture(scope="module")
def data(small_G):
    """Cached codes (batch-1 per id) and their renders as the 'original' images."""
    with torch.no_grad():
        w = small_G.map(small_G.random_z(len(IDS), 21))
        codes = Latents(w, small_G.random_noise(len(IDS), 22))
        images = small_G.synthesize(codes.w, codes.noise).clamp(-1, 1)
    return {x: codes[i] for i, x in enumerate(IDS)}, {x: images[i] for i, x in enumerate(IDS)}


@pytest.fixture(scope="module")
def plan(small_G):
    # 4 ids x 5 variants over 5 ops: every op 4 times, crossover with both mask kinds.
    return plan_augmentations(IDS, 5, seed=3, num_ws=small_G.num_ws, jitter_sigma=0.2)


@pytest.fixture(scope="module")
def result(small_G, vgg, data, plan):
    latents, images = data
    return run_augmentations(plan, latents, images, small_G, vgg=vgg, **STEPS)


def _by_op(plan, result, op):
    return [(n, a) for n, a in enumerate(plan) if a.op == op]


# --------------------------------------------------------------------------------------------
# Planning


def test_plan_is_deterministic_and_appending_ids_keeps_earlier_plans() -> None:
    ids = [f"p{i}" for i in range(6)]
    a = plan_augmentations(ids, 4, seed=7, num_ws=14)
    assert a == plan_augmentations(ids, 4, seed=7, num_ws=14)
    assert a != plan_augmentations(ids, 4, seed=8, num_ws=14)
    new = ["q0", "q1", "q2"]
    longer = plan_augmentations(ids + new, 4, seed=7, num_ws=14)
    assert len(longer) == len(a) + 3 * 4
    changed = 0
    # The longer plan extends the shorter one: its first len(a) augmentations are compared.
    for old, cur in zip(a, longer, strict=False):
        assert (old.id, old.source_id, old.op, old.params) == (cur.id, cur.source_id, cur.op, cur.params)
        if old.partner_id != cur.partner_id:
            changed += 1
            assert cur.partner_id in new  # a partner can only move to an appended image
    n_partner_ops = sum(x.partner_id is not None for x in a)
    assert n_partner_ops > 0 and changed < n_partner_ops


def test_round_robin_ops_partners_and_params() -> None:
    ids = [f"p{i}" for i in range(7)]
    plan = plan_augmentations(ids, 5, seed=1, num_ws=8, jitter_sigma=0.3)
    assert [a.id for a in plan] == [f"{x}-aug{j:03d}" for x in ids for j in range(5)]
    for n, a in enumerate(plan):
        i, j = divmod(n, 5)
        assert a.source_id == ids[i] and a.op == AUGMENT_OPS[(i + j) % len(AUGMENT_OPS)]
        if a.op in ("style_mix", "crossover", "interpolate"):
            assert a.partner_id in ids and a.partner_id != a.source_id
        else:
            assert a.partner_id is None
    assert Counter(a.op for a in plan) == {op: 7 for op in AUGMENT_OPS}
    params = {op: [a.params for a in plan if a.op == op] for op in AUGMENT_OPS}
    assert all(2 <= p["k"] <= 6 and isinstance(p["k"], int) for p in params["style_mix"])
    assert len({p["k"] for p in params["style_mix"]}) > 1
    assert all(0.2 <= p["t"] <= 0.5 for p in params["interpolate"])
    assert all(p["sigma"] == 0.3 and 0 <= p["jitter_seed"] < 2**31 for p in params["jitter"])
    assert all(0 <= p["noise_seed"] < 2**31 for p in params["noise"])
    assert all(p["mask"] in ("rect", "free") and p["blur_sigma"] == 2.0 for p in params["crossover"])
    # A plan survives a JSON round trip unchanged (the flows store it).
    back = [Augmentation(**d) for d in json.loads(json.dumps([dataclasses.asdict(a) for a in plan]))]
    assert back == plan
    # Only the requested ops, and a single image is fine without a partner op.
    assert {a.op for a in plan_augmentations(ids, 3, ("noise",), num_ws=8)} == {"noise"}
    assert len(plan_augmentations(["solo"], 2, ("noise", "jitter"), num_ws=8)) == 2
    # Tiny generators still get a valid k (both images keep at least one row).
    assert all(1 <= a.params["k"] <= 1 for a in plan_augmentations(ids, 3, ("style_mix",), num_ws=2))


def test_partner_is_uniform_over_the_other_images() -> None:
    ids = [f"p{i}" for i in range(5)]
    plan = plan_augmentations(ids, 400, ("interpolate",), seed=2, num_ws=8)
    counts = Counter(a.partner_id for a in plan if a.source_id == "p0")
    assert set(counts) == set(ids[1:])
    assert all(70 <= c <= 130 for c in counts.values()), counts  # expected 100 each


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ops": ("noise", "blur")}, r"unknown augmentation op 'blur'; allowed: style_mix, crossover"),
    ({"ops": ()}, "at least one op"),
    ({"n_per_image": 0}, "n_per_image must be"),
    ({"ids": ["solo"]}, "need a partner image"),
    ({"ids": ["solo"], "ops": ("noise", "crossover")}, r"\['crossover'\] need a partner"),
    ({"ids": ["a", "b", "a"]}, r"ids must be unique; repeated: \['a'\]"),
    ({"seed": -1}, "seed must be"),
    ({"jitter_sigma": float("nan")}, "jitter_sigma"),
])
def test_plan_rejects_bad_inputs(kwargs, match) -> None:
    args = {"ids": ["a", "b"], "n_per_image": 2, "ops": AUGMENT_OPS, "num_ws": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        plan_augmentations(args.pop("ids"), args.pop("n_per_image"), args.pop("ops"), **args)


# --------------------------------------------------------------------------------------------
# Running


def test_run_shapes_and_metrics(small_G, plan, result) -> None:
    n = len(plan)
    assert result.augmentations == plan
    assert result.images.shape == (n, 3, 32, 32) and torch.isfinite(result.images).all()
    assert result.latents.w.shape == (n, small_G.num_ws, small_G.w_dim)
    assert [tuple(x.shape) for x in result.latents.noise] == [(n, *s) for s in small_G.noise_shapes]
    assert len(result.metrics) == n
    json.dumps(result.metrics)  # JSON-able
    for a, m in zip(plan, result.metrics, strict=True):
        assert "w_rms_change" in m
        if a.op == "crossover":
            assert {"psnr_image_region", "psnr_base_region"} <= set(m) and m["steps_w"] == 3
    # Every augmentation is a new image, different from its source's render.
    for k, a in enumerate(plan):
        if a.op != "noise":
            assert result.metrics[k]["w_rms_change"] > 0, a


def test_noise_keeps_w_and_redraws_noise(small_G, data, plan, result) -> None:
    latents, _ = data
    for n, a in _by_op(plan, result, "noise"):
        src = latents[a.source_id]
        assert torch.equal(result.latents.w[n], src.w[0])
        expected = small_G.random_noise(1, [a.params["noise_seed"]])
        for got, old, new in zip(result.latents.noise, src.noise, expected, strict=True):
            assert torch.equal(got[n:n + 1], new) and not torch.equal(got[n:n + 1], old)
        assert (result.images[n] - small_G.synthesize(src.w, src.noise)[0]).abs().max() > 1e-4


def test_jitter_moves_w_by_sigma_and_keeps_noise(data, plan, result) -> None:
    latents, _ = data
    rows = _by_op(plan, result, "jitter")
    assert rows
    for n, a in rows:
        src = latents[a.source_id]
        delta = result.latents.w[n] - src.w[0]
        assert abs(delta.std().item() - a.params["sigma"]) < 0.2 * a.params["sigma"]
        assert abs(delta.mean().item()) < 0.2 * a.params["sigma"]
        assert all(torch.equal(got[n:n + 1], old) for got, old in zip(result.latents.noise, src.noise, strict=True))
    # Different seeds, different steps.
    assert not torch.equal(result.latents.w[rows[0][0]] - latents[rows[0][1].source_id].w[0],
                           result.latents.w[rows[1][0]] - latents[rows[1][1].source_id].w[0])


def test_partner_ops_agree_with_the_edits(small_G, vgg, data, plan, result) -> None:
    latents, images = data
    for n, a in _by_op(plan, result, "interpolate"):
        ref = morph(latents[a.source_id], latents[a.partner_id], a.params["t"], small_G,
                    noise_policy=a.params["noise_policy"], noise_seed=a.params["noise_seed"])
        assert torch.equal(result.images[n], ref.images[0]) and torch.equal(result.latents.w[n], ref.latents.w[0])
    for n, a in _by_op(plan, result, "style_mix"):
        ref = style_mix(latents[a.source_id], latents[a.partner_id], a.params["k"], small_G,
                        noise_policy=a.params["noise_policy"], noise_seed=a.params["noise_seed"])
        assert torch.equal(result.images[n], ref.images[0]) and torch.equal(result.latents.w[n], ref.latents.w[0])
    kinds = set()
    for n, a in _by_op(plan, result, "crossover"):
        kinds.add(a.params["mask"])
        hole = (rect_hole if a.params["mask"] == "rect" else free_hole)(a.params["mask_seed"], 32)
        mask = crossover_mask(a.params["mask"], a.params["mask_seed"], 32)
        assert mask.shape == (1, 1, 32, 32) and torch.equal(mask[0, 0].bool(), torch.from_numpy(hole))
        # The partner's pixels inside the mask, on the source, starting from the source's code.
        ref = crossover(images[a.partner_id][None], images[a.source_id][None], mask, latents[a.source_id],
                        small_G, blur_sigma=2.0, vgg=vgg, **STEPS)
        torch.testing.assert_close(result.latents.w[n], ref.latents.w[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.images[n], ref.images[0], rtol=1e-5, atol=1e-5)
        assert result.metrics[n]["psnr_image_region"] == pytest.approx(ref.metrics[0]["psnr_image_region"], abs=1e-3)
    assert kinds == {"rect", "free"}


def test_all_at_once_equals_one_by_one_and_keeps_the_input_order(small_G, vgg, data, plan, result) -> None:
    latents, images = data
    shuffled = list(plan)
    random.Random(0).shuffle(shuffled)
    mixed = run_augmentations(shuffled, latents, images, small_G, vgg=vgg, **STEPS)
    assert [a.id for a in mixed.augmentations] == [a.id for a in shuffled]
    index = {a.id: n for n, a in enumerate(plan)}
    for m, a in enumerate(shuffled):
        alone = run_augmentations([a], latents, images, small_G, vgg=vgg, **STEPS)
        n = index[a.id]
        for batched in ((result, n), (mixed, m)):
            got, row = batched
            if a.op == "crossover":
                # Optimised edits: rows are independent up to float rounding (as in test_edits).
                torch.testing.assert_close(got.latents.w[row], alone.latents.w[0], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(got.images[row], alone.images[0], rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(got.images[row], alone.images[0]), a
                assert torch.equal(got.latents.w[row], alone.latents.w[0]), a
                assert all(torch.equal(x[row], y[0])
                           for x, y in zip(got.latents.noise, alone.latents.noise, strict=True)), a
            assert got.metrics[row]["w_rms_change"] == pytest.approx(alone.metrics[0]["w_rms_change"], abs=1e-6)
    # Chunked batches give the same rows too.
    forward = [a for a in shuffled if a.op != "crossover"]
    chunked = run_augmentations(forward, latents, images, small_G, max_batch=2)
    whole = run_augmentations(forward, latents, images, small_G)
    assert torch.equal(chunked.images, whole.images) and torch.equal(chunked.latents.w, whole.latents.w)


def test_run_validates_inputs(small_G, data) -> None:
    latents, images = data
    noise_only = plan_augmentations(IDS, 1, ("noise", "interpolate"), num_ws=small_G.num_ws)
    # Forward ops do not need the original images.
    assert len(run_augmentations(noise_only, latents, {}, small_G).metrics) == len(IDS)
    empty = run_augmentations([], latents, images, small_G)
    assert empty.images.shape == (0, 3, 32, 32) and len(empty.latents) == 0
    with pytest.raises(ValueError, match="no cached latents for \\['img-a'\\]"):
        run_augmentations(noise_only, {k: v for k, v in latents.items() if k != "img-a"}, images, small_G)
    cross = plan_augmentations(IDS[:2], 1, ("crossover",), num_ws=small_G.num_ws)
    with pytest.raises(ValueError, match="crossover needs the original images"):
        run_augmentations(cross, latents, {}, small_G, **STEPS)
    two = dict(latents, **{"img-a": Latents.stack([latents["img-a"], latents["img-b"]])})
    with pytest.raises(ValueError, match="latents for a batch of 1"):
        run_augmentations(noise_only, two, images, small_G)
    bad = Augmentation("x-aug000", "img-a", "blur", None, {})
    with pytest.raises(ValueError, match="unknown augmentation op 'blur'"):
        run_augmentations([bad], latents, images, small_G)
    no_partner = Augmentation("x-aug000", "img-a", "style_mix", None, {"k": 2})
    with pytest.raises(ValueError, match="needs a partner_id"):
        run_augmentations([no_partner], latents, images, small_G)
