"""Local edits using scribbles (paper Algorithm 5): rough strokes become a plausible local edit.

    Input: image I_scr; mask M_blur;  Output: the embedded code (w_out, n_out)
    1  (w*, n_ini) ← initialize()
    2  w_out = W_l(1, 1, wm, w*, n_ini, I_scr) + λ‖w* − w_out‖²
    3  n_out = Mk_n(M_blur, w_out, n_ini, I_scr, G(w_out))

``I_scr`` is the photo with the user's strokes, ``(w*, n_ini)`` the cached embedding of the photo
without them, and ``wm`` the first 4, 5 or 6 rows of W+ (only coarse rows move, so the strokes
become shape and colour, not paint). ``M_blur`` marks where ``I_scr`` is the original photo:
everything outside the blurred strokes, so the noise keeps the photo's detail there (as the
cached noise did) and follows the edited render ``G(w_out)`` under the strokes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from i2score.data.latents import Latents
from i2score.features import VGG16Features, load_vgg16
from i2score.generator.network import StyleGAN2
from i2score.method.applications.common import (
    EditResult,
    after_steps,
    algorithm_meta,
    as_images,
    check_batch,
    embedding,
    locality_metrics,
    render,
    require_noise,
)
from i2score.method.blocks import StepCallback, optimize_noise, optimize_w
from i2score.method.masks import as_mask, enlarged_soft_mask
from i2score.method.objective import embedding_target


def first_rows(num_ws: int, layers: int) -> Tensor:
    """``wm`` over the first ``layers`` rows of W+: bool ``[num_ws]``."""
    if not 1 <= layers <= num_ws:
        raise ValueError(f"layers must be in 1..{num_ws}, got {layers}")
    rows = torch.zeros(num_ws, dtype=torch.bool)
    rows[:layers] = True
    return rows


def scribble_edit(original_latents: Latents, scribbled: Tensor, scribble_mask: Tensor, G: StyleGAN2, *,
                  layers: int = 4, reg: float = 0.1, blur_sigma: float = 2.0, steps_w: int = 1000,
                  steps_n: int = 1000, lr_w: float = 0.1, lr_n: float = 5.0, vgg: VGG16Features | None = None,
                  callback: StepCallback | None = None) -> EditResult:
    """Turn the strokes of ``scribbled`` into a local edit of the embedded photo (Algorithm 5).

    Args:
        original_latents: ``(w*, n_ini)``, the cached embedding of the unscribbled photo.
        scribbled: ``I_scr``, ``[B, 3, R, R]`` in [-1, 1]: the photo with the user's strokes.
        scribble_mask: ``[B or 1, 1, R, R]`` in [0, 1], white = the scribbled region.
        layers: number of leading W+ rows in ``wm`` (paper: 4, 5 or 6).
        reg: ``λ`` as the weight of the mean squared distance to ``w*`` over the rows in ``wm``.
            On the demo model 0.1 turns the strokes into a visible edit (mean change inside 0.12)
            and 1.0 mostly dissolves them (0.05); the outside is the same for both
            (``i2s bench edits``).
        blur_sigma: Gaussian sigma, in pixels, of the band around the strokes.
        steps_w, steps_n, lr_w, lr_n: the two stages (paper: 1000 + 1000, Adam lr 0.1 for W+).

    Returns:
        :class:`~i2score.method.applications.common.EditResult`; metrics: see
        :func:`~i2score.method.applications.common.locality_metrics` (outside the strokes the
        scribbled image is the original).
    """
    require_noise(G, "scribble editing (its noise stage)")
    I_scr = as_images(scribbled, G, "scribbled")
    batch = I_scr.shape[0]
    check_batch("original_latents", original_latents, batch)
    wm = first_rows(G.num_ws, layers)
    strokes = as_mask(scribble_mask.to(G.device), batch, G.resolution)
    blurred_strokes = enlarged_soft_mask(strokes, 0, blur_sigma)
    vgg = vgg if vgg is not None else load_vgg16(device=G.device)

    # 1. (w*, n_ini) ← initialize(): the cached embedding of the photo
    start = original_latents.to(G.device)
    w_star, n_ini = start.w, start.noise

    # 2. w_out = W_l(1, 1, wm, w*, n_ini, I_scr) + λ‖w* − w_out‖²
    # λ per element of the optimised rows, so `reg` does not scale with the rows and w_dim.
    lam = reg / (layers * G.w_dim)
    w_out, res_w = optimize_w(G, [embedding_target(I_scr)], wm=wm, w_ini=w_star, n_ini=n_ini, vgg=vgg,
                              w_reg=(w_star, lam), steps=steps_w, lr=lr_w, callback=callback)

    # 3. n_out = Mk_n(M_blur, w_out, n_ini, I_scr, G(w_out))
    M_blur = 1.0 - blurred_strokes
    n_out, res_n = optimize_noise(G, M=M_blur, w=w_out, n_ini=n_ini, x=I_scr, y=render(G, w_out, n_ini),
                                  steps=steps_n, lr=lr_n, callback=after_steps(callback, steps_w))

    out = render(G, w_out, n_out)
    metrics = locality_metrics(out, render(G, w_star, n_ini), I_scr, strokes, blurred_strokes, res_w, res_n)
    meta = algorithm_meta(G, "scribble", layers=layers, reg=reg, blur_sigma=blur_sigma, steps_w=steps_w,
                          steps_n=steps_n, lr_w=lr_w, lr_n=lr_n)
    return EditResult(embedding(w_out, n_out, meta), out, metrics)
