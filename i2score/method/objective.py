"""The objective of Image2StyleGAN++ (paper Eq. 1) as a sum of masked targets, reduced per image.

    L = λs · Lstyle(Ms, G(w, n), y) + Σ_t [ λmse_t / N · ||Mm_t ⊙ (G(w, n) − x_t)||²
                                            + λp_t · Lpercept(Mp_t, G(w, n), x_t) ]

The paper writes one ``x`` matched inside ``Mm`` and one ``y`` matched inside ``1 − Mm``; here
every matched image is an :class:`ImageTarget` with its own masks, so a block that sums two
``W_l`` terms (crossover, Alg. 3) or ``Mk_n``'s ``x`` and ``y`` is a list of two targets, and an
application can write the algorithm box as it stands.

Scale (see :mod:`i2score.method.losses`): pixels in [-1, 1], ImageNet-normalised torchvision VGG16.
The paper uses λ = 1e-5 for both the MSE and the perceptual term, on its own pixel and (Keras)
VGG feature scales, which we do not share. On ours the perceptual term of natural image pairs
is 100-600x the pixel MSE (measured at 32-256 px), so λp = 0.005 keeps both terms of the same
magnitude, and the paper's plain-gradient-descent step (lr 0.8) is stable and as fast as Adam
lr 0.01. Style: the paper's 5e-7 relative to the MSE's 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from i2score.features import VGG16Features, perceptual_preprocess
from i2score.method.losses import (
    PERCEPTUAL_LAYERS,
    STYLE_LAYER,
    gram_style_loss,
    masked_feature_mse,
    masked_gram,
    masked_mse,
)

#: λp of a ``W_l`` target on our scale (the MSE's λ is 1).
PERCEPT_WEIGHT = 0.005
#: λs of ``Mst`` relative to the MSE's 1 (the paper's 5e-7 / 1e-5).
STYLE_WEIGHT = 0.05


@dataclass(frozen=True)
class ImageTarget:
    """One matched image of Eq. 1: ``λmse/N·||Mm ⊙ (G(w,n) − x)||² + λp·Lpercept(Mp, G(w,n), x)``.

    Attributes:
        x: ``[B or 1, 3, R, R]`` in [-1, 1].
        Mp, Mm: ``[B or 1, 1, R, R]`` in [0, 1]; None = all ones.
        mse, percept: λmse and λp (``percept`` 0 = no VGG16 pass for this target).
    """

    x: Tensor
    Mp: Tensor | None = None
    Mm: Tensor | None = None
    mse: float = 1.0
    percept: float = 0.0


def embedding_target(x: Tensor, Mp: Tensor | None = None, Mm: Tensor | None = None) -> ImageTarget:
    """The target of one ``W_l(Mp, Mm, ·, ·, ·, x)`` term: MSE and perceptual loss with the
    default λ's."""
    return ImageTarget(x, Mp=Mp, Mm=Mm, mse=1.0, percept=PERCEPT_WEIGHT)


@dataclass(frozen=True)
class StyleTarget:
    """The masked style term ``Mst(Ms, ·, ·, y)``: the Gram statistics of ``G(w, n)`` inside
    ``Ms`` should match those of ``y`` (``[B or 1, 3, H, W]`` in [-1, 1]) inside ``y_mask``
    (None: all of ``y``)."""

    y: Tensor
    Ms: Tensor | None = None
    y_mask: Tensor | None = None
    weight: float = STYLE_WEIGHT


Target = ImageTarget | StyleTarget


