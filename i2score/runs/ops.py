"""The op registry: every op a manifest row or an augmentation plan can name, declared once.

An :class:`Op` (manifest rows) says which inputs a row gives (``mask``/``ref``), its parameters
with types, ranges and defaults, the cached embeddings it starts from (its latent roles), the
runner that applies it to a batch, and the metric that goes to the output manifest's ``psnr``
column and the report. An :class:`AugmentOp` says the same for an augmentation, plus how its
parameters are drawn. Everything else reads these declarations: the manifest validator (through
:data:`CATALOG`), the planner (roles, parameters), the batch executor (runners, metrics), the
report (metrics) and the augmentation planner (partners, draws).

Adding an op is one application module in :mod:`i2score.method.applications` plus one
registration below: a runner of a few lines and an ``Op(...)`` entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from i2score.data.cache import LatentCache, make_source
from i2score.data.latents import Latents
from i2score.data.manifest import GeneratorLimits, LoadedRow, ManifestKind, OpCatalog, Param, Use
from i2score.features import VGG16Features
from i2score.generator.network import StyleGAN2
from i2score.method.applications import (
    ALGORITHM_VERSION,
    MASK_KINDS,
    EditResult,
    attribute_transfer,
    crossover,
    crossover_mask,
    expression_transfer,
    inpaint,
    jitter_w,
    local_style_transfer,
    morph,
    resample_noise,
    scribble_edit,
    style_mix,
)
from i2score.method.applications.common import algorithm_id, render
from i2score.method.applications.latent_ops import DEFAULT_NOISE_POLICY as EDIT_NOISE_POLICY
from i2score.method.applications.latent_ops import NOISE_POLICIES
from i2score.method.blocks import StepCallback
from i2score.runs.config import JobConfig, Schedule

#: Latent roles: the cached embedding of the row's ``image`` or ``ref``, or of the row that an
#: ``id`` parameter names (``a``, ``b``).
Role = str


@dataclass(frozen=True)
class ReportMetric:
    """The metric of an op that goes to the output manifest's ``psnr`` column: ``key`` in the
    op's per-output metrics, ``what`` it measures (for the report), and which way is better
    (the report shows the worst outputs first: the lowest values when ``higher_is_better``)."""

    key: str
    what: str
    higher_is_better: bool = True


# ----------------------------------------------------------------------------------------------
# Manifest ops
# ----------------------------------------------------------------------------------------------


@dataclass
class OpBatch:
    """One batch of one op, every row with the same parameters: what a runner gets.

    Attributes:
        G, vgg: the worker's generator and VGG16 features.
        rows: the rows' files, loaded and fitted to the generator.
        latents: role -> the rows' cached embeddings, stacked (``w [B, L, w_dim]``).
        params: the op's resolved parameters.
        schedule: the optimisation steps of edits and inpainting.
        cache, generator: the latent cache and the generator record (``id``, ``sha256``), for ops
            that cache results of their own (inpainting).
        callback: called once per optimisation step of ops that optimise (progress), or None.
    """

    G: StyleGAN2
    vgg: VGG16Features | None
    rows: Sequence[LoadedRow]
    latents: Mapping[Role, Latents]
    params: Mapping[str, Any]
    schedule: Schedule
    cache: LatentCache
    generator: Mapping[str, Any]
    callback: StepCallback | None = None

    def image(self) -> Tensor:
        """The rows' images, ``[B, 3, R, R]`` in [-1, 1] on G's device."""
        return torch.stack([r.image for r in self.rows]).to(self.G.device)

    def ref(self) -> Tensor:
        """The rows' second images, ``[B, 3, R, R]`` in [-1, 1] (ops whose ``ref`` is required)."""
        return torch.stack([_given(r.ref, r, "ref") for r in self.rows]).to(self.G.device)

    def mask(self) -> Tensor:
        """The rows' masks, ``[B, 1, R, R]`` in {0, 1} (white = the region the user names; ops
        whose ``mask`` is required)."""
        return torch.stack([_given(r.mask, r, "mask") for r in self.rows]).to(self.G.device)


