"""Priors that keep a W+ embedding close to W, where the generator's latent space edits well.

An unconstrained W+ code reconstructs best, but its rows drift apart and off the distribution
of mapped latents, and such codes edit badly (e4e, Tov et al. 2021, Sec. 3: the
distortion–editability trade-off). Two penalties pull an embedding back, each with its weight:

* **row offsets** (e4e's ``L_d-reg``, here around the rows' mean rather than the first row, so
  no row is privileged): ``λ_off · mean_l ||w_l − mean_k w_k||²``;
* **P-norm** (Zhu et al. 2020, "Improved StyleGAN Embedding: Where are the Good Latents?"):
  undo the mapping network's last leaky ReLU (``v = w/√2`` where positive, ``w/(0.2·√2)``
  where negative), whiten ``v`` with the mean and covariance of mapped samples, and penalise
  ``λ_p · mean_l ||v̂_l||² / w_dim``, which is about ``λ_p`` for a typical sampled ``w``.

Both are per image ``[B]`` and added to the W+ stage's loss; with both weights 0 nothing changes.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from i2score.generator.network import StyleGAN2
from i2score.generator.ops import LRELU_GAIN, LRELU_SLOPE

#: Samples of mapped latents behind the whitening statistics (fixed, so a penalty is a function
#: of the generator alone).
GAUSSIANIZE_SAMPLES = 10_000
GAUSSIANIZE_SEED = 0


@dataclass(frozen=True)
class WCloseness:
    """Weights of the two W-closeness penalties of the W+ stage (0 = off).

    Attributes:
        offset_weight: λ_off of the rows' offsets from their mean row, ``>= 0``.
        pnorm_weight: λ_p of the Gaussianised-W (P-norm) distance, ``>= 0``.
    """

    offset_weight: float = 0.0
    pnorm_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("offset_weight", "pnorm_weight"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    @property
    def active(self) -> bool:
        return self.offset_weight > 0 or self.pnorm_weight > 0

    @staticmethod
    def parse(spec: str) -> WCloseness:
        """``"none"``, or comma-separated ``offset=λ`` and/or ``pnorm=λ`` (``"offset=1e-3,pnorm=0.01"``)."""
        text = spec.strip().lower()
        if text in ("", "none", "off", "0"):
            return WCloseness()
        weights: dict[str, float] = {}
        for part in text.split(","):
            name, sep, value = part.partition("=")
            field = {"offset": "offset_weight", "pnorm": "pnorm_weight"}.get(name.strip())
            if not sep or field is None or field in weights:
                raise ValueError(f"w-closeness {spec!r}: use 'none' or 'offset=λ', 'pnorm=λ' separated by commas")
            try:
                weights[field] = float(value)
            except ValueError:
                raise ValueError(f"w-closeness {spec!r}: {value.strip()!r} is not a number") from None
        return WCloseness(**weights)

    def spec(self) -> str:
        """The inverse of :meth:`parse` (``"none"`` when off)."""
        parts = [f"offset={self.offset_weight:g}"] if self.offset_weight else []
        parts += [f"pnorm={self.pnorm_weight:g}"] if self.pnorm_weight else []
        return ",".join(parts) or "none"


@dataclass(frozen=True)
class GaussianizedW:
    """Whitening of the mapping network's pre-activation space.

    Attributes:
        mean: ``[w_dim]`` mean of ``v`` over sampled latents.
        whiten: ``[w_dim, w_dim]``; ``(v − mean) @ whiten`` has identity covariance.
    """

    mean: Tensor
    whiten: Tensor

    def __call__(self, w: Tensor) -> Tensor:
        """``w [..., w_dim]`` -> whitened ``v̂ [..., w_dim]``."""
        v = torch.where(w >= 0, w / LRELU_GAIN, w / (LRELU_GAIN * LRELU_SLOPE))
        return (v - self.mean.to(w)) @ self.whiten.to(w)


_STATS: weakref.WeakKeyDictionary[StyleGAN2, GaussianizedW] = weakref.WeakKeyDictionary()


def gaussianized_w(G: StyleGAN2) -> GaussianizedW:
    """The whitening statistics of ``G``'s W (seeded samples; computed once per generator)."""
    stats = _STATS.get(G)
    if stats is None:
        gen = torch.Generator().manual_seed(GAUSSIANIZE_SEED)
        z = torch.randn(GAUSSIANIZE_SAMPLES, G.cfg.z_dim, generator=gen).to(G.device)
        with torch.no_grad():
            w = G.mapping(z).double()
        v = torch.where(w >= 0, w / LRELU_GAIN, w / (LRELU_GAIN * LRELU_SLOPE))
        mean = v.mean(0)
        cov = torch.cov((v - mean).T)
        evals, evecs = torch.linalg.eigh(cov)
        # Directions the mapping never uses would blow up; floor them at a tiny fraction.
        evals = evals.clamp_min(evals.max() * 1e-6)
        stats = GaussianizedW(mean.float(), (evecs / evals.sqrt()).float())
        _STATS[G] = stats
    return stats


def w_closeness_penalty(w: Tensor, closeness: WCloseness, stats: GaussianizedW | None) -> Tensor:
    """Per-image penalty ``[B]`` of W+ codes ``w [B, L, w_dim]`` (``stats`` needed for P-norm)."""
    penalty = w.new_zeros(w.shape[0], dtype=torch.float32)
    if closeness.offset_weight:
        offsets = w.float() - w.float().mean(dim=1, keepdim=True)
        penalty = penalty + closeness.offset_weight * offsets.square().sum(dim=2).mean(dim=1)
    if closeness.pnorm_weight:
        if stats is None:
            raise ValueError("the P-norm penalty needs the generator's Gaussianised-W statistics")
        penalty = penalty + closeness.pnorm_weight * stats(w.float()).square().mean(dim=2).mean(dim=1)
    return penalty


def w_prior(G: StyleGAN2, closeness: WCloseness | None) -> WPrior | None:
    """The W+ stage's prior for ``G``, or None when ``closeness`` is off."""
    if closeness is None or not closeness.active:
        return None
    return WPrior(closeness, gaussianized_w(G) if closeness.pnorm_weight else None)


@dataclass(frozen=True)
class WPrior:
    """A callable ``w [B, L, w_dim] -> penalty [B]`` (see :func:`w_closeness_penalty`)."""

    closeness: WCloseness
    stats: GaussianizedW | None

    def __call__(self, w: Tensor) -> Tensor:
        return w_closeness_penalty(w, self.closeness, self.stats)
