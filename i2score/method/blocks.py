"""The four building blocks of Image2StyleGAN++ (paper Sec. 6), batched.

1. :func:`optimize_w`: masked W+ optimisation ``W_l(Mp, Mm, wm, w_ini, n_ini, x)``. Its targets
   are a list: several ``W_l`` terms on one ``w`` (crossover), and with a
   :class:`~i2score.method.objective.StyleTarget` also masked style transfer ``Mst``.
2. :func:`optimize_noise`: masked noise optimisation ``Mk_n(M, w_ini, n_ini, x, y)``.
3. :func:`blend_activations`: masked activation tensor operation ``I_att(M1, M2, w, n, l)``.

Every block takes per-image spatial masks ``[B, 1, R, R]`` in [0, 1] and per-image variable
masks (``wm [B, L]`` over the rows of w, ``nm [B, N]`` over the generator's N noise maps), sums per-image
losses over the batch (so image ``b`` never influences image ``b'``), and is deterministic:
there is no randomness inside the loops.

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

from i2score.features import VGG16Features
from i2score.generator.fastpath import Render, renderer
from i2score.generator.network import StyleGAN2, SynthesisState
from i2score.generator.stylegan3 import NoNoiseInputsError
from i2score.kernels import batch_invariant
from i2score.method.objective import ImageTarget, Objective, Target

StepCallback = Callable[[int, Tensor], None]
"""``callback(step, per_image_loss [B_active])``; reading the tensor syncs with the device."""


@dataclass
class EarlyStop:
    """Per-image early stopping: an image stops when its loss fell by less than
    ``min_delta_db`` dB (``10·log10(old/new)``; in the noise stage this is its PSNR gain) over
    the last ``patience`` steps. Checked every ``check_every`` steps (each check syncs)."""

    patience: int = 100
    min_delta_db: float = 0.05
    check_every: int = 25


@dataclass
class StageState:
    """Where one image's optimisation stage ended, enough to continue it exactly (warm start).

    Attributes:
        params: the variables: ``[w [1, L, w_dim]]`` or the noise maps ``[1, 1, r, r]`` each
            (the values the optimiser holds, before variable masks are applied).
        exp_avg, exp_avg_sq: Adam's moments, shaped like ``params`` (empty for plain GD).
        adam_step: Adam's step count (its bias correction).
        steps: optimisation steps this image has run in the stage.
        stopped: early stopping ended it (continuing would not change it).
        checks: its loss at each past early-stop check, oldest first.
    """

    params: list[Tensor]
    exp_avg: list[Tensor]
    exp_avg_sq: list[Tensor]
    adam_step: int
    steps: int
    stopped: bool
    checks: list[float] = field(default_factory=list)


@dataclass
class BlockResult:
    """Per-image outcome of an optimisation block.

    Attributes:
        loss: ``[B]`` final objective per image (CPU float).
        steps: ``[B]`` optimisation steps each image ran (< ``steps`` when stopped early).
        seconds: wall time of the whole block.
        history: ``(step, per-image loss of the images active then)`` at each early-stop check.
        states: per image, where its stage ended (see :class:`StageState`).
    """

    loss: Tensor
    steps: Tensor
    seconds: float
    history: list[tuple[int, list[float]]] = field(default_factory=list)
    states: list[StageState] = field(default_factory=list)


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
                   early_stop: EarlyStop | None, autocast_dtype: torch.dtype | None,
                   resume: Sequence[StageState] | None = None) -> tuple[Tensor, list[Tensor], BlockResult]:
    """Shared loop of the optimisation blocks; ``target`` is ``"w"`` or ``"noise"``.

    Each image owns its own parameter tensors (concatenated for the forward pass): the
    optimiser's element-wise arithmetic then runs on identically shaped tensors whether an
    image is alone or in a batch, and an image that stops early simply leaves the optimiser,
    taking its Adam moments with it, so converged images stop costing compute.

    The loop never reads a device value back on its own except at early-stop checks (every
    ``check_every`` steps) and at the end; a ``callback`` that reads its loss syncs by choice.
    Loss, parameters and optimiser state are float32 whatever ``autocast_dtype`` the generator
    runs under (the image is cast to float32 before the loss).

    ``resume`` (one :class:`StageState` per image, all at the same step count, none stopped)
    continues a stage where it ended: its values, Adam moments and early-stop checks, so
    ``s`` steps then ``t`` more give the same bits as ``s + t`` steps at once.
    """
    t0 = time.perf_counter()
    batch = w.shape[0]
    w0 = w.detach()
    n0 = [n.detach().expand(batch, -1, -1, -1) if n.shape[0] == 1 else n.detach() for n in noise]
    out_w, out_n = w0.clone(), [n.clone() for n in n0]
    final_loss = torch.full((batch,), float("nan"))
    steps_run = torch.zeros(batch, dtype=torch.long)
    start = 0
    if resume is not None:
        if len(resume) != batch or any(r.stopped for r in resume) or len({r.steps for r in resume}) > 1:
            raise ValueError("resume needs one unstopped state per image, all at the same step")
        start = resume[0].steps
        per_image = [[p.detach().to(w.device).clone().requires_grad_(True) for p in r.params] for r in resume]
    else:
        per_image = [
            [w0[b:b + 1].clone().requires_grad_(True)] if target == "w"
            else [n[b:b + 1].clone().requires_grad_(True) for n in n0]
            for b in range(batch)
        ]
    active = list(range(batch))
    opt = _make_optimizer([p for ps in per_image for p in ps], optimizer, lr)
    window: list[Tensor] = []  # per-image loss at past checks, [B_active] each
    checks: list[list[float]] = [[] for _ in range(batch)]
    if resume is not None:
        for ps, r in zip(per_image, resume, strict=True):
            if r.exp_avg:
                for p, m, v in zip(ps, r.exp_avg, r.exp_avg_sq, strict=True):
                    opt.state[p] = {"step": torch.tensor(float(r.adam_step)), "exp_avg": m.to(w.device).clone(),
                                    "exp_avg_sq": v.to(w.device).clone()}
        depth = min(len(r.checks) for r in resume)
        window = [torch.tensor([r.checks[len(r.checks) - depth + k] for r in resume], device=w.device)
                  for k in range(depth)]
        checks = [list(r.checks) for r in resume]
    history: list[tuple[int, list[float]]] = []
    states: list[StageState | None] = [None] * batch

    def state_of(b: int, step: int, stopped: bool) -> StageState:
        ps = per_image[b]
        st = [opt.state.get(p, {}) for p in ps]
        moments = all("exp_avg" in x for x in st)
        return StageState(params=[p.detach().clone() for p in ps],
                          exp_avg=[x["exp_avg"].clone() for x in st] if moments else [],
                          exp_avg_sq=[x["exp_avg_sq"].clone() for x in st] if moments else [],
                          adam_step=int(st[0]["step"]) if moments else 0, steps=step, stopped=stopped,
                          checks=list(checks[b]))

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

    def finish(idx: list[int], loss: Tensor, step: int, stopped: bool) -> None:
        with torch.no_grad():
            cw, cn = compose(idx, fixed_for(idx))
            host_loss = loss.detach().float().cpu()  # one read for all finishing images
            for k, b in enumerate(idx):
                out_w[b] = cw[k]
                for j in range(len(out_n)):
                    out_n[j][b] = cn[j][k]
                final_loss[b] = host_loss[active.index(b)]
                steps_run[b] = step
                states[b] = state_of(b, step, stopped)

    def result() -> BlockResult:
        return BlockResult(final_loss, steps_run, time.perf_counter() - t0, history,
                           [st for st in states if st is not None])

    obj = objective
    fixed = fixed_for(active)
    loss = torch.zeros(batch)
    for step in range(start, max(steps, start) + 1):
        cw, cn = compose(active, fixed)
        with torch.autocast(w.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            image = render(cw, cn)
        loss = obj(image.float())
        reg = obj.regularize(cw)
        if reg is not None:
            loss = loss + reg
        if step >= steps:
            break  # the loss of the final parameters; no update
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if callback is not None:
            callback(step, loss.detach())
        if early_stop is None or (step + 1) % early_stop.check_every:
            continue
        cur = loss.detach().float()
        host = cur.cpu().tolist()
        history.append((step, host))
        for b, v in zip(active, host, strict=True):
            checks[b].append(v)
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
        stopped = [b for b, d in zip(active, done.tolist(), strict=True) if d]
        finish(stopped, loss, step + 1, True)
        keep = torch.nonzero(~done).flatten().to(cur.device)
        active = [b for b, d in zip(active, done.tolist(), strict=True) if not d]
        if not active:
            return out_w, out_n, result()
        window = [h[keep] for h in window]
        obj = objective.select(torch.tensor(active, device=w.device))
        fixed = fixed_for(active)
        kept_params = [p for b in active for p in per_image[b]]
        new_opt = _make_optimizer(kept_params, optimizer, lr)
        for p in kept_params:
            if p in opt.state:
                new_opt.state[p] = opt.state[p]
        opt = new_opt
    finish(list(active), loss, max(steps, start), False)
    return out_w, out_n, result()


def optimize_w(G: StyleGAN2, targets: Sequence[Target], *, w_ini: Tensor, n_ini: Sequence[Tensor],
               wm: Tensor | Sequence[bool] | None = None, vgg: VGG16Features | None = None, steps: int = 5000,
               optimizer: str = "adam", lr: float = 0.01, w_reg: tuple[Tensor, float] | None = None,
               w_prior: Callable[[Tensor], Tensor] | None = None, callback: StepCallback | None = None,
               early_stop: EarlyStop | None = None,
               autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
               compile: bool = False, resume: Sequence[StageState] | None = None) -> tuple[Tensor, BlockResult]:
    """Masked W+ optimisation: ``W_l(Mp, Mm, wm, w_ini, n_ini, x)`` for each target, summed (and
    ``Mst`` when a style target is given), on one ``w``.

    Args:
        G: generator (frozen).
        targets: the terms: :class:`~i2score.method.objective.ImageTarget` (``x`` ``[B, 3, R, R]``
            in [-1, 1] with its ``Mp``, ``Mm``; build one with
            :func:`~i2score.method.objective.embedding_target`) and at most one
            :class:`~i2score.method.objective.StyleTarget`.
        w_ini: ``[B, L, w_dim]`` (or ``[1, L, w_dim]``, broadcast) start point.
        n_ini: fixed noise maps, list of ``[B or 1, 1, r, r]``.
        wm: bool ``[L]`` or ``[B, L]``: rows of w that may change (None = all).
        vgg: VGG16 features (needed by perceptual and style terms).
        steps: optimisation steps; optimizer ``"adam"`` (lr 0.01) or ``"gd"`` (paper: lr 0.8).
        w_reg: ``(w* [B or 1, L, w_dim], λ)`` adds ``λ·||w − w*||²`` per image (scribble edit).
        w_prior: ``w [B, L, w_dim] -> [B]`` added per image: a W-closeness prior
            (:func:`i2score.method.priors.w_prior`).
        early_stop: optional per-image early stopping.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the generator under autocast (loss,
            w and Adam state stay float32).
        channels_last: NHWC activations in the generator and VGG16 (see :mod:`i2score.generator.fastpath`).
        compile: ``torch.compile`` the synthesis forward (compiled once per process).
        resume: continue each image's stage from its :class:`StageState` (``steps`` is then
            the total, counted from the stage's start).

    Returns:
        ``(w [B, L, w_dim], BlockResult)``.
    """
    objective = Objective(targets, vgg=vgg, w_reg=w_reg, w_prior=w_prior)
    batch = objective.batch
    w0 = w_ini.expand(batch, -1, -1) if w_ini.shape[0] == 1 else w_ini
    out_w, _, res = _optimize(G, objective, w0, list(n_ini), target="w",
                              var_mask=_as_row_mask(wm, batch, G.num_ws, w0.device), steps=steps,
                              optimizer=optimizer, lr=lr, callback=callback,
                              early_stop=early_stop, autocast_dtype=autocast_dtype,
                              channels_last=channels_last, compile=compile, resume=resume)
    return out_w, res


def optimize_noise(G: StyleGAN2, *, M: Tensor | None, w: Tensor, n_ini: Sequence[Tensor], x: Tensor,
                   y: Tensor | None = None, y_weight: float = 1.0, nm: Tensor | Sequence[bool] | None = None,
                   steps: int = 3000, lr: float = 5.0, callback: StepCallback | None = None,
                   early_stop: EarlyStop | None = None, autocast_dtype: torch.dtype | None = None,
                   channels_last: bool = False, compile: bool = False,
                   resume: Sequence[StageState] | None = None) -> tuple[list[Tensor], BlockResult]:
    """Masked noise optimisation ``Mk_n(M, w, n_ini, x, y)``: ``w`` fixed, Adam on the noise maps;
    the render matches ``x`` inside ``M`` and ``y`` outside it (MSE only).

    Args:
        M: ``[B, 1, R, R]`` in [0, 1]; None = all ones (plain reconstruction; ``y`` is unused).
        w: fixed ``[B, L, w_dim]``.
        n_ini: list of ``[B or 1, 1, r, r]`` start maps.
        x: ``[B, 3, R, R]`` in [-1, 1].
        y: ``[B, 3, R, R]`` in [-1, 1] or None (no term outside ``M``).
        y_weight: λ of the ``y`` term relative to ``x``'s (inpainting: 10, the paper's 1e-4 : 1e-5).
        nm: bool ``[L-1]`` or ``[B, L-1]``: maps that may change (None = all).
        steps, lr: paper: 3000 steps at Adam lr 5 (deliberately high).
        autocast_dtype, channels_last, compile, resume: as in :func:`optimize_w`.

    Returns:
        ``(noise list of [B, 1, r, r], BlockResult)``.
    """
    if not G.noise_shapes:
        raise NoNoiseInputsError(G.family, "noise optimisation (Mk_n)")
    targets = [ImageTarget(x, Mm=M)]
    # With M all ones, no pixel is left for y.
    if y is not None and M is not None:
        targets.append(ImageTarget(y, Mm=1.0 - M, mse=y_weight))
    objective = Objective(targets)
    batch = objective.batch
    w_full = w.expand(batch, -1, -1) if w.shape[0] == 1 else w
    _, out_n, res = _optimize(G, objective, w_full, list(n_ini), target="noise",
                              var_mask=_as_row_mask(nm, batch, len(n_ini), w_full.device), steps=steps,
                              optimizer="adam", lr=lr, callback=callback,
                              early_stop=early_stop, autocast_dtype=autocast_dtype,
                              channels_last=channels_last, compile=compile, resume=resume)
    return out_n, res


def blend_activations(G: StyleGAN2, base: tuple[Tensor, Sequence[Tensor]], donor: tuple[Tensor, Sequence[Tensor]],
                      *, M1: Tensor, M2: Tensor, layer: str | int, mode: str = "copy", alpha: float = 0.5,
                      channels: Tensor | None = None) -> Tensor:
    """Masked activation tensor operation ``I_att(M1, M2, w, n, l)``; forward only.

    Runs G on both codes up to ``layer``, combines the activations ``A`` (base) and ``B``
    (donor) and continues G with the **base** code's styles and noise, so the layers after
    ``layer`` keep the base image's style. Masks are nearest-downsampled to the layer.

    Modes:
        * ``"copy"``: the paper's spatial copy ``M1 ⊙ A + (1 − M2) ⊙ B`` (``M1``: where A is
          kept, ``1 − M2``: where B is put).
        * ``"average"``: ``A`` where ``M1`` is 1, ``(1 − α)·A + α·B`` where it is 0.
        * ``"channels"``: ``A`` where ``M1`` is 1; elsewhere the copy on the channels where
          ``channels`` ``[C]`` is true and ``A`` on the others (the RGB skip image, which has no
          feature channels, is combined like ``"copy"``).

    ``M1 = M2 = 1`` returns the base image exactly. The pending skip-RGB image is combined in the
    same way, so the continued image is consistent with the blended features.

    Args:
        base, donor: ``(w [B, L, w_dim], noise list)`` of the two images.
        M1, M2: ``[B, 1, R, R]`` in [0, 1].
        layer: ``"conv{i}"`` or ``i`` (StyleGAN3: ``"L{i}..."``; its activations include a margin
            around the image, and the masks are placed on the image part by
            ``G.mask_to_activation``).

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

    # A generator whose activations extend past the image (StyleGAN3's margins) places the
    # masks itself; StyleGAN2's activations cover exactly the image.
    place = getattr(G, "mask_to_activation", None)
    index = G.layer_index(layer)

    def resize(m: Tensor, size: tuple[int, int]) -> Tensor:
        return place(m, index, size) if place is not None else F.interpolate(m, size=size, mode="nearest")

    def combine(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None or b is None:
            return None
        size = (a.shape[-2], a.shape[-1])
        m1 = resize(M1, size).to(a.dtype)
        m2 = resize(M2, size).to(a.dtype)
        copy = m1 * a + (1 - m2) * b
        if mode == "copy" or (mode == "channels" and channels is not None and a.shape[1] != channels.numel()):
            return copy
        if mode == "average":
            return a + (1 - m1) * alpha * (b - a)
        assert channels is not None
        return torch.where(channels.to(a.device).bool()[None, :, None, None], copy, a)

    x = combine(sa.x, sb.x)
    assert x is not None
    return G.synthesize_from(SynthesisState(sa.layer, x, combine(sa.rgb, sb.rgb)), wa, na)


__all__ = [
    "BlockResult",
    "EarlyStop",
    "StageState",
    "StepCallback",
    "blend_activations",
    "optimize_noise",
    "optimize_w",
]