def _given(t: Tensor | None, row: LoadedRow, name: str) -> Tensor:
    if t is None:  # validation rejects such rows; reaching here is a registry mistake
        raise ValueError(f"row {row.row.id!r} has no {name}, which op {row.row.op!r} needs")
    return t


@dataclass
class OpOutput:
    """What a runner returns: ``m`` outputs per row, row-major.

    Attributes:
        images: ``[B*m, 3, R, R]`` in [-1, 1] (nominal).
        metrics: one dict per output.
        suffixes: the ``m`` output-id suffixes of a row (output id = row id + suffix).
        cache_keys: one per output when the op caches its results, else empty.
    """

    images: Tensor
    metrics: list[dict[str, Any]]
    suffixes: tuple[str, ...] = ("",)
    cache_keys: list[str] | None = None


def _edited(result: EditResult) -> OpOutput:
    return OpOutput(result.images, result.metrics)


Runner = Callable[[OpBatch], OpOutput]
#: A schedule stage an op optimises with (see :attr:`Op.optimises`).
Stage = Literal["edit", "inpaint"]


def stage_steps(stage: Stage | None, schedule: Schedule) -> int:
    """W+ plus noise steps of ``stage`` in ``schedule`` (0 for None: a forward-only op)."""
    if stage is None:
        return 0
    if stage == "edit":
        return schedule.edit_steps_w + schedule.edit_steps_n
    return schedule.inpaint_steps_w + schedule.inpaint_steps_n


@dataclass(frozen=True)
class Op:
    """One manifest op, declared once (see the module docstring).

    Attributes:
        name: the value of a row's ``op`` column.
        doc: one line for people (manifest docs, ``i2s validate``).
        mask, ref: whether a row must give a mask / a second image (``required``) or must not
            (``unused``).
        params: the row's ``params`` keys.
        latents: the cached embeddings it starts from (roles ``image``, ``ref`` or an ``id``
            parameter); they are embedded (or found in the cache) before the op runs.
        run: applies the op to a batch.
        metric: what goes to the ``psnr`` column, or None.
        optimises: which of the schedule's stages it runs (``edit``: the edit steps, ``inpaint``:
            the inpainting steps), None for forward-only ops: a batch's step budget
            (:meth:`planned_steps`) and the steps a progress bar counts.
    """

    name: str
    doc: str
    mask: Use
    ref: Use
    params: Mapping[str, Param]
    latents: tuple[Role, ...]
    run: Runner
    metric: ReportMetric | None = None
    optimises: Stage | None = None

    def planned_steps(self, schedule: Schedule) -> int:
        """Optimisation steps one batch of this op runs at most under ``schedule``."""
        return stage_steps(self.optimises, schedule)

    @property
    def algorithm(self) -> str:
        """The algorithm id in cache keys and results' metadata."""
        return algorithm_id(self.name)

    def resolve_params(self, given: Mapping[str, Any], job: JobConfig | None = None) -> dict[str, Any]:
        """``given`` (already validated) with absent parameters filled in: from the job's
        settings for parameters with a ``job_default`` (when a job is given), else their default."""
        out = {k: p.default for k, p in self.params.items() if p.default is not None}
        if job is not None:
            out.update({k: getattr(job, p.job_default) for k, p in self.params.items() if p.job_default})
        out.update(given)
        return out


def _run_reconstruct(b: OpBatch) -> OpOutput:
    lat = b.latents["image"].to(b.G.device)
    return OpOutput(render(b.G, lat.w, lat.noise), [{} for _ in b.rows])


