"""Dataset augmentation from cached embeddings: new training images from codes already fitted.

Each augmentation starts from the **cached** :class:`~i2score.data.latents.Latents` of one source
image (and, for some ops, of a partner image) and renders a new image with the generator; no
image is re-embedded. The ops, and why each adds useful variety to a data set:

* ``style_mix``: the coarse layers (pose, face shape) of the source with the fine layers
  (colour, texture, lighting) of a partner. New appearance on a known geometry, so labels tied
  to geometry (landmarks, identity-free attributes) mostly carry over.
* ``crossover``: a random region (rectangle or brush strokes) of the partner's pixels pasted on
  the source and blended by the paper's crossover (Alg. 3). Local, realistic occlusions and
  part swaps, seam-free unlike a cut-and-paste.
* ``noise``: the source's ``w`` with fresh stochastic noise maps: the same image with new hair
  strands, skin pores and background grain. The cheapest "same content, new pixels" variant.
* ``jitter``: ``w + sigma * eps``: a small random step in W+; nearby codes render nearby,
  plausible images, so this is a semantic (not pixel-space) perturbation of the whole image.
* ``interpolate``: ``(1 - t)·source + t·partner`` with ``t`` in [0.2, 0.5]: in-between images that
  still resemble the source, filling the gaps between data points.

:func:`plan_augmentations` draws every random choice up front into JSON-able
:class:`Augmentation` records (so a plan can be stored, inspected and redone exactly) and
:func:`run_augmentations` renders a plan, batched by op. This module is a plain library: no
Prefect (or other orchestration) import; the flows wrap it.

Images are ``[N, 3, R, R]`` in [-1, 1] (nominal); masks ``[1, 1, R, R]`` in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from i2score.method.applications.edits import (
    _check_batch,
    _images,
    _meta,
    _render,
    crossover,
    morph,
    style_mix,
)
from i2score.features import VGG16Features, load_vgg16
from i2score.generator.network import StyleGAN2
from i2score.data.latents import Latents
from i2score.demo.sample_data import free_hole, rect_hole

AUGMENT_OPS: tuple[str, ...] = ("style_mix", "crossover", "noise", "jitter", "interpolate")
"""Every augmentation op, in the default round-robin order."""

PARTNER_OPS: frozenset[str] = frozenset({"style_mix", "crossover", "interpolate"})
"""Ops that combine the source with a second (partner) image."""

MASK_KINDS: tuple[str, ...] = ("rect", "free")
"""Crossover mask generators: :func:`~i2score.demo.sample_data.rect_hole`, :func:`~i2score.demo.sample_data.free_hole`."""

CROSSOVER_BLUR_SIGMA = 2.0
INTERPOLATE_RANGE = (0.2, 0.5)
"""``t`` of an interpolation: far enough from the source to be new, close enough (< 0.5) that
the source still dominates, so the augmented image is a variant of *its* source."""

# Mixed into every per-augmentation seed so these streams never coincide with another module's
# np.random.default_rng([seed, ...]) streams that happen to use the same leading numbers.
_PLAN_TAG = 0xA06E
_SEED_BOUND = 2**31


@dataclass(frozen=True)
class Augmentation:
    """One planned augmentation: everything needed to redo it exactly.

    Attributes:
        id: ``f"{source_id}-aug{j:03d}"``, ``j`` = 0..n_per_image-1.
        source_id: the image whose cached code is edited.
        op: one of :data:`AUGMENT_OPS`.
        partner_id: the other image of ``style_mix``, ``crossover`` and ``interpolate``;
            None for ``noise`` and ``jitter``.
        params: JSON-able parameters: ``style_mix {"k"}``, ``crossover {"mask_seed", "mask",
            "blur_sigma"}``, ``noise {"noise_seed"}``, ``jitter {"sigma", "jitter_seed"}``,
            ``interpolate {"t"}``.
    """

    id: str
    source_id: str
    op: str
    partner_id: str | None
    params: dict[str, Any]


@dataclass
class AugmentResult:
    """Output of :func:`run_augmentations`, row ``n`` belonging to ``augmentations[n]``.

    Attributes:
        augmentations: the plan that was run, in input order.
        images: renders ``[N, 3, R, R]`` in [-1, 1] (nominal).
        latents: the ``N`` augmented codes (``w [N, L, w_dim]``, noise ``[N, 1, r, r]`` each).
        metrics: one JSON-able dict per augmentation: ``w_rms_change`` (RMS of ``w - w_source``)
            for every op, plus the edit's own metrics (``k``; ``t``; crossover
            ``psnr_image_region``, ``psnr_base_region`` in dB, ``steps_w``, ``steps_n``).
    """

    augmentations: list[Augmentation]
    images: Tensor
    latents: Latents
    metrics: list[dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Planning


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 (wrapping arithmetic): a cheap, well-mixed hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _draw_partner(rng: np.random.Generator, source: int, n: int) -> int:
    """Index of a partner, uniform over ``0..n-1`` except ``source``.

    Rendezvous (highest-random-weight) hashing: every candidate position gets an independent
    score from one 64-bit key, the best score wins. The winner is uniform, and appending ids
    can only change the partner to one of the *new* ids (when one of them out-scores all the
    old ones), whereas ``rng.integers(n - 1)`` would reshuffle nearly every partner.
    """
    key = rng.integers(0, 2**64, dtype=np.uint64)
    with np.errstate(over="ignore"):
        scores = _mix64(key + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    scores[source] = 0
    return int(np.argmax(scores))


def style_mix_range(num_ws: int) -> tuple[int, int]:
    """Inclusive range of the style-mix layer ``k``: ``[2, num_ws - 2]``, so both images keep
    at least two W+ rows; for ``num_ws`` 2 or 3 (4x4, 8x8 generators) ``[1, 1]`` and ``[2, 2]``."""
    lo = min(2, num_ws - 1)
    return lo, max(num_ws - 2, lo)


def plan_augmentations(ids: Sequence[str], n_per_image: int, ops: Sequence[str] = AUGMENT_OPS, *, seed: int = 0,
                       num_ws: int, jitter_sigma: float = 0.1) -> list[Augmentation]:
    """Plan ``n_per_image`` augmentations of every image in ``ids``, all random draws included.

    Deterministic: a pure function of the arguments. Variant ``j`` of ``ids[i]`` uses op
    ``ops[(i + j) % len(ops)]`` (round-robin, so every op is used and neighbouring images get
    different ops) and draws its parameters from its own ``np.random.default_rng([seed, i, j,
    tag])``, so appending ids leaves the earlier plans' ops and parameters unchanged; a partner
    can change only to one of the appended ids (see :func:`_draw_partner`).

    Args:
        ids: unique image ids (their cached latents are the inputs of :func:`run_augmentations`).
        n_per_image: augmentations per image, >= 1.
        ops: the ops to cycle through, each in :data:`AUGMENT_OPS`.
        seed: non-negative plan seed.
        num_ws: the generator's ``L`` (W+ rows), which bounds the style-mix layer ``k``.
        jitter_sigma: standard deviation of the W+ jitter (the W+ rows of a fitted code have
            a per-element spread of roughly 0.5-1, so 0.1 is a small step).

    Returns:
        ``len(ids) * n_per_image`` augmentations, grouped by source in ``ids`` order.

    Raises:
        ValueError: bad ``n_per_image``, ``ops``, ``seed``, ``num_ws`` or ``jitter_sigma``,
            duplicate ids, or a partner op with fewer than two images.
    """
    ids = list(ids)
    ops = tuple(ops)
    if isinstance(n_per_image, bool) or not isinstance(n_per_image, int | np.integer) or n_per_image < 1:
        raise ValueError(f"n_per_image must be an integer >= 1, got {n_per_image!r}")
    if not ops:
        raise ValueError(f"ops must name at least one op of {AUGMENT_OPS}")
    for op in ops:
        if op not in AUGMENT_OPS:
            raise ValueError(f"unknown augmentation op {op!r}; allowed: {', '.join(AUGMENT_OPS)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if num_ws < 2:
        raise ValueError(f"num_ws must be >= 2, got {num_ws}")
    if not (math.isfinite(jitter_sigma) and jitter_sigma >= 0):
        raise ValueError(f"jitter_sigma must be finite and >= 0, got {jitter_sigma}")
    if len(set(ids)) != len(ids):
        dupes = sorted({x for x in ids if ids.count(x) > 1})
        raise ValueError(f"ids must be unique; repeated: {dupes[:10]}")
    if not ids:
        return []
    partner_ops = [op for op in ops if op in PARTNER_OPS]
    if partner_ops and len(ids) < 2:
        raise ValueError(f"ops {partner_ops} need a partner image, but only {len(ids)} image was given; "
                         "pass at least two ids or only ops without a partner (noise, jitter)")

    k_lo, k_hi = style_mix_range(num_ws)
    plan: list[Augmentation] = []
    for i, source in enumerate(ids):
        for j in range(n_per_image):
            op = ops[(i + j) % len(ops)]
            rng = np.random.default_rng([int(seed), i, j, _PLAN_TAG])
            partner = ids[_draw_partner(rng, i, len(ids))] if op in PARTNER_OPS else None
            params: dict[str, Any]
            if op == "style_mix":
                params = {"k": int(rng.integers(k_lo, k_hi + 1))}
            elif op == "crossover":
                params = {"mask_seed": int(rng.integers(0, _SEED_BOUND)), "mask": MASK_KINDS[int(rng.integers(2))],
                          "blur_sigma": CROSSOVER_BLUR_SIGMA}
            elif op == "noise":
                params = {"noise_seed": int(rng.integers(0, _SEED_BOUND))}
            elif op == "jitter":
                params = {"sigma": float(jitter_sigma), "jitter_seed": int(rng.integers(0, _SEED_BOUND))}
            else:  # interpolate
                params = {"t": float(rng.uniform(*INTERPOLATE_RANGE))}
            plan.append(Augmentation(f"{source}-aug{j:03d}", source, op, partner, params))
    return plan


# --------------------------------------------------------------------------------------------
# Running


def crossover_mask(kind: str, mask_seed: int, resolution: int) -> Tensor:
    """The crossover mask of a plan: ``float [1, 1, R, R]`` in {0, 1}, white = from the partner."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown crossover mask {kind!r}; allowed: {', '.join(MASK_KINDS)}")
    m = (rect_hole if kind == "rect" else free_hole)(int(mask_seed), resolution)
    return torch.from_numpy(m.astype(np.float32))[None, None]