def _pick(t: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` of a per-image tensor; batch-1 tensors are shared by every image."""
    return t if t.shape[0] == 1 else t[index]


def _pick_optional(t: Tensor | None, index: Tensor) -> Tensor | None:
    return None if t is None else _pick(t, index)


class Objective:
    """Eq. 1 with its targets' features prepared once: ``loss(G(w, n), w)`` per image ``[B]``.

    Args:
        targets: the matched images and at most one style term.
        vgg: VGG16 features, required when a perceptual or style term is present.
        w_reg: ``(w*, λ)``: adds ``λ·||w − w*||²`` per image (scribble edit, Alg. 5).
        w_prior: ``w [B, L, w_dim] -> [B]`` added per image (a W-closeness prior,
            :mod:`i2score.method.priors`).
    """

    def __init__(self, targets: Sequence[Target], *, vgg: VGG16Features | None = None,
                 w_reg: tuple[Tensor, float] | None = None,
                 w_prior: Callable[[Tensor], Tensor] | None = None) -> None:
        self.images = [t for t in targets if isinstance(t, ImageTarget)]
        styles = [t for t in targets if isinstance(t, StyleTarget)]
        if not self.images and not styles:
            raise ValueError("the objective needs at least one target")
        if len(styles) > 1:
            raise ValueError("at most one style term")
        self.style = styles[0] if styles else None
        if (any(t.percept for t in self.images) or self.style is not None) and vgg is None:
            raise ValueError("the perceptual/style terms need VGG16 features (pass vgg=load_vgg16())")
        self.vgg = vgg
        self.w_star: Tensor | None = None if w_reg is None else w_reg[0]
        self.w_reg_weight = 0.0 if w_reg is None else float(w_reg[1])
        self.w_prior = w_prior
        self.target_feats: list[list[Tensor]] = []
        self.style_gram: Tensor | None = None
        with torch.no_grad():
            for t in self.images:
                self.target_feats.append(self._features(t.x, t.Mp) if t.percept else [])
            if self.style is not None:
                assert vgg is not None
                (sf,) = vgg(perceptual_preprocess(self.style.y), [STYLE_LAYER])
                self.style_gram = masked_gram(sf, self.style.y_mask)

    @property
    def batch(self) -> int:
        """Images per step (the largest batch among the targets)."""
        sizes = [t.x.shape[0] for t in self.images] + ([self.style.y.shape[0]] if self.style else [])
        return max(sizes)

    def _features(self, image: Tensor, Mp: Tensor | None) -> list[Tensor]:
        assert self.vgg is not None
        # Masking the images before VGG (not only the features) keeps pixels outside Mp from
        # leaking into kept features through VGG's receptive fields.
        return self.vgg(perceptual_preprocess(image if Mp is None else image * Mp), PERCEPTUAL_LAYERS)

    def select(self, index: Tensor) -> Objective:
        """The same objective restricted to images ``index`` (targets sliced, not recomputed)."""
        sub = Objective.__new__(Objective)
        sub.__dict__.update(self.__dict__)
        sub.images = [replace(t, x=_pick(t.x, index), Mp=_pick_optional(t.Mp, index), Mm=_pick_optional(t.Mm, index))
                      for t in self.images]
        sub.target_feats = [[f if f.shape[0] == 1 else f[index] for f in feats] for feats in self.target_feats]
        sub.w_star = _pick_optional(self.w_star, index)
        sub.style_gram = _pick_optional(self.style_gram, index)
        if self.style is not None:
            sub.style = replace(self.style, Ms=_pick_optional(self.style.Ms, index))
        return sub

    def regularize(self, w: Tensor) -> Tensor | None:
        """``λ·||w − w*||²`` plus the W prior, per image ``[B]``; None when neither is used."""
        reg = None
        if self.w_star is not None:
            reg = self.w_reg_weight * (w - self.w_star).square().flatten(1).sum(dim=1)
        if self.w_prior is not None:
            prior = self.w_prior(w)
            reg = prior if reg is None else reg + prior
        return reg

    def __call__(self, image: Tensor) -> Tensor:
        """Per-image loss ``[B]`` of generated images ``[B, 3, R, R]``."""
        loss = image.new_zeros(image.shape[0], dtype=torch.float32)
        # Every MSE term before every perceptual term: the order in which the sum is rounded.
        for t in self.images:
            if t.mse:
                loss = loss + t.mse * masked_mse(image, t.x, t.Mm).float()
        style_feats: Tensor | None = None
        for t, feats in zip(self.images, self.target_feats, strict=True):
            if not t.percept:
                continue
            pf = self._features(image, t.Mp)
            loss = loss + t.percept * masked_feature_mse(pf, feats, t.Mp).float()
            if t.Mp is None:
                style_feats = pf[PERCEPTUAL_LAYERS.index(STYLE_LAYER)]
        if self.style is not None:
            assert self.vgg is not None and self.style_gram is not None
            if style_feats is None:
                (style_feats,) = self.vgg(perceptual_preprocess(image), [STYLE_LAYER])
            loss = loss + self.style.weight * gram_style_loss(style_feats, self.style_gram, self.style.Ms).float()
        return loss


__all__ = [
    "PERCEPT_WEIGHT",
    "STYLE_WEIGHT",
    "ImageTarget",
    "Objective",
    "StyleTarget",
    "Target",
    "embedding_target",
]