def _run_inpaint(b: OpBatch) -> OpOutput:
    """Each solution is cached under its own key: rows whose ``k`` solutions are all cached are
    rendered, the others optimised together."""
    k, seed = int(b.params["k"]), int(b.params["seed"])
    steps_w, steps_n = b.schedule.inpaint_steps_w, b.schedule.inpaint_steps_n
    key_params = {"steps_w": steps_w, "steps_n": steps_n, "seed": seed}
    keys, sources = [], []
    for r in b.rows:
        for j in range(k):
            key, src = make_source(image_bytes=r.image_bytes, mask_bytes=r.mask_bytes,
                                   generator_sha256=b.generator["sha256"], algorithm=OPS["inpaint"].algorithm,
                                   params={**key_params, "solution": j}, algorithm_version=ALGORITHM_VERSION,
                                   generator_id=b.generator["id"], source_id=r.row.id)
            keys.append(key)
            sources.append(src)
    cached = b.cache.get_many(keys)
    x, masks = b.image(), b.mask()
    need = [i for i in range(len(b.rows)) if any(keys[i * k + j] not in cached for j in range(k))]
    metrics: list[dict[str, Any]] = [{} for _ in keys]
    if need:
        res = inpaint(x[need], masks[need], b.G, k=k, seed=seed, steps_w=steps_w, steps_n=steps_n, vgg=b.vgg,
                      callback=b.callback)
        idx = [i * k + j for i in need for j in range(k)]
        b.cache.put_many([keys[i] for i in idx], res.latents.to("cpu"), sources=[sources[i] for i in idx],
                         metrics=[{} for _ in idx],
                         timings=[{"steps_w": m["steps_w"], "steps_n": m["steps_n"]} for m in res.metrics])
        for n, i in enumerate(idx):
            cached[keys[i]] = res.latents[n].to("cpu")
            metrics[i] = res.metrics[n]
    solutions = Latents.stack([cached[key] for key in keys]).to(b.G.device)
    finals = render(b.G, solutions.w, solutions.noise)
    hole = masks.repeat_interleave(k, dim=0)
    composites = finals * hole + x.repeat_interleave(k, dim=0) * (1 - hole)
    for i, m in enumerate(metrics):
        if not m:
            metrics[i] = {"solution": i % k, "cached": True}
    return OpOutput(composites, metrics, tuple(f"-k{j}" for j in range(k)), keys)


def _run_crossover(b: OpBatch) -> OpOutput:
    return _edited(crossover(b.image(), b.ref(), b.mask(), b.latents["ref"], b.G, blur_sigma=b.params["blur_sigma"],
                             steps_w=b.schedule.edit_steps_w, steps_n=b.schedule.edit_steps_n, vgg=b.vgg,
                             callback=b.callback))


def _run_scribble(b: OpBatch) -> OpOutput:
    return _edited(scribble_edit(b.latents["image"], b.ref(), b.mask(), b.G, layers=b.params["layers"],
                                 reg=b.params["reg"], steps_w=b.schedule.edit_steps_w,
                                 steps_n=b.schedule.edit_steps_n, vgg=b.vgg, callback=b.callback))


def _run_style_transfer(b: OpBatch) -> OpOutput:
    return _edited(local_style_transfer(b.latents["image"], b.image(), b.ref(), b.mask(), b.G,
                                        steps_w=b.schedule.edit_steps_w, steps_n=b.schedule.edit_steps_n,
                                        vgg=b.vgg, callback=b.callback))


def _run_attribute_transfer(b: OpBatch) -> OpOutput:
    return _edited(attribute_transfer(b.latents["image"], b.latents["ref"], b.mask(), b.G,
                                      layer=b.params["layer"], mode=b.params["mode"]))


def _noise_args(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"noise_policy": params["noise_policy"], "noise_seed": int(params["noise_seed"])}


def _run_morph(b: OpBatch) -> OpOutput:
    return _edited(morph(b.latents["image"], b.latents["ref"], b.params["t"], b.G, **_noise_args(b.params)))


def _run_style_mix(b: OpBatch) -> OpOutput:
    return _edited(style_mix(b.latents["image"], b.latents["ref"], b.params["k"], b.G, **_noise_args(b.params)))


def _run_expression_transfer(b: OpBatch) -> OpOutput:
    return _edited(expression_transfer(b.latents["image"], b.latents["a"], b.latents["b"], b.params["strength"],
                                       b.G, **_noise_args(b.params)))


#: Largest seed of a row: seeds are signed 64-bit integers in every manifest format (Parquet and
#: JSONL columns go through Arrow's int64) and in torch's generators, so [0, 2^63) is what all of
#: them carry exactly.
ROW_SEED_MAX = 2**63 - 1
#: Largest mask blur (pixels at the generator resolution): 3 sigma = 192 px already spreads the
#: seam over a fifth of a 1024 px image and over the whole of a 256 px one; more is a mistake.
BLUR_SIGMA_MAX = 64.0