def _group_key(aug: Augmentation) -> tuple[Any, ...]:
    # Only parameters the edit takes as one scalar for the whole batch split a group; per-row
    # parameters (t, seeds, sigma, masks) are batched.
    if aug.op == "style_mix":
        return (aug.op, int(aug.params["k"]))
    if aug.op == "crossover":
        return (aug.op, float(aug.params.get("blur_sigma", CROSSOVER_BLUR_SIGMA)))
    return (aug.op,)


def _validate(augs: Sequence[Augmentation], latents: Mapping[str, Latents], images: Mapping[str, Tensor]) -> None:
    missing_lat: set[str] = set()
    missing_img: set[str] = set()
    for a in augs:
        if a.op not in AUGMENT_OPS:
            raise ValueError(f"{a.id}: unknown augmentation op {a.op!r}; allowed: {', '.join(AUGMENT_OPS)}")
        if a.op in PARTNER_OPS and a.partner_id is None:
            raise ValueError(f"{a.id}: op {a.op!r} needs a partner_id")
        needed = [a.source_id] + ([a.partner_id] if a.op in PARTNER_OPS and a.partner_id is not None else [])
        missing_lat.update(x for x in needed if x not in latents)
        if a.op == "crossover":
            missing_img.update(x for x in needed if x not in images)
    if missing_lat:
        raise ValueError(f"no cached latents for {sorted(missing_lat)[:10]} ({len(missing_lat)} ids)")
    if missing_img:
        raise ValueError(f"crossover needs the original images of {sorted(missing_img)[:10]} "
                         f"({len(missing_img)} ids)")
    used = {a.source_id for a in augs} | {a.partner_id for a in augs if a.op in PARTNER_OPS}
    for x in sorted(u for u in used if u is not None):
        _check_batch(f"latents[{x!r}]", latents[x], 1)


