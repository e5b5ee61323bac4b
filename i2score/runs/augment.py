"""Dataset augmentation from cached embeddings: plan which augmentation each image gets, then
render a plan in batches. New training images come from codes already fitted; no image is
re-embedded. The ops (and why each adds useful variety) are declared in
:data:`i2score.runs.ops.AUGMENTATIONS`.

:func:`plan_augmentations` draws every random choice up front into JSON-able
:class:`Augmentation` records (so a plan can be stored, inspected and redone exactly) and
:func:`run_augmentations` renders a plan, batched by op.

Images are ``[N, 3, R, R]`` in [-1, 1] (nominal); masks ``[1, 1, R, R]`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from i2score.data.latents import Latents
from i2score.features import VGG16Features, load_vgg16
from i2score.generator.network import StyleGAN2
from i2score.method.applications.common import algorithm_meta, as_images, check_batch
from i2score.method.blocks import StepCallback
from i2score.runs.ops import AUGMENT_OPS, AUGMENTATIONS, AugmentBatch, DrawContext

# Mixed into every per-augmentation seed so these streams never coincide with another module's
# np.random.default_rng([seed, ...]) streams that happen to use the same leading numbers.
_PLAN_TAG = 0xA06E


@dataclass(frozen=True)
class Augmentation:
    """One planned augmentation: everything needed to redo it exactly.

    Attributes:
        id: ``f"{source_id}-aug{j:03d}"``, ``j`` = 0..n_per_image-1.
        source_id: the image whose cached code is edited.
        op: one of :data:`~i2score.runs.ops.AUGMENT_OPS`.
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
        ops: the ops to cycle through, each in :data:`~i2score.runs.ops.AUGMENT_OPS`.
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
    # The jitter op's declared range (a bad value would otherwise surface only in the renders).
    AUGMENTATIONS["jitter"].params["sigma"].check("jitter_sigma", jitter_sigma)
    if len(set(ids)) != len(ids):
        dupes = sorted({x for x in ids if ids.count(x) > 1})
        raise ValueError(f"ids must be unique; repeated: {dupes[:10]}")
    if not ids:
        return []
    partner_ops = [op for op in ops if AUGMENTATIONS[op].partner]
    if partner_ops and len(ids) < 2:
        alone = ", ".join(o for o in AUGMENT_OPS if not AUGMENTATIONS[o].partner)
        raise ValueError(f"ops {partner_ops} need a partner image, but only {len(ids)} image was given; "
                         f"pass at least two ids or only ops without a partner ({alone})")

    draw_context = DrawContext(num_ws=num_ws, jitter_sigma=jitter_sigma)
    plan: list[Augmentation] = []
    for i, source in enumerate(ids):
        for j in range(n_per_image):
            op = ops[(i + j) % len(ops)]
            rng = np.random.default_rng([int(seed), i, j, _PLAN_TAG])
            aug = AUGMENTATIONS[op]
            partner = ids[_draw_partner(rng, i, len(ids))] if aug.partner else None
            params = aug.draw(rng, draw_context)
            plan.append(Augmentation(f"{source}-aug{j:03d}", source, op, partner, params))
    return plan


# --------------------------------------------------------------------------------------------
# Running


def _batch_key(aug: Augmentation) -> tuple[Any, ...]:
    # Only parameters the edit takes as one value for the whole batch split a group; per-row
    # parameters (t, seeds, sigma, masks) are batched.
    op = AUGMENTATIONS[aug.op]
    return (aug.op, *(aug.params.get(p, op.params[p].default) for p in op.batch_params))


def _validate(augs: Sequence[Augmentation], latents: Mapping[str, Latents], images: Mapping[str, Tensor]) -> None:
    missing_lat: set[str] = set()
    missing_img: set[str] = set()
    for a in augs:
        if a.op not in AUGMENTATIONS:
            raise ValueError(f"{a.id}: unknown augmentation op {a.op!r}; allowed: {', '.join(AUGMENT_OPS)}")
        op = AUGMENTATIONS[a.op]
        if op.partner and a.partner_id is None:
            raise ValueError(f"{a.id}: op {a.op!r} needs a partner_id")
        needed = [a.source_id] + ([a.partner_id] if op.partner and a.partner_id is not None else [])
        missing_lat.update(x for x in needed if x not in latents)
        if op.pixels:
            missing_img.update(x for x in needed if x not in images)
    if missing_lat:
        raise ValueError(f"no cached latents for {sorted(missing_lat)[:10]} ({len(missing_lat)} ids)")
    if missing_img:
        raise ValueError(f"{', '.join(sorted({a.op for a in augs if AUGMENTATIONS[a.op].pixels}))} needs the "
                         f"original images of {sorted(missing_img)[:10]} ({len(missing_img)} ids)")
    used = {a.source_id for a in augs} | {a.partner_id for a in augs if AUGMENTATIONS[a.op].partner}
    for x in sorted(u for u in used if u is not None):
        check_batch(f"latents[{x!r}]", latents[x], 1)