#: Bound of drawn seeds (they travel through JSON and numpy as non-negative int32).
SEED_BOUND = 2**31

#: The noise policy of each global edit (the method's default) and augmentation partner op when
#: a row does not say. Augmentation wants images that look real, not a truth: resampled maps give
#: the most real style mixes and interpolations (KID 0.66 vs 1.04 and 0.93 vs 1.20 with the old
#: per-layer / interpolated maps; README "Editability").
DEFAULT_NOISE_POLICY = {**EDIT_NOISE_POLICY, "augment/style_mix": "resample", "augment/interpolate": "resample"}


def _noise_params(op: str) -> dict[str, Param]:
    return {
        "noise_policy": Param("str", DEFAULT_NOISE_POLICY[op], choices=NOISE_POLICIES,
                              doc="the edited code's noise maps: the content image's, interpolated with "
                                  "the code, resampled, or re-fitted by a short noise stage (README "
                                  "'Editability')"),
        "noise_seed": Param("int", 0, minimum=0, maximum=SEED_BOUND - 1,
                            doc="seed of resampled (and re-fitted) noise maps"),
    }


_PSNR_OUTSIDE = ReportMetric("psnr_outside", "PSNR outside the edited region, vs the input image")

OPS: dict[str, Op] = {op.name: op for op in [
    Op("reconstruct", "Embed the image (Alg. 2): W+ then noise.", mask="unused", ref="unused", params={},
       latents=("image",), run=_run_reconstruct,
       metric=ReportMetric("psnr_wn", "PSNR of the reconstruction (W+ and noise), vs the image")),
    Op("inpaint", "Fill the mask region (white = missing) (Alg. 4).", mask="required", ref="unused", params={
        "k": Param("int", 1, minimum=1, maximum=16, doc="number of solutions", job_default="k"),
        "seed": Param("int", 0, minimum=0, maximum=ROW_SEED_MAX,
                      doc="seed of the w_ini offsets, in [0, 2^63): a signed 64-bit integer, which every "
                          "manifest format and torch's seeding carry exactly"),
    }, latents=(), run=_run_inpaint, optimises="inpaint",
        metric=ReportMetric("psnr_known", "PSNR of the known pixels (outside the grown, blurred hole)")),
    Op("crossover", "Mask region from image, the rest from ref (Alg. 3).", mask="required", ref="required",
       params={"blur_sigma": Param("float", 2.0, minimum=0.0, maximum=BLUR_SIGMA_MAX,
                                   doc="Gaussian blur of the mask, pixels at the generator resolution, in "
                                       "[0, 64]: 3 sigma = 192 px spreads the seam over a fifth of a 1024 px "
                                       "image already")},
       latents=("ref",), run=_run_crossover, optimises="edit",
       metric=ReportMetric("psnr_base_region", "PSNR outside the blurred mask band, vs ref (the base)")),
    Op("scribble", "image = original, ref = scribbled image, mask = scribble region (Alg. 5).",
       mask="required", ref="required", params={
           "layers": Param("int", 4, minimum=4, maximum=6, maximum_of="num_ws",
                           doc="first W+ rows optimised: the paper's 4, 5 or 6 (and at most the "
                               "generator's W+ rows)"),
           "reg": Param("float", 0.1, minimum=0.0, maximum=100.0,
                        doc="weight of ||w* - w||^2, in [0, 100]: on demo-faces-64 0.1 makes the strokes a "
                            "visible edit and 1 mostly dissolves them; on demo-faces-64-v2 0.1 already mostly "
                            "dissolves them (mean change inside 0.024 against 0.088); beyond 100 nothing moves"),
       }, latents=("image",), run=_run_scribble, metric=_PSNR_OUTSIDE, optimises="edit"),
    Op("style_transfer", "Restyle the mask region of image with the style image ref (Alg. 6).",
       mask="required", ref="required", params={}, latents=("image",), run=_run_style_transfer,
       metric=_PSNR_OUTSIDE, optimises="edit"),
    Op("attribute_transfer", "Blend ref's activations into image inside the mask (Sec. 7.6).",
       mask="required", ref="required", params={
           "layer": Param("int", 4, minimum=0, maximum_of="last_layer",
                          doc="synthesis layer of the activation blend: an index into the generator's "
                              "layers conv0, conv1, ... (execution order)"),
           "mode": Param("str", "copy", choices=("copy", "average", "channels"),
                         doc="spatial copy, averaging or channel-wise copy"),
       }, latents=("image", "ref"), run=_run_attribute_transfer),
    Op("morph", "(1 - t) * w_image + t * w_ref.", mask="unused", ref="required", params={
        "t": Param("float", 0.5, minimum=0.0, maximum=1.0, doc="0 = image, 1 = ref"),
        **_noise_params("morph"),
    }, latents=("image", "ref"), run=_run_morph),
    Op("style_mix", "Content from image, style from ref.", mask="unused", ref="required", params={
        "k": Param("int", 8, minimum=0, maximum_of="num_ws",
                   doc="first k W+ rows from image, the rest from ref: 0 gives ref, the generator's "
                       "number of W+ rows gives image"),
        **_noise_params("style_mix"),
    }, latents=("image", "ref"), run=_run_style_mix),
    Op("expression_transfer", "w_image + strength * (w_b - w_a), with a and b other rows of the manifest.",
       mask="unused", ref="unused", params={
           "a": Param("id", required=True, doc="row id of the neutral expression"),
           "b": Param("id", required=True, doc="row id of the target expression"),
           "strength": Param("float", 1.0, minimum=-4.0, maximum=4.0,
                             doc="lambda in w + lambda * (w_b - w_a), in [-4, 4]: 1 applies one person's "
                                 "change of expression as it is; the range exaggerates or reverses it a few "
                                 "times over and keeps out values whose render overflows (1e308 gives NaN)"),
           **_noise_params("expression_transfer"),
       }, latents=("image", "a", "b"), run=_run_expression_transfer),
]}