def _stack_latents(ids: Sequence[str], latents: Mapping[str, Latents], G: StyleGAN2) -> Latents:
    return Latents.stack([latents[x] for x in ids]).to(G.device)


def _stack_images(ids: Sequence[str], images: Mapping[str, Tensor], G: StyleGAN2) -> Tensor:
    return _images(torch.stack([images[x] for x in ids]), G, "images")


def _run_group(group: Sequence[Augmentation], latents: Mapping[str, Latents], images: Mapping[str, Tensor],
               G: StyleGAN2, *, steps_w: int, steps_n: int, vgg: VGG16Features | None
               ) -> tuple[Latents, Tensor, list[dict[str, Any]]]:
    """One batch of augmentations sharing op (and scalar parameters): (latents, images, metrics)."""
    op = group[0].op
    src = _stack_latents([a.source_id for a in group], latents, G)
    # _validate guarantees a partner for partner ops; "" never reaches a lookup otherwise.
    partner_ids = [a.partner_id or "" for a in group]
    partner = _stack_latents(partner_ids, latents, G) if op in PARTNER_OPS else src
    if op == "style_mix":
        res = style_mix(src, partner, int(group[0].params["k"]), G)
        lat, out, metrics = res.latents, res.images, res.metrics
    elif op == "interpolate":
        t = torch.tensor([float(a.params["t"]) for a in group])
        res = morph(src, partner, t, G)
        lat, out, metrics = res.latents, res.images, res.metrics
    elif op == "crossover":
        masks = torch.cat([crossover_mask(a.params["mask"], a.params["mask_seed"], G.resolution) for a in group])
        res = crossover(_stack_images(partner_ids, images, G),
                        _stack_images([a.source_id for a in group], images, G), masks, src, G,
                        blur_sigma=float(group[0].params.get("blur_sigma", CROSSOVER_BLUR_SIGMA)),
                        steps_w=steps_w, steps_n=steps_n, vgg=vgg)
        lat, out, metrics = res.latents, res.images, res.metrics
    elif op == "noise":
        # One seed per row (not one generator for the batch) so a row's noise does not
        # depend on its batch-mates.
        noise = G.random_noise(len(group), [int(a.params["noise_seed"]) for a in group])
        lat = Latents(src.w, noise)
        out, metrics = _render(G, lat.w, lat.noise), [{} for _ in group]
    elif op == "jitter":
        # Drawn on CPU: the same eps on every device.
        eps = torch.cat([torch.randn(1, *src.w.shape[1:], generator=torch.Generator().manual_seed(
            int(a.params["jitter_seed"]))) for a in group]).to(G.device)
        sigma = torch.tensor([float(a.params["sigma"]) for a in group], device=G.device)[:, None, None]
        lat = Latents(src.w + sigma * eps, src.noise)
        out, metrics = _render(G, lat.w, lat.noise), [{} for _ in group]
    else:  # pragma: no cover - _validate rejects unknown ops
        raise ValueError(op)
    change = (lat.w.detach() - src.w).square().flatten(1).mean(1).sqrt().cpu()
    metrics = [{**m, "w_rms_change": float(change[b])} for b, m in enumerate(metrics)]
    return Latents(lat.w.detach(), [n.detach() for n in lat.noise]), out.detach(), metrics