def _run_group(group: Sequence[Augmentation], latents: Mapping[str, Latents], images: Mapping[str, Tensor],
               G: StyleGAN2, *, steps_w: int, steps_n: int, vgg: VGG16Features | None,
               callback: StepCallback | None = None) -> tuple[Latents, Tensor, list[dict[str, Any]]]:
    """One batch of augmentations sharing op (and batch parameters): (latents, images, metrics)."""
    op = AUGMENTATIONS[group[0].op]
    source_ids = [a.source_id for a in group]
    # _validate guarantees a partner for partner ops; "" never reaches a lookup otherwise.
    partner_ids = [a.partner_id or "" for a in group]
    src = Latents.stack([latents[x] for x in source_ids]).to(G.device)
    batch = AugmentBatch(
        G=G, vgg=vgg, params=[a.params for a in group], source=src,
        partner=Latents.stack([latents[x] for x in partner_ids]).to(G.device) if op.partner else src,
        source_images=as_images(torch.stack([images[x] for x in source_ids]), G, "images") if op.pixels else None,
        partner_images=as_images(torch.stack([images[x] for x in partner_ids]), G, "images") if op.pixels else None,
        steps_w=steps_w, steps_n=steps_n, callback=callback)
    res = op.run(batch)
    lat = res.latents
    change = (lat.w.detach() - src.w).square().flatten(1).mean(1).sqrt().cpu()
    metrics = [{**m, "w_rms_change": float(change[b])} for b, m in enumerate(res.metrics)]
    return Latents(lat.w.detach(), [n.detach() for n in lat.noise]), res.images.detach(), metrics


def run_augmentations(augs: Sequence[Augmentation], latents: Mapping[str, Latents], images: Mapping[str, Tensor],
                      G: StyleGAN2, *, steps_w: int = 1000, steps_n: int = 1000, vgg: VGG16Features | None = None,
                      max_batch: int | None = None, callback: StepCallback | None = None) -> AugmentResult:
    """Render a plan from cached codes, batched by op, returned in the plan's order.

    Augmentations are grouped by op (and by the parameters an edit takes as one value for a
    batch: each op's ``batch_params``, e.g. the style-mix ``k``, the crossover ``blur_sigma``);
    each group runs as one batch (or chunks of ``max_batch``). Rows are independent, so the
    result does not depend on the grouping: on CPU the forward ops are bit-identical to running
    each augmentation alone, and crossover (an optimisation) agrees to float rounding.

    Args:
        augs: the plan (from :func:`plan_augmentations`, possibly a subset or loaded from JSON).
        latents: ``id -> batch-1 Latents`` (cached embedding) for every source and partner.
        images: ``id -> [3, R, R]`` in [-1, 1], the original images; only crossover's sources and
            partners are read (may be empty otherwise).
        G: the generator the codes were fitted with.
        steps_w, steps_n: crossover's optimisation steps (W+ stage, noise stage).
        vgg: VGG16 features for crossover's perceptual loss (loaded once if None and needed).
        max_batch: largest batch run at once (None = a whole group), to bound memory.
        callback: ``callback(step, loss)`` per optimisation step of the ops that optimise.

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
    meta = algorithm_meta(G, "augment", ids=[a.id for a in augs], steps_w=steps_w, steps_n=steps_n)
    if not augs:
        r = G.resolution
        empty = Latents(torch.zeros(0, G.num_ws, G.w_dim, device=G.device),
                        [torch.zeros(0, *s, device=G.device) for s in G.noise_shapes], meta)
        return AugmentResult([], torch.zeros(0, 3, r, r, device=G.device), empty, [])
    if vgg is None and any(AUGMENTATIONS[a.op].pixels for a in augs):
        vgg = load_vgg16(device=G.device)

    groups: dict[tuple[Any, ...], list[int]] = {}
    for n, a in enumerate(augs):
        groups.setdefault(_batch_key(a), []).append(n)
    order: list[int] = []
    lats: list[Latents] = []
    outs: list[Tensor] = []
    metrics: list[dict[str, Any]] = []
    for rows in groups.values():
        size = max_batch or len(rows)
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            lat, out, met = _run_group([augs[n] for n in chunk], latents, images, G, steps_w=steps_w,
                                       steps_n=steps_n, vgg=vgg, callback=callback)
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