#: The manifest kinds: the columns each needs, the op of a row without one, the ops allowed.
KINDS: dict[str, ManifestKind] = {k.name: k for k in [
    ManifestKind("reconstruct", columns=("id", "image"), default_op="reconstruct", ops=("reconstruct",)),
    ManifestKind("inpaint", columns=("id", "image", "mask"), default_op="inpaint", ops=("inpaint",)),
    ManifestKind("edit", columns=("id", "image", "op"), default_op=None, ops=tuple(OPS)),
]}

def infer_kind(columns: Iterable[str]) -> str:
    """The manifest kind of a manifest with ``columns``: one with an ``op`` column is ``edit``,
    else one with a ``mask`` column is ``inpaint``, else ``reconstruct`` (each kind's own columns
    beyond the ``id`` and ``image`` of :data:`KINDS`; a missing ``id``/``image`` is then the
    validation's to report)."""
    names = {c.strip().lower() for c in columns}
    common = set(KINDS["reconstruct"].columns)
    for name in ("edit", "inpaint"):  # the one needing the most columns first
        if set(KINDS[name].columns) - common <= names:
            return name
    return "reconstruct"


#: What a manifest may say: hand it to :func:`i2score.data.manifest.validate_manifest`, with the
#: generator's limits when it is known (``CATALOG.for_generator(generator_limits(G, name))``).
CATALOG = OpCatalog(ops=OPS, kinds=KINDS)


def generator_limits(G: StyleGAN2, name: str) -> GeneratorLimits:
    """What generator ``G`` (named ``name`` in messages) allows of layer and W+-row parameters."""
    return GeneratorLimits(name=name, num_ws=G.num_ws, layer_names=tuple(G.layer_names))


# ----------------------------------------------------------------------------------------------
# Augmentation ops
# ----------------------------------------------------------------------------------------------

CROSSOVER_BLUR_SIGMA = 2.0
#: Largest W+ jitter (see the ``jitter`` op's ``sigma``).
JITTER_SIGMA_MAX = 2.0
INTERPOLATE_RANGE = (0.2, 0.5)
"""``t`` of an interpolation: far enough from the source to be new, close enough (< 0.5) that
the source still dominates, so the augmented image is a variant of *its* source."""


@dataclass(frozen=True)
class DrawContext:
    """What parameter draws depend on besides the random stream: the generator's number of W+
    rows and the plan's jitter size."""

    num_ws: int
    jitter_sigma: float