def run_augmentations(augs: Sequence[Augmentation], latents: Mapping[str, Latents], images: Mapping[str, Tensor],
                      G: StyleGAN2, *, steps_w: int = 1000, steps_n: int = 1000, vgg: VGG16Features | None = None,
                      max_batch: int | None = None) -> AugmentResult:
    """Render a plan from cached codes, batched by op, returned in the plan's order.

    Augmentations are grouped by op (and by the parameters an edit takes as one scalar: the
    style-mix ``k``, the crossover ``blur_sigma``); each group runs as one batch (or chunks of
    ``max_batch``). Rows are independent, so the result does not depend on the grouping: on
    CPU the forward ops are bit-identical to running each augmentation alone, and crossover
    (an optimisation) agrees to float rounding.

    Args:
        augs: the plan (from :func:`plan_augmentations`, possibly a subset or loaded from JSON).
        latents: ``id -> batch-1 Latents`` (cached embedding) for every source and partner.
        images: ``id -> [3, R, R]`` in [-1, 1], the original images; only crossover's sources and
            partners are read (may be empty otherwise).
        G: the generator the codes were fitted with.
        steps_w, steps_n: crossover's optimisation steps (W+ stage, noise stage).
        vgg: VGG16 features for crossover's perceptual loss (loaded once if None and needed).
        max_batch: largest batch run at once (None = a whole group), to bound memory.

    Returns:
        :class:`AugmentResult` with ``N = len(augs)`` rows on ``G.device``.

    Raises:
        ValueError: unknown op, missing partner, latents or (crossover) images, or latents that
            are not batch-1.
    """
    augs = list(augs)
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
    _validate(augs, latents, images)
    meta = _meta(G, "augment", ids=[a.id for a in augs], steps_w=steps_w, steps_n=steps_n)
    if not augs:
        r = G.resolution
        empty = Latents(torch.zeros(0, G.num_ws, G.w_dim, device=G.device),
                        [torch.zeros(0, *s, device=G.device) for s in G.noise_shapes], meta)
        return AugmentResult([], torch.zeros(0, 3, r, r, device=G.device), empty, [])
    if vgg is None and any(a.op == "crossover" for a in augs):
        vgg = load_vgg16(device=G.device)

    groups: dict[tuple[Any, ...], list[int]] = {}
    for n, a in enumerate(augs):
        groups.setdefault(_group_key(a), []).append(n)
    order: list[int] = []
    lats: list[Latents] = []
    outs: list[Tensor] = []
    metrics: list[dict[str, Any]] = []
    for rows in groups.values():
        size = max_batch or len(rows)
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            lat, out, met = _run_group([augs[n] for n in chunk], latents, images, G, steps_w=steps_w,
                                       steps_n=steps_n, vgg=vgg)
            order += chunk
            lats.append(lat)
            outs.append(out)
            metrics += met
    # order[m] is the input row of output row m; invert it to restore the plan's order.
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    stacked = Latents.stack(lats)[inverse.to(G.device)]
    return AugmentResult(augs, torch.cat(outs)[inverse.to(G.device)], Latents(stacked.w, stacked.noise, meta),
                         [metrics[int(k)] for k in inverse])
