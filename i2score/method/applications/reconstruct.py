"""Improved image reconstruction (paper Algorithm 2): embed an image into W+ and noise space.

    Input: image I_m;  Output: the embedded code (w_out, n_out)
    1  (w_ini, n_ini) ← initialize()
    2  w_out = W_l(1, 1, 1, w_ini, n_ini, I_m)
    3  n_out = Mk_n(1, w_out, n_ini, I_m, 0)

W+ first, then noise, once each: the paper shows that joint optimisation and repeated
alternation both hurt.

``initialize()`` is the mean latent (the paper's choice for faces), U[-1, 1], or an image
encoder's code (hybrid inversion: the encoder's one-pass estimate, refined by both stages). Each
stage can stop an image early when its loss stops improving, and a result carries where both
stages ended (:class:`EmbeddingState`), so a longer schedule can continue it exactly (warm start).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from i2score.data.latents import Latents
from i2score.encoders import Encoder
from i2score.features import LPIPS, VGG16Features, VGGWeightsNotFoundError, load_lpips, load_vgg16
from i2score.generator.network import StyleGAN2
from i2score.kernels import batch_invariant
from i2score.method.applications.common import (
    after_steps,
    algorithm_meta,
    embedding,
    images_to_tensor,
    render,
)
from i2score.method.blocks import EarlyStop, StageState, StepCallback, optimize_noise, optimize_w
from i2score.method.metrics import psnr, ssim
from i2score.method.objective import embedding_target
from i2score.method.priors import WCloseness, gaussianized_w, w_closeness_penalty, w_prior

#: Where the W+ search starts (``initialize()`` of Algorithm 2).
INITS = ("mean", "uniform", "encoder")


def initial_w(G: StyleGAN2, batch: int, *, init: str, seed: int, mean_w_samples: int = 10000,
              images: Tensor | None = None, encoder: Encoder | None = None) -> Tensor:
    """Start point of the W+ search; it never depends on the batch an image is computed in.

    ``init="mean"``: the seeded mean latent (faces); ``"uniform"``: U[-1, 1] (other domains);
    ``"encoder"``: ``encoder``'s code for each of ``images`` (``[B, 3, R, R]`` in [-1, 1]),
    computed image by image with the reproducible kernels. Returns ``[batch, L, w_dim]``.
    """
    if init == "mean":
        w = G.mean_w(mean_w_samples, seed)[None, None].expand(1, G.num_ws, -1)
    elif init == "uniform":
        gen = torch.Generator().manual_seed(seed)
        w = (torch.rand(1, G.num_ws, G.w_dim, generator=gen) * 2 - 1).to(G.device)
    elif init == "encoder":
        if encoder is None or images is None:
            raise ValueError("init='encoder' needs an encoder and the images")
        return encode_images(encoder, images, G, seed=seed)
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return w.expand(batch, -1, -1).clone()


def encode_images(encoder: Encoder, images: Tensor, G: StyleGAN2, *, seed: int = 0) -> Tensor:
    """``encoder``'s W+ codes ``[B, L, w_dim]`` for ``images`` ``[B, 3, R, R]`` in [-1, 1].

    One image at a time with the reproducible kernels, so a code does not depend on the batch
    (a GEMM's blocking depends on how many rows it multiplies). ReStyle renders with the seeded
    noise the optimisation starts from.
    """
    if encoder.config.n_styles != G.num_ws or encoder.config.w_dim != G.w_dim:
        raise ValueError(f"the encoder predicts [{encoder.config.n_styles}, {encoder.config.w_dim}] codes, "
                         f"the generator takes [{G.num_ws}, {G.w_dim}]")
    noise = G.random_noise(1, [seed])
    with torch.no_grad(), batch_invariant(G.device):
        return torch.cat([encoder.encode(images[b:b + 1], G, noise=noise) for b in range(images.shape[0])])


@dataclass
class EmbeddingState:
    """Where both stages of one image's embedding ended (see :class:`~i2score.method.blocks.StageState`)."""

    w_stage: StageState
    noise_stage: StageState


def state_to_arrays(state: EmbeddingState) -> dict[str, np.ndarray]:
    """One image's :class:`EmbeddingState` as flat float32/int64 arrays (for the cache's NPZ);
    :func:`state_from_arrays` gives back the same bits."""
    out: dict[str, np.ndarray] = {}
    for name, st in (("w", state.w_stage), ("noise", state.noise_stage)):
        for part in ("params", "exp_avg", "exp_avg_sq"):
            for j, t in enumerate(getattr(st, part)):
                out[f"{name}.{part}.{j}"] = t.detach().cpu().float().numpy()
        out[f"{name}.counts"] = np.array([st.adam_step, st.steps, int(st.stopped), len(st.params),
                                          len(st.exp_avg)], dtype=np.int64)
        out[f"{name}.checks"] = np.array(st.checks, dtype=np.float32)
    return out


def state_from_arrays(arrays: Mapping[str, np.ndarray]) -> EmbeddingState:
    """Inverse of :func:`state_to_arrays`; a KeyError when an array is missing."""
    def stage(name: str) -> StageState:
        adam_step, steps, stopped, n_params, n_moments = (int(v) for v in arrays[f"{name}.counts"])

        def tensors(part: str, n: int) -> list[Tensor]:
            return [torch.from_numpy(np.array(arrays[f"{name}.{part}.{j}"])) for j in range(n)]

        return StageState(params=tensors("params", n_params), exp_avg=tensors("exp_avg", n_moments),
                          exp_avg_sq=tensors("exp_avg_sq", n_moments), adam_step=adam_step, steps=steps,
                          stopped=bool(stopped), checks=[float(v) for v in arrays[f"{name}.checks"]])

    return EmbeddingState(stage("w"), stage("noise"))


@dataclass
class ReconstructionResult:
    """Output of :func:`reconstruct`.

    Attributes:
        latents: the embedding (``w [B, L, w_dim]``, noise list ``[B, 1, r, r]``).
        images: final renders ``[B, 3, R, R]`` in [-1, 1] (nominal).
        images_w: renders after the W+ stage (initial noise), same shape.
        metrics: one dict per image: ``psnr_init`` (the start point, dB), ``psnr_w``, ``psnr_wn``
            (dB), ``mse`` (final, [0, 1] pixel scale), ``ssim``, ``lpips`` (None when LPIPS weights
            are unavailable), ``steps_w``, ``steps_n``, ``steps`` (their sum: the stages' totals,
            warm-started steps included), ``warm_start`` (steps taken over from ``resume``),
            ``seconds`` (this call's wall time / B).
        states: per image, where both stages ended (input of a later warm start).
    """

    latents: Latents
    images: Tensor
    images_w: Tensor
    metrics: list[dict[str, Any]]
    states: list[EmbeddingState] = field(default_factory=list)


def _groups(starts: Sequence[int | None]) -> dict[int | None, list[int]]:
    """Indices by the step their stage starts from (None: nothing to run)."""
    out: dict[int | None, list[int]] = {}
    for i, s in enumerate(starts):
        out.setdefault(s, []).append(i)
    return out


def reconstruct(images: Tensor | Sequence[Image.Image] | Image.Image, G: StyleGAN2, *, steps_w: int = 5000,
                steps_n: int = 3000, seed: int = 0, init: str | None = None, encoder: Encoder | None = None,
                lr_w: float = 0.01, lr_n: float = 5.0, vgg: VGG16Features | None = None,
                lpips: LPIPS | None | bool = True, early_stop: EarlyStop | None = None,
                callback: StepCallback | None = None, autocast_dtype: torch.dtype | None = None,
                mean_w_samples: int = 10000, channels_last: bool = False, compile: bool = False,
                resume: Sequence[EmbeddingState | None] | None = None, w_offset_weight: float = 0.0,
                pnorm_weight: float = 0.0) -> ReconstructionResult:
    """Embed images into W+ and noise space (Algorithm 2).

    Args:
        images: ``I_m``: ``[B, 3, R, R]`` in [-1, 1], or PIL images of size ``R x R``.
        G: the generator.
        steps_w, steps_n: iterations of each stage (paper: 5000 and 3000).
        seed: seeds the initial noise (and a uniform w init); every image gets the same
            initial values, so results do not depend on batch composition.
        init: ``"mean"``, ``"uniform"`` or ``"encoder"``; default by ``G.domain`` (``face`` -> mean).
        encoder: the image encoder of ``init="encoder"`` (hybrid inversion).
        lr_w, lr_n: Adam learning rates of the stages (paper: 0.01 and 5).
        vgg: VGG16 features (default: :func:`i2score.features.load_vgg16`, an error when no
            weights can be found — never random weights).
        lpips: an LPIPS module, True to load one (None in the metrics when weights are
            missing), or False/None to skip the metric.
        early_stop: per-image converge-stopping in both stages (off when None).
        callback: ``callback(global_step, loss [B_active])`` per step.
        autocast_dtype: e.g. ``torch.bfloat16`` for the generator forward.
        channels_last, compile: engine fast-path options (see :mod:`i2score.generator.fastpath`);
            results then agree with the default engine to float tolerance, not bit for bit.
        resume: per image, an earlier result's :class:`EmbeddingState` made with the same
            image, generator, init, seed, learning rates and ``early_stop`` but fewer steps
            (None: start over). A W+ stage that ran fewer than ``steps_w`` steps continues
            (and the noise stage then starts over: it depends on ``w``); one that is complete
            or stopped is kept, and its noise stage continues. The result is bit for bit the
            one a cold run of the full schedule gives.
        w_offset_weight, pnorm_weight: W-closeness penalties of the W+ stage
            (:mod:`i2score.method.priors`; 0 = off): the codes edit better, at some cost in
            reconstruction.

    A generator without noise inputs (StyleGAN3) gets the W+ stage only: ``steps_n`` is not run,
    ``steps_n`` in the metrics is 0, ``psnr_wn`` equals ``psnr_w``, the latents have no noise
    maps, and ``meta["noise_stage"]`` says why.

    Returns:
        :class:`ReconstructionResult`.
    """
    t0 = time.perf_counter()
    image = images_to_tensor(images, G.resolution, G.device)
    batch = image.shape[0]
    vgg = vgg if vgg is not None else load_vgg16(device=G.device)
    prior = list(resume) if resume is not None else [None] * batch
    if len(prior) != batch:
        raise ValueError(f"resume has {len(prior)} states for {batch} images")

    # 1. (w_ini, n_ini) ← initialize()
    init = init or ("mean" if getattr(G, "domain", "face") == "face" else "uniform")
    w_ini = initial_w(G, batch, init=init, seed=seed, mean_w_samples=mean_w_samples, images=image,
                      encoder=encoder)
    n_ini = G.random_noise(batch, [seed] * batch)
    with torch.no_grad(), batch_invariant(G.device):
        psnr_init = psnr(G.synthesize(w_ini, n_ini), image).cpu()
    opts: dict[str, Any] = {"early_stop": early_stop, "autocast_dtype": autocast_dtype,
                            "channels_last": channels_last, "compile": compile}
    closeness = w_prior(G, WCloseness(w_offset_weight, pnorm_weight))

    # 2. w_out = W_l(1, 1, 1, w_ini, n_ini, I_m)
    w_states: list[StageState | None] = [None] * batch
    w_start: list[int | None] = []
    for r in prior:
        # Even a stage that stopped by itself at more steps is not the result of fewer: a cold
        # run of steps_w steps would have ended before it stopped.
        if r is not None and r.w_stage.steps > steps_w:
            raise ValueError(f"cannot warm-start {steps_w} W+ steps from {r.w_stage.steps}")
        done = r is not None and (r.w_stage.stopped or r.w_stage.steps == steps_w)
        w_start.append(None if done else (r.w_stage.steps if r is not None else 0))
    w_out = w_ini.clone()
    for start, idx in _groups(w_start).items():
        if start is None:
            for b in idx:
                state = prior[b]
                assert state is not None
                w_states[b] = state.w_stage
                w_out[b] = state.w_stage.params[0][0].to(w_out.device)
            continue
        sel = torch.tensor(idx, device=G.device)
        cont = [prior[b].w_stage for b in idx] if start else None  # type: ignore[union-attr]
        w_g, res_w = optimize_w(G, [embedding_target(image[sel])], w_ini=w_ini[sel], n_ini=[n[sel] for n in n_ini],
                                vgg=vgg, steps=steps_w, lr=lr_w, w_prior=closeness, callback=callback, resume=cont,
                                **opts)
        w_out[sel] = w_g
        for k, b in enumerate(idx):
            w_states[b] = res_w.states[k]

    # 3. n_out = Mk_n(1, w_out, n_ini, I_m, 0); skipped on generators without noise inputs
    # (StyleGAN3): the embedding is W+ only, and the result's meta says so.
    n_states: list[StageState | None] = [None] * batch
    n_start: list[int | None] = []
    has_noise = bool(G.noise_shapes)
    for b, r in enumerate(prior):
        if not has_noise:
            n_start.append(None)
            n_states[b] = StageState(params=[], exp_avg=[], exp_avg_sq=[], adam_step=0, steps=0, stopped=False)
            continue
        # A new w, or a noise stage longer than asked (it cannot be rewound): start over.
        if r is None or w_start[b] is not None or r.noise_stage.steps > steps_n:
            n_start.append(0)
        elif r.noise_stage.stopped or r.noise_stage.steps == steps_n:
            n_start.append(None)
        else:
            n_start.append(r.noise_stage.steps)
    n_out = [n.clone() for n in n_ini]
    for start, idx in _groups(n_start).items():
        if start is None and not has_noise:
            continue
        if start is None:
            for b in idx:
                state = prior[b]
                assert state is not None
                n_states[b] = state.noise_stage
                for j, m in enumerate(state.noise_stage.params):
                    n_out[j][b] = m[0].to(n_out[j].device)
            continue
        sel = torch.tensor(idx, device=G.device)
        cont = [prior[b].noise_stage for b in idx] if start else None  # type: ignore[union-attr]
        n_g, res_n = optimize_noise(G, M=None, w=w_out[sel], n_ini=[n[sel] for n in n_ini], x=image[sel],
                                    steps=steps_n, lr=lr_n, callback=after_steps(callback, steps_w), resume=cont,
                                    **opts)
        for j, m in enumerate(n_g):
            n_out[j][sel] = m
        for k, b in enumerate(idx):
            n_states[b] = res_n.states[k]
    states = [EmbeddingState(ws, ns) for ws, ns in zip(w_states, n_states, strict=True)
              if ws is not None and ns is not None]

    images_w, final = render(G, w_out, n_ini), render(G, w_out, n_out)
    # The metrics run under the same reproducible kernels as the renders (LPIPS and SSIM convolve).
    with torch.no_grad(), batch_invariant(G.device):
        psnr_w, psnr_wn = psnr(images_w, image).cpu(), psnr(final, image).cpu()
        mse = ((final.float() - image).square().flatten(1).mean(dim=1) / 4).cpu()
        # How far from W each code ended (the unweighted penalties), whether or not they were used.
        row_offset = w_closeness_penalty(w_out, WCloseness(offset_weight=1.0), None).cpu()
        pnorm = w_closeness_penalty(w_out, WCloseness(pnorm_weight=1.0), gaussianized_w(G)).cpu()
        ssim_v = ssim(final, image)
        lpips_v: list[float | None] = [None] * batch
        if lpips is True:
            try:
                lpips = load_lpips(device=G.device)
            except VGGWeightsNotFoundError:
                lpips = None
        if isinstance(lpips, torch.nn.Module):
            lpips_v = [float(v) for v in lpips(final.float().clamp(-1, 1), image).cpu()]
    seconds = time.perf_counter() - t0
    metrics = []
    for b in range(batch):
        r = prior[b]
        taken = 0 if r is None else (r.w_stage.steps if w_start[b] != 0 else 0) + (
            r.noise_stage.steps if n_start[b] != 0 else 0)
        metrics.append({
            "psnr_init": float(psnr_init[b]),
            "psnr_w": float(psnr_w[b]),
            "psnr_wn": float(psnr_wn[b]),
            "mse": float(mse[b]),
            "ssim": float(ssim_v[b]),
            "lpips": lpips_v[b],
            "w_row_offset": float(row_offset[b]),
            "w_pnorm": float(pnorm[b]),
            "steps_w": states[b].w_stage.steps,
            "steps_n": states[b].noise_stage.steps,
            "steps": states[b].w_stage.steps + states[b].noise_stage.steps,
            "warm_start": taken,
            "seconds": seconds / batch,
        })
    meta = algorithm_meta(G, "reconstruct", steps_w=steps_w, steps_n=steps_n, seed=seed, init=init, lr_w=lr_w,
                          lr_n=lr_n)
    if not has_noise:
        meta["noise_stage"] = (f"skipped: {G.family} has no noise inputs, "
                               "the embedding is W+ only")
    if encoder is not None and init == "encoder":
        meta["encoder"], meta["encoder_sha256"] = encoder.source, encoder.weights_sha256
    return ReconstructionResult(embedding(w_out, n_out, meta), final.detach(), images_w.detach(), metrics, states)


__all__ = ["INITS", "EmbeddingState", "ReconstructionResult", "encode_images", "initial_w", "reconstruct",
           "state_from_arrays", "state_to_arrays"]