@dataclass
class AugmentBatch:
    """One batch of augmentations of one op (with equal :attr:`AugmentOp.batch_params`).

    Attributes:
        G, vgg: the generator and VGG16 features (crossover optimises).
        params: one dict per augmentation.
        source, partner: the sources' (and partners') cached embeddings, stacked on G's device;
            ``partner`` is ``source`` for ops without a partner.
        source_images, partner_images: ``[B, 3, R, R]`` in [-1, 1] for ops that need pixels, else None.
        steps_w, steps_n: crossover's optimisation steps.
        callback: called once per optimisation step (progress), or None.
    """

    G: StyleGAN2
    vgg: VGG16Features | None
    params: Sequence[Mapping[str, Any]]
    source: Latents
    partner: Latents
    source_images: Tensor | None
    partner_images: Tensor | None
    steps_w: int
    steps_n: int
    callback: StepCallback | None = None


@dataclass(frozen=True)
class AugmentOp:
    """One augmentation op, declared once.

    Attributes:
        name: the op (outputs are labelled ``augment/<name>``).
        doc: why it adds useful variety to a data set.
        partner: it combines the source with a second image (latent roles ``source``,
            ``partner``; else ``source`` only).
        params: the drawn parameters with their types and ranges.
        draw: draws the parameters from a plan's random stream; the order of the draws is part
            of the plan's reproducibility.
        batch_params: parameters the edit takes as one value for a whole batch.
        pixels: it needs the original images of the source and the partner.
        run: renders a batch.
        optimises: the schedule stage it optimises with, None for forward-only ops (see
            :attr:`Op.optimises`).
    """

    name: str
    doc: str
    partner: bool
    params: Mapping[str, Param]
    draw: Callable[[np.random.Generator, DrawContext], dict[str, Any]]
    run: Callable[[AugmentBatch], EditResult]
    batch_params: tuple[str, ...] = ()
    pixels: bool = False
    optimises: Stage | None = None


def style_mix_range(num_ws: int) -> tuple[int, int]:
    """Inclusive range of the style-mix layer ``k``: ``[2, num_ws - 2]``, so both images keep
    at least two W+ rows; for ``num_ws`` 2 or 3 (4x4, 8x8 generators) ``[1, 1]`` and ``[2, 2]``."""
    lo = min(2, num_ws - 1)
    return lo, max(num_ws - 2, lo)


def _draw_style_mix(rng: np.random.Generator, ctx: DrawContext) -> dict[str, Any]:
    lo, hi = style_mix_range(ctx.num_ws)
    return {"k": int(rng.integers(lo, hi + 1)), "noise_policy": DEFAULT_NOISE_POLICY["augment/style_mix"],
            "noise_seed": int(rng.integers(0, SEED_BOUND))}


def _draw_crossover(rng: np.random.Generator, ctx: DrawContext) -> dict[str, Any]:
    return {"mask_seed": int(rng.integers(0, SEED_BOUND)), "mask": MASK_KINDS[int(rng.integers(2))],
            "blur_sigma": CROSSOVER_BLUR_SIGMA}


def _draw_noise(rng: np.random.Generator, ctx: DrawContext) -> dict[str, Any]:
    return {"noise_seed": int(rng.integers(0, SEED_BOUND))}


def _draw_jitter(rng: np.random.Generator, ctx: DrawContext) -> dict[str, Any]:
    return {"sigma": float(ctx.jitter_sigma), "jitter_seed": int(rng.integers(0, SEED_BOUND))}


def _draw_interpolate(rng: np.random.Generator, ctx: DrawContext) -> dict[str, Any]:
    return {"t": float(rng.uniform(*INTERPOLATE_RANGE)), "noise_policy": DEFAULT_NOISE_POLICY["augment/interpolate"],
            "noise_seed": int(rng.integers(0, SEED_BOUND))}


def _augment_noise_args(b: AugmentBatch) -> dict[str, Any]:
    return {"noise_policy": b.params[0]["noise_policy"], "noise_seed": [int(p["noise_seed"]) for p in b.params]}


