"""Ground-truth editability benchmark (``i2s bench editability``).

The procedural portraits (:mod:`i2score.demo.portraits`) are a pure function of their factors,
so for a held-out source ``A`` and donor ``B`` the true result of "give A the smile / hair /
eyes / background of B" exists: ``render_portrait(A, **B's factors of that edit)``. Each edit
method runs on the embeddings of ``A`` and ``B`` and is compared with that truth:

========== ============================================== ==========================================
edit       truth: A with B's                              methods
========== ============================================== ==========================================
expression ``mouth`` (A neutral, B smiling)               expression transfer
                                                          ``w_A + (w_B,smile − w_B,neutral)``;
                                                          attribute transfer (mouth box); crossover
hair       ``hair_style``, ``hair_color``, ``hair_volume`` attribute transfer (hair mask); crossover
           (the eyebrows take the hair colour too)
eyes       iris, gaze, eye size, glasses (all of them)     attribute transfer (eye band); crossover
background ``bg_top``, ``bg_bottom``, ``bg_angle``         style mixing (B's fine rows); attribute
                                                          transfer (background mask); crossover
morph      none                                            morph at t = 0.5: realism only
========== ============================================== ==========================================

Attribute transfer (Sec. 7.6) is forward only: B's activations at one layer inside the region,
then A's styles and noise. Crossover (Alg. 3) puts B's *pixels* inside the region on A's and
optimises from A's code for the schedule's edit steps, so the generator harmonises the seam.
Both take the same region; they are the paper's two answers to "A with B's hair".

A morph midpoint has no true render: hair style, mouth and glasses are categorical (no midpoint
exists), and a lerp of the continuous factors is one arbitrary path among many, not what a
generator's midpoint should equal, so morphs are scored by realism alone.

Metrics per method (medians over the pairs): LPIPS and PSNR to the truth; the change outside
the edited region (mean absolute difference in 8-bit levels, outside the region dilated by one
pixel), against A's pixels (where the truth equals A) and against A's reconstruction (what the
edit itself leaks). Realism: KID (:mod:`i2score.features.kid`, VGG16 features, see
:data:`~i2score.features.kid.KID_NOTE`) against held-out portraits, for the generator's random
samples, the reconstructions, each edit method, and each augmentation op of
:data:`~i2score.runs.ops.AUGMENTATIONS` run on the pairs (source A, partner B).

**Settings.** The benchmark runs a list of named settings (:data:`SETTINGS`), each a plain dict:
``embed`` (keyword overrides of :func:`~i2score.method.applications.reconstruct`, on top of the
schedule's steps and learning rates), ``ops`` (per edit op, keyword overrides of its call:
``morph``, ``style_mix``, ``expression_transfer``, ``attribute_transfer``, ``crossover``) and ``augment`` (per
augmentation op, values merged into every drawn parameter dict). A new embedding option or op
parameter is one line in :data:`SETTINGS`, e.g. ``"e4e-0.1": {"embed": {"w_offset_weight":
0.1}}`` or ``"noise-resample": noise_policy_setting("resample")``; nothing else changes.
Settings with the same embedding share it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from i2score.data.latents import Latents
from i2score.demo.portraits import HELDOUT_SEED_BASE, region_mask, render_portrait, sample_params
from i2score.encoders import Encoder
from i2score.features import LPIPS, VGG16Features
from i2score.features.kid import KID_NOTE, KIDFeatures, kid
from i2score.generator.network import StyleGAN2
from i2score.method.applications import (
    attribute_transfer,
    crossover,
    expression_transfer,
    morph,
    reconstruct,
    style_mix,
)
from i2score.method.masks import dilate
from i2score.method.metrics import psnr
from i2score.runs.config import Schedule
from i2score.runs.contact_sheet import Cell, contact_sheet
from i2score.runs.ops import AUGMENT_OPS, AUGMENTATIONS, AugmentBatch, DrawContext

#: Held-out seed ranges (all >= HELDOUT_SEED_BASE, never trained on; away from the sample data's first 16).
PAIR_SEED_BASE = HELDOUT_SEED_BASE + 10_000
REFERENCE_SEED_BASE = HELDOUT_SEED_BASE + 20_000
FLOOR_SEED_BASE = HELDOUT_SEED_BASE + 30_000

SOURCE_FACTORS: dict[str, Any] = {"mouth": "closed"}
"""A is rendered neutral."""
DONOR_FACTORS: dict[str, Any] = {"mouth": "smile"}
"""B is rendered smiling (its neutral twin, for expression transfer's direction, with SOURCE_FACTORS)."""


@dataclass(frozen=True)
class EditSpec:
    """One edit with a ground truth: the factors A takes from B, and the methods that attempt it."""

    name: str
    factors: tuple[str, ...]
    methods: tuple[str, ...]


EDITS: dict[str, EditSpec] = {e.name: e for e in [
    EditSpec("expression", ("mouth",), ("expression_transfer", "attribute_transfer", "crossover")),
    EditSpec("hair", ("hair_style", "hair_color", "hair_volume"), ("attribute_transfer", "crossover")),
    EditSpec("eyes", ("iris", "gaze", "eye_w", "eye_h", "glasses", "glasses_round", "glasses_color"),
             ("attribute_transfer", "crossover")),
    EditSpec("background", ("bg_top", "bg_bottom", "bg_angle"), ("style_mix", "attribute_transfer", "crossover")),
]}

#: Every (edit, method) row of the benchmark; ``morph`` has no truth.
METHODS: tuple[tuple[str, str], ...] = (*((e.name, m) for e in EDITS.values() for m in e.methods), ("morph", "morph"))

MORPH_T = 0.5

#: The forward edit methods whose pooled median is the summary's ``edit_lpips`` (issue 19's
#: target metric, comparable across versions of the benchmark). Crossover optimises for the
#: schedule's edit steps, so it has its own median (``summary["lpips_by_method"]``).
SUMMARY_METHODS = ("expression_transfer", "attribute_transfer", "style_mix")


# --------------------------------------------------------------------------------------------
# Truth


def truth_factors(seed_a: int, seed_b: int, edit: str) -> dict[str, Any]:
    """Factor overrides of A's truth render for ``edit``: A's own neutral factors with B's
    (smiling) factors of the edit."""
    spec = EDITS[edit]
    donor = replace(sample_params(seed_b), **DONOR_FACTORS)
    return {**SOURCE_FACTORS, **{f: getattr(donor, f) for f in spec.factors}}


def visible_region(seed: int, factors: Sequence[str], resolution: int = 64, **overrides: Any) -> np.ndarray:
    """Where the colour factors ``factors`` show in portrait ``seed`` (with ``overrides``):
    ``bool [R, R]``, every pixel that changes at all when those colours go from black to white
    together (the geometry comes from the other factors, so this is their own coverage,
    partly covered edge pixels included)."""
    dark = render_portrait(seed, resolution, **{**overrides, **{f: (0, 0, 0) for f in factors}})
    light = render_portrait(seed, resolution, **{**overrides, **{f: (255, 255, 255) for f in factors}})
    return np.asarray((dark != light).any(axis=-1))


def edit_region(seed_a: int, seed_b: int, edit: str, resolution: int = 64) -> np.ndarray:
    """The region ``edit`` may change in A, ``bool [R, R]``, from the factors' geometry:
    ``expression`` A's mouth box and ``eyes`` A's eye band (eyes, brows, glasses), both
    :func:`~i2score.demo.portraits.region_mask`; ``background`` every pixel the background
    shows in (:func:`visible_region`: partly covered edge pixels and gaps too); ``hair`` where
    A's hair or the truth's hair (B's style on A's head) shows, eyebrows included (they take
    the hair colour). Not dilated; :func:`outside_mask` adds the
    one-pixel margin of the renderer's blur."""
    if edit == "expression":
        return region_mask(seed_a, "mouth", resolution)
    if edit == "eyes":
        return region_mask(seed_a, "eyes", resolution)
    if edit == "background":
        return visible_region(seed_a, ("bg_top", "bg_bottom"), resolution, **SOURCE_FACTORS)
    if edit == "hair":
        truth = truth_factors(seed_a, seed_b, "hair")
        return (visible_region(seed_a, ("hair_color",), resolution, **SOURCE_FACTORS)
                | visible_region(seed_a, ("hair_color",), resolution, **truth))
    raise ValueError(f"edit must be one of {sorted(EDITS)}, got {edit!r}")


def outside_mask(region: Tensor, margin: int = 1) -> Tensor:
    """``1 − dilate(region, margin)``: ``[B, 1, R, R]`` float, the pixels an edit must not change."""
    return 1 - dilate(region.float(), margin)


@dataclass
class TruthPair:
    """One held-out pair: images ``uint8 [R, R, 3]`` and regions ``bool [R, R]`` per edit."""

    seed_a: int
    seed_b: int
    source: np.ndarray
    donor: np.ndarray
    donor_neutral: np.ndarray
    truths: dict[str, np.ndarray] = field(default_factory=dict)
    regions: dict[str, np.ndarray] = field(default_factory=dict)


def truth_pair(seed_a: int, seed_b: int, resolution: int = 64) -> TruthPair:
    """Render A (neutral), B (smiling), B (neutral) and A's truth and region for every edit."""
    pair = TruthPair(seed_a, seed_b, render_portrait(seed_a, resolution, **SOURCE_FACTORS),
                     render_portrait(seed_b, resolution, **DONOR_FACTORS),
                     render_portrait(seed_b, resolution, **SOURCE_FACTORS))
    for edit in EDITS:
        pair.truths[edit] = render_portrait(seed_a, resolution, **truth_factors(seed_a, seed_b, edit))
        pair.regions[edit] = edit_region(seed_a, seed_b, edit, resolution)
    return pair


def pair_seeds(n_pairs: int) -> list[tuple[int, int]]:
    """The first ``n_pairs`` held-out (A, B) seed pairs."""
    return [(PAIR_SEED_BASE + 2 * i, PAIR_SEED_BASE + 2 * i + 1) for i in range(n_pairs)]


def to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> Tensor:
    """``uint8 [N, R, R, 3]`` -> ``float32 [N, 3, R, R]`` in [-1, 1]."""
    return torch.from_numpy(np.stack(list(images))).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def portraits(seeds: Sequence[int], resolution: int) -> Tensor:
    """Held-out portraits (their own factors) as ``[N, 3, R, R]`` in [-1, 1]."""
    return to_tensor([render_portrait(s, resolution) for s in seeds])


# --------------------------------------------------------------------------------------------
# Metrics


def edit_metrics(out: Tensor, truth: Tensor, source: Tensor, recon: Tensor, region: Tensor,
                 lpips: LPIPS) -> list[dict[str, float]]:
    """Per image: ``lpips`` and ``psnr`` of ``out`` to ``truth``, and ``psnr_region``, the PSNR
    inside the (dilated) region alone, where the edit must happen; ``change_outside`` (vs the
    source's pixels) and ``leak_outside`` (vs its reconstruction): mean |difference| in 8-bit
    levels over :func:`outside_mask` of ``region``. Images ``[B, 3, R, R]`` in [-1, 1], region
    ``[B, 1, R, R]`` in {0, 1}. Identical images give :func:`~i2score.method.metrics.psnr`'s cap
    (126 dB)."""
    with torch.no_grad():
        lp = lpips(out.clamp(-1, 1), truth)
    pn = psnr(out.clamp(-1, 1), truth)
    outside = outside_mask(region.to(out.device))
    pn_region = psnr(out.clamp(-1, 1), truth, mask=1 - outside)
    denom = outside.flatten(1).sum(1).clamp_min(1) * 3

    def mean_abs(a: Tensor, b: Tensor) -> Tensor:
        return ((a.clamp(-1, 1) - b).abs() * outside).flatten(1).sum(1) / denom * 127.5

    change, leak = mean_abs(out, source), mean_abs(out, recon)
    return [{"lpips": float(lp[i]), "psnr": float(pn[i]), "psnr_region": float(pn_region[i]),
             "change_outside": float(change[i]),
             "leak_outside": float(leak[i])} for i in range(out.shape[0])]


def region_floor(recon: Tensor, truth: Tensor, region: Tensor, lpips: LPIPS) -> list[float]:
    """Per image, LPIPS to ``truth`` of the truth pasted into the (dilated) region of ``recon``:
    what a perfect edit of that region scores when everything else is A's reconstruction, so
    the part of an edit's error that no region edit from this embedding can remove. Images
    ``[B, 3, R, R]`` in [-1, 1], region ``[B, 1, R, R]`` in {0, 1}."""
    inside = 1 - outside_mask(region.to(recon.device))
    pasted = inside * truth + (1 - inside) * recon.clamp(-1, 1)
    with torch.no_grad():
        return [float(v) for v in lpips(pasted, truth)]


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


# --------------------------------------------------------------------------------------------
# Settings


SETTINGS: dict[str, dict[str, Any]] = {
    # Today's default for a face model: W+ from the mean latent, then the noise stage.
    "mean": {"embed": {"init": "mean"}},
    # Hybrid inversion: the bundled encoder's code, refined by both stages.
    "encoder": {"embed": {"init": "encoder"}},
    # W+ only: the noise stays the seeded start (no image content in the noise maps).
    "mean-w-only": {"embed": {"init": "mean", "steps_n": 0}},
    # W-closeness of the W+ stage (i2score.method.priors), from the encoder start.
    "encoder-offset-1e-3": {"embed": {"init": "encoder", "w_offset_weight": 1e-3}},
    "encoder-offset-3e-3": {"embed": {"init": "encoder", "w_offset_weight": 3e-3}},
    "encoder-pnorm-3e-4": {"embed": {"init": "encoder", "pnorm_weight": 3e-4}},
    "encoder-pnorm-1e-3": {"embed": {"init": "encoder", "pnorm_weight": 1e-3}},
    # Attribute transfer at the first 64x64 conv of the demo models instead of the default conv4.
    "encoder-attribute-conv7": {"embed": {"init": "encoder"}, "ops": {"attribute_transfer": {"layer": 7}}},
}
"""Named settings of the sweep: ``embed`` (overrides of ``reconstruct``'s keyword arguments),
``ops`` ({op: keyword overrides}) and ``augment`` ({augmentation op: params merged into every
draw}). Add a setting here in one line (see the module docstring)."""

SETTING_KEYS = ("embed", "ops", "augment")
EDIT_OPS = ("morph", "style_mix", "expression_transfer", "attribute_transfer", "crossover")
#: Ops that take a ``noise_policy`` (issue 19): the global edits and the augmentation partner ops.
NOISE_POLICY_OPS = ("morph", "style_mix", "expression_transfer")
NOISE_POLICY_AUGMENTS = ("style_mix", "interpolate")


#: What ``i2s bench editability`` runs without ``--settings``: the three embeddings of the
#: distortion-editability curve (``encoder`` only when the model has an encoder).
DEFAULT_SETTINGS = ("mean", "encoder", "mean-w-only")


def noise_policy_setting(policy: str, **embed: Any) -> dict[str, Any]:
    """A setting that gives every global edit and augmentation partner op ``noise_policy=policy``
    (for :data:`SETTINGS` once the ops take that parameter)."""
    return {"embed": dict(embed), "ops": {op: {"noise_policy": policy} for op in NOISE_POLICY_OPS},
            "augment": {op: {"noise_policy": policy} for op in NOISE_POLICY_AUGMENTS}}


# Noise policies of the global edits and augmentation partner ops, on the encoder embedding.
SETTINGS.update({f"encoder-noise-{policy}": noise_policy_setting(policy, init="encoder")
                 for policy in ("content", "interpolate", "resample", "refit")})


def check_setting(name: str, setting: Mapping[str, Any]) -> None:
    """A setting's shape: only :data:`SETTING_KEYS`, dicts of dicts; a clear error naming it otherwise."""
    bad = set(setting) - set(SETTING_KEYS)
    if bad:
        raise ValueError(f"setting {name!r}: unknown key(s) {sorted(bad)}; allowed: {', '.join(SETTING_KEYS)}")
    for key in SETTING_KEYS:
        if not isinstance(setting.get(key, {}), Mapping):
            raise ValueError(f"setting {name!r}: {key!r} must be a dict")
    for op in setting.get("ops", {}):
        if op not in EDIT_OPS:
            raise ValueError(f"setting {name!r}: unknown op {op!r} in 'ops'; allowed: {', '.join(EDIT_OPS)}")
    for op in setting.get("augment", {}):
        if op not in AUGMENTATIONS:
            raise ValueError(f"setting {name!r}: unknown augmentation {op!r}; allowed: {', '.join(AUGMENT_OPS)}")


def embed_kwargs(schedule: Schedule, setting: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the setting's ``reconstruct`` call: the schedule's steps and
    learning rates, overridden by ``setting["embed"]``."""
    return {"steps_w": schedule.steps_w, "steps_n": schedule.steps_n, "lr_w": schedule.lr_w,
            "lr_n": schedule.lr_n, **setting.get("embed", {})}


# --------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class _Embedded:
    latents: Latents
    images: Tensor
    psnr: list[float]
    seconds: float


def _run_crossovers(G: StyleGAN2, vgg: VGG16Features, lat: Latents, x: Tensor, n: int,
                    regions: Mapping[str, Tensor], kwargs: Mapping[str, Any]) -> dict[tuple[str, str], Tensor]:
    """Crossover of every region edit, ``[n, 3, R, R]`` each: B's pixels in the region on A's,
    optimised from A's code with ``kwargs`` (steps, blur). Latents and images ``x`` as in
    :func:`_run_edits`."""
    a, bs = list(range(n)), list(range(n, 2 * n))
    return {(edit, "crossover"): crossover(x[bs], x[a], regions[edit], lat[a], G, vgg=vgg, **kwargs).images.detach()
            for edit in (e for e, m in METHODS if m == "crossover")}


def _run_edits(G: StyleGAN2, lat: Latents, n: int, regions: Mapping[str, Tensor],
               ops: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], Tensor]:
    """Every forward (edit, method) output ``[n, 3, R, R]``; latents hold A at 0..n-1, B smiling
    at n..2n-1, B neutral at 2n..3n-1."""
    a, bs, bn = list(range(n)), list(range(n, 2 * n)), list(range(2 * n, 3 * n))
    la, lbs, lbn = lat[a], lat[bs], lat[bn]
    att = dict(ops.get("attribute_transfer", {}))
    mix = dict(ops.get("style_mix", {}))
    k = int(mix.pop("k", max(1, G.num_ws - 4)))
    out: dict[tuple[str, str], Tensor] = {}
    with torch.no_grad():
        out["expression", "expression_transfer"] = expression_transfer(
            la, lbn, lbs, 1.0, G, **ops.get("expression_transfer", {})).images
        for edit in (e for e, m in METHODS if m == "attribute_transfer"):
            out[edit, "attribute_transfer"] = attribute_transfer(la, lbs, regions[edit].float(), G, **att).images
        out["background", "style_mix"] = style_mix(la, lbs, k, G, **mix).images
        out["morph", "morph"] = morph(la, lbs, MORPH_T, G, **ops.get("morph", {})).images
    return out


def _run_augmentations(G: StyleGAN2, vgg: VGG16Features, lat: Latents, x: Tensor, n: int, schedule: Schedule,
                       extra: Mapping[str, Mapping[str, Any]], seed: int) -> dict[str, Tensor]:
    """Each augmentation op on the pairs (source A, partner B smiling), parameters drawn as the
    augment flow draws them (seeded per pair) and merged with ``extra[op]``."""
    ctx = DrawContext(num_ws=G.num_ws, jitter_sigma=0.1)
    out: dict[str, Tensor] = {}
    for name in AUGMENT_OPS:
        op = AUGMENTATIONS[name]
        params = [{**op.draw(np.random.default_rng([seed, i, AUGMENT_OPS.index(name)]), ctx),
                   **extra.get(name, {})} for i in range(n)]
        images = torch.empty(n, 3, G.resolution, G.resolution, device=G.device)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(tuple(p.get(k) for k in op.batch_params), []).append(i)
        for idx in groups.values():
            src, par = idx, [n + i for i in idx] if op.partner else idx
            batch = AugmentBatch(G=G, vgg=vgg, params=[params[i] for i in idx], source=lat[src], partner=lat[par],
                                 source_images=x[src] if op.pixels else None,
                                 partner_images=x[par] if op.pixels else None,
                                 steps_w=schedule.edit_steps_w, steps_n=schedule.edit_steps_n)
            images[idx] = op.run(batch).images.detach()
        out[name] = images
    return out


def editability_report(G: StyleGAN2, *, settings: Mapping[str, Mapping[str, Any]], schedule: Schedule,
                       n_pairs: int = 4, n_reference: int = 64, n_samples: int = 32, vgg: VGG16Features,
                       lpips: LPIPS, encoder: Encoder | None = None, seed: int = 0, command: str = "",
                       log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Run the benchmark for every named setting.

    Args:
        settings: name -> setting dict (see :data:`SETTINGS`).
        schedule: the embedding's steps and learning rates (a setting's ``embed`` overrides
            them), and the crossover augmentation's edit steps.
        n_pairs: held-out (A, B) pairs (>= 2: KID needs two images per set).
        n_reference: held-out portraits of KID's reference set.
        n_samples: the generator's random samples whose KID is reported.
        encoder: needed by settings with ``embed.init == "encoder"``.

    Returns:
        ``(report, images)``: the JSON-able report, and per setting the images of the picture
        (``recon`` and ``(edit, method)`` outputs, ``[n, 3, R, R]`` on the CPU).
    """
    if n_pairs < 2:
        raise ValueError(f"n_pairs must be >= 2 (KID needs two images per set), got {n_pairs}")
    if n_reference < 2 or n_samples < 2:
        raise ValueError(f"n_reference and n_samples must be >= 2, got {n_reference} and {n_samples}")
    for name, setting in settings.items():
        check_setting(name, setting)
    R = G.resolution
    t_start = time.perf_counter()
    pairs = [truth_pair(a, b, R) for a, b in pair_seeds(n_pairs)]
    n = n_pairs
    x = to_tensor([p.source for p in pairs] + [p.donor for p in pairs] + [p.donor_neutral for p in pairs])
    x = x.to(G.device)
    truths = {e: to_tensor([p.truths[e] for p in pairs]).to(G.device) for e in EDITS}
    regions = {e: torch.from_numpy(np.stack([p.regions[e] for p in pairs]))[:, None].float().to(G.device)
               for e in EDITS}
    extractor = KIDFeatures(vgg)
    ref = extractor(portraits([REFERENCE_SEED_BASE + i for i in range(n_reference)], R))

    def realism(images: Tensor) -> dict[str, float]:
        r = kid(extractor(images), ref, seed=seed)
        return {"kid": r.kid, "kid_std": r.std, "n": r.n}

    with torch.no_grad():
        samples = G.sample(n_samples, seed)[0].clamp(-1, 1)
    fixed = {"heldout": realism(portraits([FLOOR_SEED_BASE + i for i in range(n)], R)),
             "truths": realism(torch.cat(list(truths.values()))),
             "samples": realism(samples)}
    log(f"KID vs {n_reference} held-out portraits: samples {fixed['samples']['kid']:.4f}, held-out "
        f"{fixed['heldout']['kid']:.4f} (n={n}), truths {fixed['truths']['kid']:.4f}")
    report: dict[str, Any] = {
        "command": command, "kid_note": KID_NOTE, "model": G.source, "sha256": G.weights_sha256,
        "schedule": {f.name: getattr(schedule, f.name) for f in fields(schedule)}, "seed": seed,
        "n_pairs": n, "n_reference": n_reference, "n_samples": n_samples,
        "pairs": [[p.seed_a, p.seed_b] for p in pairs], "morph_t": MORPH_T,
        "settings_used": {k: dict(v) for k, v in settings.items()}, "kid_fixed": fixed, "settings": {}}
    embedded: dict[str, _Embedded] = {}
    crossed: dict[str, dict[tuple[str, str], Tensor]] = {}
    pictures: dict[str, dict[str, Any]] = {"_truth": {"pairs": pairs}}
    for name, setting in settings.items():
        kw = embed_kwargs(schedule, setting)
        key = json.dumps(kw, sort_keys=True, default=str)
        if key not in embedded:
            call = dict(kw)
            if call.get("init") == "encoder":
                if encoder is None:
                    raise ValueError(f"setting {name!r} starts from the encoder, but no encoder was given")
                call["encoder"] = encoder
            t0 = time.perf_counter()
            rec = reconstruct(x, G, seed=seed, vgg=vgg, lpips=False, **call)
            embedded[key] = _Embedded(rec.latents, rec.images.detach(), [m["psnr_wn"] for m in rec.metrics],
                                      time.perf_counter() - t0)
        emb = embedded[key]
        recon_a = emb.images[:n]
        # Settings that share the embedding and the crossover's arguments share its outputs too
        # (it optimises, the other edits are forward only).
        cross = {"steps_w": schedule.edit_steps_w, "steps_n": schedule.edit_steps_n,
                 **setting.get("ops", {}).get("crossover", {})}
        cross_key = key + json.dumps(cross, sort_keys=True, default=str)
        if cross_key not in crossed:
            crossed[cross_key] = _run_crossovers(G, vgg, emb.latents, x, n, regions, cross)
        outs = {**crossed[cross_key], **_run_edits(G, emb.latents, n, regions, setting.get("ops", {}))}
        rows: dict[str, Any] = {}
        lpips_by_method: dict[str, list[float]] = {}
        for edit, method in METHODS:
            out = outs[edit, method]
            row: dict[str, Any] = {"edit": edit, "method": method}
            if edit in EDITS:
                per = edit_metrics(out, truths[edit], x[:n], recon_a, regions[edit], lpips)
                row.update({k: _median([p[k] for p in per]) for k in per[0]})
                row["per_pair"] = per
                lpips_by_method.setdefault(method, []).extend(p["lpips"] for p in per)
            row.update(realism(out))
            rows[f"{edit}/{method}"] = row
        no_edit = {e: {k: _median([p[k] for p in per]) for k in ("lpips", "psnr", "psnr_region")}
                   for e in EDITS for per in [edit_metrics(recon_a, truths[e], x[:n], recon_a, regions[e], lpips)]}
        floors = {e: region_floor(recon_a, truths[e], regions[e], lpips) for e in EDITS}
        for e in EDITS:
            no_edit[e]["lpips_floor"] = _median(floors[e])
        augs = _run_augmentations(G, vgg, emb.latents, x, n, schedule, setting.get("augment", {}), seed)
        summary = {"recon_psnr": _median(emb.psnr),
                   "edit_lpips": _median([v for m in SUMMARY_METHODS for v in lpips_by_method.get(m, [])]),
                   "edit_lpips_floor": _median([f for e, m in METHODS if m in SUMMARY_METHODS for f in floors[e]]),
                   "lpips_by_method": {m: _median(v) for m, v in lpips_by_method.items()},
                   "kid_edits": realism(torch.cat(list(outs.values())))["kid"],
                   "kid_augment": realism(torch.cat(list(augs.values())))["kid"]}
        result: dict[str, Any] = {
            "embed": {k: v for k, v in kw.items()}, "embed_seconds": emb.seconds,
            "reconstruction": {"psnr": _median(emb.psnr), "psnr_min": min(emb.psnr), **realism(emb.images)},
            "edits": rows, "no_edit": no_edit,
            "augment": {op: realism(img) for op, img in augs.items()},
            "summary": summary,
        }
        report["settings"][name] = result
        log(f"{name}: recon PSNR {summary['recon_psnr']:.2f} dB, edit LPIPS {summary['edit_lpips']:.4f}, "
            f"KID edits {summary['kid_edits']:.4f}, augment {summary['kid_augment']:.4f}")
        pictures[name] = {"recon": recon_a.cpu(), **{f"{e}/{m}": o.cpu() for (e, m), o in outs.items()}}
    report["seconds"] = time.perf_counter() - t_start
    return report, pictures


# --------------------------------------------------------------------------------------------
# Output


#: The methods with a truth, in table order.
_LPIPS_METHODS = tuple(dict.fromkeys(m for e, m in METHODS if e in EDITS))


def to_markdown(report: Mapping[str, Any]) -> str:
    """The curve table (one row per setting), the per-method table and the realism table."""
    lines = [f"`{report['command']}`" if report.get("command") else "",
             "",
             f"{report['n_pairs']} held-out pairs, model {report['model']}, schedule "
             f"{report['schedule']['steps_w']}+{report['schedule']['steps_n']} "
             f"(lr {report['schedule']['lr_w']}/{report['schedule']['lr_n']}); KID vs {report['n_reference']} "
             f"held-out portraits. {report['kid_note']}",
             "",
             f"Edit LPIPS: the median over the pairs' rows of {', '.join(SUMMARY_METHODS)} (the forward edits); "
             "its floor: the same rows with the truth pasted into each region of A's reconstruction (a perfect "
             "region edit from this embedding); then each method's own median.",
             "",
             "| setting | embedding | recon PSNR (dB) | edit LPIPS (median) | its floor | "
             + " | ".join(f"LPIPS {m}" for m in _LPIPS_METHODS) + " | KID recon | KID edits | KID augment |",
             "|---|---|---:|---:|---:|" + "---:|" * len(_LPIPS_METHODS) + "---:|---:|---:|"]
    for name, r in report["settings"].items():
        s = r["summary"]
        emb = ", ".join(f"{k}={v}" for k, v in r["embed"].items())
        by_method = " | ".join(f"{s['lpips_by_method'][m]:.4f}" if m in s.get("lpips_by_method", {}) else "-"
                               for m in _LPIPS_METHODS)
        floor = f"{s['edit_lpips_floor']:.4f}" if "edit_lpips_floor" in s else "-"
        lines.append(f"| {name} | {emb} | {s['recon_psnr']:.2f} | {s['edit_lpips']:.4f} | {floor} | {by_method} | "
                     f"{r['reconstruction']['kid']:.4f} | {s['kid_edits']:.4f} | {s['kid_augment']:.4f} |")
    lines += ["", "| setting | edit | method | LPIPS | PSNR (dB) | PSNR in region (dB) | change outside (levels) "
                  "| leak outside (levels) | without edit: LPIPS, PSNR in region "
                  "| floor: truth in region (LPIPS) | KID |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["settings"].items():
        for row in r["edits"].values():
            if row["edit"] in r["no_edit"]:
                base = r["no_edit"][row["edit"]]
                lines.append(f"| {name} | {row['edit']} | {row['method']} | {row['lpips']:.4f} | {row['psnr']:.2f} | "
                             f"{row['psnr_region']:.2f} | {row['change_outside']:.2f} | {row['leak_outside']:.2f} | "
                             f"{base['lpips']:.4f}, {base['psnr_region']:.2f} | {base['lpips_floor']:.4f} | "
                             f"{row['kid']:.4f} |")
            else:
                dashes = " | ".join("-" * 7)
                lines.append(f"| {name} | {row['edit']} | {row['method']} | {dashes} | {row['kid']:.4f} |")
    fixed = report["kid_fixed"]
    head = ["held-out portraits", "truth renders", "random samples"]
    vals = [fixed["heldout"], fixed["truths"], fixed["samples"]]
    aug_names = list(next(iter(report["settings"].values()))["augment"]) if report["settings"] else []
    lines += ["", "| KID of | " + " | ".join(head + [f"augment {a}" for a in aug_names]) + " |",
              "|---|" + "---:|" * (len(head) + len(aug_names))]
    for name, r in report["settings"].items():
        cells = [f"{v['kid']:.4f} ± {v['kid_std']:.4f}" for v in vals]
        cells += [f"{r['augment'][a]['kid']:.4f} ± {r['augment'][a]['kid_std']:.4f}" for a in aug_names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def truth_sheet(pictures: Mapping[str, Any], setting: str, *, max_pairs: int = 3) -> Any:
    """A contact sheet for one setting: per pair A, B, A's reconstruction, then per edit the
    truth and each method's output, and the morph midpoint. Returns a Pillow image."""
    pairs: list[TruthPair] = pictures["_truth"]["pairs"]
    imgs = pictures[setting]
    rows = []
    for i, p in enumerate(pairs[:max_pairs]):
        row = [Cell(p.source, f"A {p.seed_a}"), Cell(p.donor, f"B {p.seed_b}"), Cell(imgs["recon"][i], "A embedded")]
        for edit, spec in EDITS.items():
            row.append(Cell(p.truths[edit], f"{edit}\ntruth"))
            row += [Cell(imgs[f"{edit}/{m}"][i], f"{edit}\n{m}") for m in spec.methods]
        row.append(Cell(imgs["morph/morph"][i], f"morph t={MORPH_T}"))
        rows.append(row)
    return contact_sheet(rows, scale=2, title=f"editability: truth vs edit, setting {setting!r}")


def plot_curve(report: Mapping[str, Any], path: str | Path) -> None:
    """The distortion-editability curve: edit LPIPS and KID of the edits against
    reconstruction PSNR, one point per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(report["settings"])
    xs = [report["settings"][k]["summary"]["recon_psnr"] for k in names]
    for ax, key, label in ((axes[0], "edit_lpips", "edit LPIPS to the truth (median)"),
                           (axes[1], "kid_edits", "KID of the edits (VGG16 features)")):
        ys = [report["settings"][k]["summary"][key] for k in names]
        ax.scatter(xs, ys)
        for name, xv, yv in zip(names, xs, ys, strict=True):
            ax.annotate(name, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("reconstruction PSNR (dB, median)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    if "samples" in report["kid_fixed"]:
        axes[1].axhline(report["kid_fixed"]["samples"]["kid"], color="gray", ls="--", lw=1, label="random samples")
        axes[1].legend(fontsize=8)
    fig.suptitle(f"distortion-editability ({report['n_pairs']} pairs, schedule "
                 f"{report['schedule']['steps_w']}+{report['schedule']['steps_n']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: Mapping[str, Any], pictures: Mapping[str, Any], out: str | Path) -> list[Path]:
    """``OUT.json``, ``OUT.md``, ``OUT-curve.png`` and ``OUT-<setting>.png``; returns the paths."""
    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{stem}.json"), Path(f"{stem}.md"), Path(f"{stem}-curve.png")]
    paths[0].write_text(json.dumps(report, indent=1))
    paths[1].write_text(to_markdown(report))
    plot_curve(report, paths[2])
    for name in report["settings"]:
        p = Path(f"{stem}-{name}.png")
        truth_sheet(pictures, name).save(p)
        paths.append(p)
    return paths
