"""The four building blocks of Image2StyleGAN++ (paper Sec. 6), batched.

1. :func:`optimize_w` — masked W+ optimisation ``W_l(Mp, Mm, wm, w_ini, n_ini, x)``; with a
   :class:`StyleTerm` it is also masked style transfer ``Mst`` (the two as one objective).
2. :func:`optimize_noise` — masked noise optimisation ``Mk_n(M, w_ini, n_ini, x, y)``.
3. :func:`blend_activations` — masked activation tensor operation ``I_att(M1, M2, w, n, l)``.

Every block takes per-image spatial masks ``[B, 1, R, R]`` in [0, 1] and per-image variable
masks (``w_mask [B, L]`` over the rows of w, ``noise_mask [B, L-1]`` over the noise maps), sums
per-image losses over the batch (so image ``b`` never influences image ``b'``), and is
deterministic: there is no randomness inside the loops.

Variables with mask 0 are never written: the optimiser sees ``where(mask, var, initial)``, so
their values come back bit-for-bit unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from i2score.generator.fastpath import Render, renderer
from i2score.features import VGG16Features, perceptual_preprocess
from i2score.generator.network import StyleGAN2, SynthesisState
from i2score.generator.ops import batch_invariant
from i2score.method.losses import (
    PERCEPTUAL_LAYERS,
    STYLE_LAYER,
    gram_style_loss,
    masked_feature_mse,
    masked_gram,
    masked_mse,
)

StepCallback = Callable[[int, Tensor], None]
"""``callback(step, per_image_loss [B_active])``; reading the tensor syncs with the device."""


@dataclass(frozen=True)
class LossWeights:
    """Weights λ of Eq. 1 on our scale (see :mod:`i2score.method.losses`).

    The paper uses 1e-5 for both MSE and perceptual terms, on its own pixel and (Keras) VGG
    feature scales, which we do not share. On ours (pixels in [-1, 1], ImageNet-normalised
    torchvision-layout VGG16), the perceptual term of natural image pairs is 100-600x the
    pixel MSE (measured at 32-256 px), so λp = 0.005 keeps both terms of the same magnitude,
    and the paper's plain-gradient-descent step (lr 0.8) is stable and as fast as Adam lr 0.01.
    Style: the paper's 5e-7 relative to the MSE's 1e-5.
    """

    mse_x: float = 0.0
    mse_y: float = 0.0
    percept: float = 0.0
    style: float = 0.0
    # Perceptual term of the second target y on (1 − Mp): crossover matches both images.
    percept_y: float = 0.0


W_STAGE = LossWeights(mse_x=1.0, percept=0.005)
NOISE_STAGE = LossWeights(mse_x=1.0, mse_y=1.0)
STYLE_WEIGHT = 0.05  # 5e-7 / 1e-5


@dataclass
class StyleTerm:
    """Masked Gram style target: the generated region ``mask`` should take the style of
    ``image`` (``[B or 1, 3, H, W]`` in [-1, 1]) measured inside ``image_mask`` (None: all)."""

    image: Tensor
    mask: Tensor | None = None
    image_mask: Tensor | None = None
    weight: float = STYLE_WEIGHT


@dataclass
class EarlyStop:
    """Per-image early stopping: an image stops when its loss fell by less than
    ``min_delta_db`` dB (``10·log10(old/new)``; in the noise stage this is its PSNR gain) over
    the last ``patience`` steps. Checked every ``check_every`` steps (each check syncs)."""

    patience: int = 100
    min_delta_db: float = 0.05
    check_every: int = 25


@dataclass
class BlockResult:
    """Per-image outcome of an optimisation block.

    Attributes:
        loss: ``[B]`` final objective per image (CPU float).
        steps: ``[B]`` optimisation steps each image ran (< ``steps`` when stopped early).
        seconds: wall time of the whole block.
    """

    loss: Tensor
    steps: Tensor
    seconds: float
    history: list[tuple[int, list[float]]] = field(default_factory=list)


class Objective:
    """Eq. 1 with its targets prepared once: ``loss(G(w, n))`` per image ``[B]``.

    Args:
        x: ``[B, 3, R, R]`` in [-1, 1], the target of ``Mm`` and ``Mp``.
        y: second target for ``(1 − Mm)`` (None: unused).
        mask_mse: ``Mm`` ``[B, 1, R, R]`` (None: all ones).
        mask_percept: ``Mp`` (None: all ones).
        weights: the λ's.
        vgg: VGG16 features, required when the perceptual or style weight is non-zero.
        style: optional masked style term.
    """

    def __init__(self, x: Tensor, *, y: Tensor | None = None, mask_mse: Tensor | None = None,
                 mask_percept: Tensor | None = None, weights: LossWeights = W_STAGE,
                 vgg: VGG16Features | None = None, style: StyleTerm | None = None,
                 w_reg: tuple[Tensor, float] | None = None) -> None:
        if style is not None:
            weights = LossWeights(weights.mse_x, weights.mse_y, weights.percept, style.weight, weights.percept_y)
        if (weights.percept or weights.style or weights.percept_y) and vgg is None:
            raise ValueError("the perceptual/style terms need VGG16 features (pass vgg=load_vgg16())")
        if (weights.mse_y or weights.percept_y) and y is None:
            raise ValueError("mse_y/percept_y weight is non-zero but no second target y was given")
        self.x, self.y, self.mask_mse, self.mask_percept = x, y, mask_mse, mask_percept
        self.weights, self.vgg, self.style = weights, vgg, style
        self.w_star, self.w_reg_weight = (None, 0.0) if w_reg is None else (w_reg[0], float(w_reg[1]))
        self.target_feats: list[Tensor] = []
        self.target_feats_y: list[Tensor] = []
        self.style_gram: Tensor | None = None
        with torch.no_grad():
            if weights.percept:
                assert vgg is not None
                self.target_feats = vgg(perceptual_preprocess(self._percept_input(x)), PERCEPTUAL_LAYERS)
            if weights.percept_y:
                assert vgg is not None and y is not None
                self.target_feats_y = vgg(perceptual_preprocess(self._percept_input_y(y)), PERCEPTUAL_LAYERS)
            if style is not None:
                assert vgg is not None
                (sf,) = vgg(perceptual_preprocess(style.image), [STYLE_LAYER])
                self.style_gram = masked_gram(sf, style.image_mask)

    def select(self, index: Tensor) -> Objective:
        """The same objective restricted to images ``index`` (targets sliced, not recomputed).
        Tensors with batch 1 are shared by every image and stay as they are."""
        sub = Objective.__new__(Objective)
        sub.__dict__.update(self.__dict__)

        def pick(t: Tensor | None) -> Tensor | None:
            return t if t is None or t.shape[0] == 1 else t[index]

        sub.x, sub.y, sub.w_star = pick(self.x), pick(self.y), pick(self.w_star)
        sub.mask_mse, sub.mask_percept = pick(self.mask_mse), pick(self.mask_percept)
        sub.target_feats = [f if f.shape[0] == 1 else f[index] for f in self.target_feats]
        sub.target_feats_y = [f if f.shape[0] == 1 else f[index] for f in self.target_feats_y]
        sub.style_gram = pick(self.style_gram)
        if self.style is not None:
            sub.style = StyleTerm(self.style.image, pick(self.style.mask), self.style.image_mask, self.style.weight)
        return sub

    def regularize(self, w: Tensor) -> Tensor | None:
        """``λ·||w − w*||²`` per image ``[B]`` (scribble edit), or None when unused."""
        if self.w_star is None:
            return None
        return self.w_reg_weight * (w - self.w_star).square().flatten(1).sum(dim=1)

    def __call__(self, image: Tensor) -> Tensor:
        """Per-image loss ``[B]`` of generated images ``[B, 3, R, R]``."""
        wts = self.weights
        loss = image.new_zeros(image.shape[0], dtype=torch.float32)
        if wts.mse_x:
            loss = loss + wts.mse_x * masked_mse(image, self.x, self.mask_mse).float()
        if wts.mse_y and self.mask_mse is not None:  # Mm = 1 everywhere leaves y no pixel
            assert self.y is not None
            loss = loss + wts.mse_y * masked_mse(image, self.y, 1.0 - self.mask_mse).float()
        style_feats: Tensor | None = None
        if wts.percept:
            assert self.vgg is not None
            pf = self.vgg(perceptual_preprocess(self._percept_input(image)), PERCEPTUAL_LAYERS)
            loss = loss + wts.percept * masked_feature_mse(pf, self.target_feats, self.mask_percept).float()
            if self.mask_percept is None:
                style_feats = pf[PERCEPTUAL_LAYERS.index(STYLE_LAYER)]
        if wts.percept_y:
            assert self.vgg is not None
            pf_y = self.vgg(perceptual_preprocess(self._percept_input_y(image)), PERCEPTUAL_LAYERS)
            inverse = None if self.mask_percept is None else 1.0 - self.mask_percept
            loss = loss + wts.percept_y * masked_feature_mse(pf_y, self.target_feats_y, inverse).float()
        if wts.style:
            assert self.vgg is not None and self.style is not None and self.style_gram is not None
            if style_feats is None:
                (style_feats,) = self.vgg(perceptual_preprocess(image), [STYLE_LAYER])
            loss = loss + wts.style * gram_style_loss(style_feats, self.style_gram, self.style.mask).float()
        return loss

    def _percept_input(self, image: Tensor) -> Tensor:
        # Masking the images before VGG (not only the features) keeps pixels outside Mp from
        # leaking into kept features through VGG's receptive fields.
        return image if self.mask_percept is None else image * self.mask_percept

    def _percept_input_y(self, image: Tensor) -> Tensor:
        return image if self.mask_percept is None else image * (1.0 - self.mask_percept)


def _as_row_mask(mask: Tensor | Sequence[bool] | None, batch: int, n: int, device: torch.device) -> Tensor | None:
    """Variable mask -> bool ``[B, n]`` (a ``[n]`` mask applies to every image)."""
    if mask is None:
        return None
    m = torch.as_tensor(mask, device=device).bool()
    if m.ndim == 1:
        m = m[None].expand(batch, -1)
    if tuple(m.shape) != (batch, n):
        raise ValueError(f"variable mask must be [{n}] or [{batch}, {n}], got {list(m.shape)}")
    return m


def _make_optimizer(params: list[Tensor], kind: str, lr: float) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    if kind == "gd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer must be 'adam' or 'gd', got {kind!r}")


def _optimize(G: StyleGAN2, objective: Objective, w: Tensor, noise: list[Tensor], *,
              channels_last: bool = False, compile: bool = False,
              **kwargs: Any) -> tuple[Tensor, list[Tensor], BlockResult]:
    """Run :func:`_optimize_loop` with G's (optionally channels_last / compiled) synthesis
    forward, inside the batch-invariant kernel context."""
    render = renderer(G, channels_last=channels_last, compile=compile)
    with batch_invariant(w.device):
        return _optimize_loop(render, objective, w, noise, **kwargs)


@dataclass
class _Fixed:
    """What the forward pass of the active images needs besides their parameters; rebuilt only
    when the active set changes, so a step does no index arithmetic (and, on CUDA, no
    host-to-device copy of an index list)."""

    w0: Tensor  # [B_active, L, w_dim]
    n0: list[Tensor]  # [B_active, 1, r, r] each
    var_mask: Tensor | None  # [B_active, L] or [B_active, L-1]


def _optimize_loop(render: Render, objective: Objective, w: Tensor, noise: list[Tensor], *, target: str,
                   var_mask: Tensor | None, steps: int, optimizer: str, lr: float, callback: StepCallback | None,
                   early_stop: EarlyStop | None,
                   autocast_dtype: torch.dtype | None) -> tuple[Tensor, list[Tensor], BlockResult]:
    """Shared loop of the optimisation blocks; ``target`` is ``"w"`` or ``"noise"``.

    Each image owns its own parameter tensors (concatenated for the forward pass): the
    optimiser's element-wise arithmetic then runs on identically shaped tensors whether an
    image is alone or in a batch, and an image that stops early simply leaves the optimiser,
    taking its Adam moments with it, so converged images stop costing compute.

    The loop never reads a device value back on its own except at early-stop checks (every
    ``check_every`` steps) and at the end; a ``callback`` that reads its loss syncs by choice.
    Loss, parameters and optimiser state are float32 whatever ``autocast_dtype`` the generator
    runs under (the image is cast to float32 before the loss).
    """
    t0 = time.perf_counter()
    batch = w.shape[0]
    w0 = w.detach()
    n0 = [n.detach().expand(batch, -1, -1, -1) if n.shape[0] == 1 else n.detach() for n in noise]
    out_w, out_n = w0.clone(), [n.clone() for n in n0]
    final_loss = torch.full((batch,), float("nan"))
    steps_run = torch.zeros(batch, dtype=torch.long)
    per_image: list[list[Tensor]] = [
        [w0[b:b + 1].clone().requires_grad_(True)] if target == "w"
        else [n[b:b + 1].clone().requires_grad_(True) for n in n0]
        for b in range(batch)
    ]
    active = list(range(batch))
    opt = _make_optimizer([p for ps in per_image for p in ps], optimizer, lr)
    window: list[Tensor] = []  # per-image loss at past checks, [B_active] each
    history: list[tuple[int, list[float]]] = []

    def fixed_for(idx: list[int]) -> _Fixed:
        if len(idx) == batch:  # everyone: the tensors as they are, no gather
            return _Fixed(w0, n0, var_mask)
        sel = torch.tensor(idx, device=w.device)
        return _Fixed(w0[sel], [n[sel] for n in n0], None if var_mask is None else var_mask[sel])

    def cat(parts: list[Tensor]) -> Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def compose(idx: list[int], fx: _Fixed) -> tuple[Tensor, list[Tensor]]:
        if target == "w":
            cur = cat([per_image[b][0] for b in idx])
            if fx.var_mask is not None:
                cur = torch.where(fx.var_mask[:, :, None], cur, fx.w0)
            return cur, fx.n0
        maps = [cat([per_image[b][j] for b in idx]) for j in range(len(n0))]
        if fx.var_mask is not None:
            maps = [torch.where(fx.var_mask[:, j, None, None, None], m, fx.n0[j]) for j, m in enumerate(maps)]
        return fx.w0, maps

    def finish(idx: list[int], loss: Tensor, step: int) -> None:
        with torch.no_grad():
            cw, cn = compose(idx, fixed_for(idx))
            host_loss = loss.detach().float().cpu()  # one read for all finishing images
            for k, b in enumerate(idx):
                out_w[b] = cw[k]
                for j in range(len(out_n)):
                    out_n[j][b] = cn[j][k]
                final_loss[b] = host_loss[active.index(b)]
                steps_run[b] = step

    obj = objective
    fixed = fixed_for(active)
    loss = torch.zeros(batch)
    for step in range(steps + 1):
        cw, cn = compose(active, fixed)
        with torch.autocast(w.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            image = render(cw, cn)
        loss = obj(image.float())
        reg = obj.regularize(cw)
        if reg is not None:
            loss = loss + reg
        if step == steps:
            break  # the loss of the final parameters; no update
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if callback is not None:
            callback(step, loss.detach())
        if early_stop is None or (step + 1) % early_stop.check_every:
            continue
        cur = loss.detach().float()
        history.append((step, cur.cpu().tolist()))
        window.append(cur)
        lag = max(1, early_stop.patience // early_stop.check_every)
        if len(window) <= lag:
            continue
        gain_db = 10 * torch.log10(window[-1 - lag].clamp_min(1e-20) / cur.clamp_min(1e-20))
        done = (gain_db < early_stop.min_delta_db).cpu()
        if not bool(done.any()):
            continue
        # The loss belongs to the parameters before this step's update; the difference is
        # below the stopping threshold by construction.
        stopped = [b for b, d in zip(active, done.tolist()) if d]
        finish(stopped, loss, step + 1)
        keep = torch.nonzero(~done).flatten().to(cur.device)
        active = [b for b, d in zip(active, done.tolist()) if not d]
        if not active:
            return out_w, out_n, BlockResult(final_loss, steps_run, time.perf_counter() - t0, history)
        window = [h[keep] for h in window]
        obj = objective.select(torch.tensor(active, device=w.device))
        fixed = fixed_for(active)
        kept_params = [p for b in active for p in per_image[b]]
        new_opt = _make_optimizer(kept_params, optimizer, lr)
        for p in kept_params:
            if p in opt.state:
                new_opt.state[p] = opt.state[p]
        opt = new_opt
    finish(list(active), loss, steps)
    return out_w, out_n, BlockResult(final_loss, steps_run, time.perf_counter() - t0, history)


def optimize_w(G: StyleGAN2, x: Tensor, *, w_init: Tensor, noise: Sequence[Tensor], vgg: VGG16Features | None,
               mask_mse: Tensor | None = None, mask_percept: Tensor | None = None,
               w_mask: Tensor | Sequence[bool] | None = None, y: Tensor | None = None,
               weights: LossWeights = W_STAGE, style: StyleTerm | None = None, steps: int = 5000,
               optimizer: str = "adam", lr: float = 0.01, w_reg: tuple[Tensor, float] | None = None,
               callback: StepCallback | None = None, early_stop: EarlyStop | None = None,
               autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
               compile: bool = False) -> tuple[Tensor, BlockResult]:
    """Masked W+ optimisation ``W_l`` (and, with ``style``, ``W_l + Mst`` as one objective).

    Args:
        G: generator (frozen).
        x: target images ``[B, 3, R, R]`` in [-1, 1].
        w_init: ``[B, L, w_dim]`` (or ``[1, L, w_dim]``, broadcast) start point.
        noise: fixed noise maps, list of ``[B or 1, 1, r, r]``.
        mask_mse, mask_percept: ``Mm``, ``Mp`` ``[B, 1, R, R]`` in [0, 1]; None = all ones.
        w_mask: ``wm``, bool ``[L]`` or ``[B, L]``: rows of w that may change (None = all).
        y: second target for the ``(1 − Mm)`` MSE term (weights.mse_y).
        weights: λ's; default ``λmse1 = 1, λp = 0.005`` (see :class:`LossWeights`).
        style: optional masked Gram style term (``Mst``).
        steps: optimisation steps; optimizer ``"adam"`` (lr 0.01) or ``"gd"`` (paper: lr 0.8).
        w_reg: ``(w_star [B or 1, L, w_dim], λ)`` adds ``λ·||w − w*||²`` per image (scribble edit).
        early_stop: optional per-image early stopping.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the generator under autocast (loss,
            w and Adam state stay float32).
        channels_last: NHWC activations in the generator and VGG16 (see :mod:`i2score.generator.fastpath`).
        compile: ``torch.compile`` the synthesis forward (compiled once per process).

    Returns:
        ``(w [B, L, w_dim], BlockResult)``.
    """
    batch = x.shape[0]
    w0 = w_init.expand(batch, -1, -1) if w_init.shape[0] == 1 else w_init
    objective = Objective(x, y=y, mask_mse=mask_mse, mask_percept=mask_percept, weights=weights, vgg=vgg,
                          style=style, w_reg=w_reg)

    out_w, _, res = _optimize(G, objective, w0, list(noise), target="w",
                              var_mask=_as_row_mask(w_mask, batch, G.num_ws, x.device), steps=steps,
                              optimizer=optimizer, lr=lr, callback=callback,
                              early_stop=early_stop, autocast_dtype=autocast_dtype,
                              channels_last=channels_last, compile=compile)
    return out_w, res


def optimize_noise(G: StyleGAN2, x: Tensor, *, w: Tensor, noise_init: Sequence[Tensor], y: Tensor | None = None,
                   mask: Tensor | None = None, noise_mask: Tensor | Sequence[bool] | None = None,
                   weights: LossWeights = NOISE_STAGE, steps: int = 3000, lr: float = 5.0,
                   callback: StepCallback | None = None, early_stop: EarlyStop | None = None,
                   autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
                   compile: bool = False) -> tuple[list[Tensor], BlockResult]:
    """Masked noise optimisation ``Mk_n(M, w, n_ini, x, y)``: w fixed, Adam on the noise maps.

    Args:
        x: ``[B, 3, R, R]`` in [-1, 1]: matched inside ``mask`` (``Mm``).
        w: fixed ``[B, L, w_dim]``.
        noise_init: list of ``[B or 1, 1, r, r]`` start maps.
        y: matched outside ``mask`` (``1 − Mm``); None with ``mask`` None is plain reconstruction.
        mask: ``Mm`` ``[B, 1, R, R]`` in [0, 1]; None = all ones.
        noise_mask: ``nm``, bool ``[L-1]`` or ``[B, L-1]``: maps that may change (None = all).
        steps, lr: paper: 3000 steps at Adam lr 5 (deliberately high).
        autocast_dtype, channels_last, compile: as in :func:`optimize_w`.

    Returns:
        ``(noise list of [B, 1, r, r], BlockResult)``.
    """
    batch = x.shape[0]
    if y is None:
        weights = LossWeights(mse_x=weights.mse_x)
    objective = Objective(x, y=y, mask_mse=mask, weights=weights, vgg=None)
    w_full = w.expand(batch, -1, -1) if w.shape[0] == 1 else w
    _, out_n, res = _optimize(G, objective, w_full, list(noise_init), target="noise",
                              var_mask=_as_row_mask(noise_mask, batch, len(noise_init), x.device), steps=steps,
                              optimizer="adam", lr=lr, callback=callback,
                              early_stop=early_stop, autocast_dtype=autocast_dtype,
                              channels_last=channels_last, compile=compile)
    return out_n, res


def blend_activations(G: StyleGAN2, base: tuple[Tensor, Sequence[Tensor]], donor: tuple[Tensor, Sequence[Tensor]],
                      *, mask: Tensor, layer: str | int, mode: str = "copy", alpha: float = 0.5,
                      channels: Tensor | None = None, donor_mask: Tensor | None = None) -> Tensor:
    """Masked activation tensor operation ``I_att(M1, M2, w, n, l)``; forward only.

    Runs G on both codes up to ``layer``, combines the activations ``A`` (base) and ``B``
    (donor) and continues G with the **base** code's styles and noise, so the layers after
    ``layer`` keep the base image's style.

    Modes (masks nearest-downsampled to the layer's resolution; ``M`` = ``mask``, 1 = the region
    that receives the donor):
        * ``"copy"``: ``(1 − M) ⊙ A + M_d ⊙ B`` with ``M_d = donor_mask`` (default ``M``): the
          paper's spatial copy ``M1 ⊙ A + (1 − M2) ⊙ B`` with ``M1 = 1 − M``, ``1 − M2 = M_d``.
        * ``"average"``: outside ``M`` A; inside ``(1 − α)·A + α·B``.
        * ``"channels"``: outside ``M`` A; inside, B on the channels where ``channels`` ``[C]``
          is true and A elsewhere (the RGB skip image, which has no feature channels, is
          copied like ``"copy"``).

    An all-zero ``mask`` returns the base image exactly. The pending skip-RGB image is combined
    in the same way, so the continued image is consistent with the blended features.

    Args:
        base, donor: ``(w [B, L, w_dim], noise list)`` of the two images.
        mask, donor_mask: ``[B, 1, R, R]`` in [0, 1].
        layer: ``"conv{i}"`` or ``i``.

    Returns:
        ``[B, 3, R, R]`` in [-1, 1] (nominal).
    """
    if mode not in ("copy", "average", "channels"):
        raise ValueError(f"mode must be copy|average|channels, got {mode!r}")
    if mode == "channels" and channels is None:
        raise ValueError("mode='channels' needs a channels mask")
    wa, na = base
    wb, nb = donor
    sa = G.synthesize_until(wa, na, layer)
    sb = G.synthesize_until(wb, nb, layer)

    def combine(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None or b is None:
            return None
        size = (a.shape[-2], a.shape[-1])
        m = F.interpolate(mask, size=size, mode="nearest").to(a.dtype)
        if mode == "copy" or (mode == "channels" and a.shape[1] != channels.numel()):  # type: ignore[union-attr]
            md = m if donor_mask is None else F.interpolate(donor_mask, size=size, mode="nearest").to(a.dtype)
            return (1 - m) * a + md * b
        if mode == "average":
            return a + m * alpha * (b - a)
        sel = channels.to(a.device).bool()[None, :, None, None]  # type: ignore[union-attr]
        return torch.where(sel, (1 - m) * a + m * b, a)

    x = combine(sa.x, sb.x)
    assert x is not None
    return G.synthesize_from(SynthesisState(sa.layer, x, combine(sa.rgb, sb.rgb)), wa, na)


__all__ = [
    "NOISE_STAGE",
    "W_STAGE",
    "BlockResult",
    "EarlyStop",
    "LossWeights",
    "Objective",
    "StyleTerm",
    "blend_activations",
    "optimize_noise",
    "optimize_w",
]