def _augment_style_mix(b: AugmentBatch) -> EditResult:
    return style_mix(b.source, b.partner, int(b.params[0]["k"]), b.G, **_augment_noise_args(b))


def _augment_crossover(b: AugmentBatch) -> EditResult:
    assert b.source_images is not None and b.partner_images is not None
    masks = torch.cat([crossover_mask(p["mask"], p["mask_seed"], b.G.resolution) for p in b.params])
    # The partner's region pasted on the source: the source is the crossover's base.
    return crossover(b.partner_images, b.source_images, masks, b.source, b.G,
                     blur_sigma=float(b.params[0].get("blur_sigma", CROSSOVER_BLUR_SIGMA)),
                     steps_w=b.steps_w, steps_n=b.steps_n, vgg=b.vgg, callback=b.callback)


def _augment_noise(b: AugmentBatch) -> EditResult:
    return resample_noise(b.source, [int(p["noise_seed"]) for p in b.params], b.G)


def _augment_jitter(b: AugmentBatch) -> EditResult:
    return jitter_w(b.source, [float(p["sigma"]) for p in b.params], [int(p["jitter_seed"]) for p in b.params], b.G)


def _augment_interpolate(b: AugmentBatch) -> EditResult:
    return morph(b.source, b.partner, torch.tensor([float(p["t"]) for p in b.params]), b.G,
                 **_augment_noise_args(b))


_SEED = Param("int", minimum=0, maximum=SEED_BOUND - 1)

AUGMENTATIONS: dict[str, AugmentOp] = {op.name: op for op in [
    AugmentOp("style_mix", "The coarse layers (pose, face shape) of the source with the fine layers (colour, "
              "texture, lighting) of a partner: new appearance on a known geometry.", partner=True,
              params={"k": Param("int", minimum=1, maximum_of="num_ws",
                                 doc="first k W+ rows from the source (drawn in [2, L-2], see style_mix_range)"),
                      **_noise_params("augment/style_mix")},
              draw=_draw_style_mix, run=_augment_style_mix, batch_params=("k", "noise_policy")),
    AugmentOp("crossover", "A random region (rectangle or brush strokes) of the partner pasted on the source "
              "and blended by the paper's crossover: seam-free occlusions and part swaps.", partner=True,
              params={"mask_seed": _SEED, "mask": Param("str", choices=MASK_KINDS),
                      "blur_sigma": Param("float", CROSSOVER_BLUR_SIGMA, minimum=0.0, maximum=BLUR_SIGMA_MAX)},
              draw=_draw_crossover, run=_augment_crossover, batch_params=("blur_sigma",), pixels=True,
              optimises="edit"),
    AugmentOp("noise", "The source's w with fresh noise maps: new hair strands, skin pores and background "
              "grain, the cheapest 'same content, new pixels' variant.", partner=False,
              params={"noise_seed": _SEED}, draw=_draw_noise, run=_augment_noise),
    AugmentOp("jitter", "w + sigma * eps: a small random step in W+, a semantic (not pixel-space) "
              "perturbation of the whole image.", partner=False,
              params={"sigma": Param("float", minimum=0.0, maximum=JITTER_SIGMA_MAX,
                                     doc="step size; fitted W+ codes spread by 0.5-1 per element, so a step "
                                         "beyond 2 is another image, not a variant"),
                      "jitter_seed": _SEED}, draw=_draw_jitter,
              run=_augment_jitter),
    AugmentOp("interpolate", "(1 - t) * source + t * partner with t in [0.2, 0.5]: in-between images that "
              "still resemble the source.", partner=True,
              params={"t": Param("float", minimum=INTERPOLATE_RANGE[0], maximum=INTERPOLATE_RANGE[1]),
                      **_noise_params("augment/interpolate")},
              draw=_draw_interpolate, run=_augment_interpolate, batch_params=("noise_policy",)),
]}

#: Every augmentation op, in the default round-robin order.
AUGMENT_OPS: tuple[str, ...] = tuple(AUGMENTATIONS)


if __name__ == "__main__":  # pragma: no cover - regenerate manifests/schema.json
    import sys

    from i2score.data.manifest import row_json_schema

    json.dump(row_json_schema(CATALOG), sys.stdout, indent=2)
    sys.stdout.write("\n")
