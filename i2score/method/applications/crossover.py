"""Image crossover (paper Algorithm 3): a region of one image on another, blended seamlessly.

    Input: images I_1, I_2; mask M_blur;  Output: the embedded code (w_out, n_out)
    1  (w*, n_ini) ← initialize()
    2  w_out = W_l(M_blur, M_blur, 1, w*, n_ini, I_1) + W_l(1 − M_blur, 1 − M_blur, 1, w*, n_ini, I_2)
    3  n_out = Mk_n(M_blur, w_out, n_ini, I_1, I_2)

``I_1`` gives the region the user's mask ``M`` marks white, ``I_2`` (the base) everything else;
``M_blur`` is ``M`` blurred by a Gaussian, and ``(w*, n_ini)`` is the base's cached embedding.
"""

from __future__ import annotations

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
    render,
    require_noise,
)
from i2score.method.blocks import StepCallback, optimize_noise, optimize_w
from i2score.method.masks import as_mask, gaussian_blur
from i2score.method.metrics import psnr
from i2score.method.objective import embedding_target


def crossover(image: Tensor, base: Tensor, mask: Tensor, base_latents: Latents, G: StyleGAN2, *,
              blur_sigma: float = 2.0, steps_w: int = 1000, steps_n: int = 1000, lr_w: float = 0.01,
              lr_n: float = 5.0, vgg: VGG16Features | None = None,
              callback: StepCallback | None = None) -> EditResult:
    """The ``mask`` region of ``image`` on ``base``, blended seamlessly (Algorithm 3).

    Args:
        image: ``I_1``, ``[B, 3, R, R]`` in [-1, 1]: the donor of the masked region.
        base: ``I_2``, ``[B, 3, R, R]`` in [-1, 1]: everything outside the mask.
        mask: ``M``, ``[B or 1, 1, R, R]`` in [0, 1], white = taken from ``image``.
        base_latents: the base's cached embedding ``(w*, n_ini)``, the start point.
        blur_sigma: Gaussian sigma of ``M_blur`` in pixels at the generator resolution.
        steps_w, steps_n, lr_w, lr_n: the two stages (paper: 1000 + 1000, Adam).

    Returns:
        :class:`~i2score.method.applications.common.EditResult`; metrics ``psnr_image_region``
        (inside the mask's core, vs ``image``) and ``psnr_base_region`` (outside the blurred band,
        vs ``base``), in dB.
    """
    require_noise(G, "crossover (its noise stage)")
    I_1, I_2 = as_images(image, G, "image"), as_images(base, G, "base")
    batch = I_1.shape[0]
    check_batch("base_latents", base_latents, batch)
    M = as_mask(mask.to(G.device), batch, G.resolution)
    M_blur = gaussian_blur(M, blur_sigma).clamp(0, 1)
    vgg = vgg if vgg is not None else load_vgg16(device=G.device)

    # 1. (w*, n_ini) ← initialize(): the base's cached embedding
    start = base_latents.to(G.device)
    w_star, n_ini = start.w, start.noise

    # 2. w_out = W_l(M_blur, M_blur, 1, w*, n_ini, I_1) + W_l(1 − M_blur, 1 − M_blur, 1, w*, n_ini, I_2)
    outside = 1.0 - M_blur
    w_out, res_w = optimize_w(G, [embedding_target(I_1, Mp=M_blur, Mm=M_blur),
                                  embedding_target(I_2, Mp=outside, Mm=outside)],
                              w_ini=w_star, n_ini=n_ini, vgg=vgg, steps=steps_w, lr=lr_w, callback=callback)

    # 3. n_out = Mk_n(M_blur, w_out, n_ini, I_1, I_2)
    n_out, res_n = optimize_noise(G, M=M_blur, w=w_out, n_ini=n_ini, x=I_1, y=I_2, steps=steps_n, lr=lr_n,
                                  callback=after_steps(callback, steps_w))

    out = render(G, w_out, n_out)
    core, away = (M_blur > 0.99).float(), (M_blur < 0.01).float()
    p1, p2 = psnr(out, I_1, core).cpu(), psnr(out, I_2, away).cpu()
    metrics = [{"psnr_image_region": float(p1[b]), "psnr_base_region": float(p2[b]),
                "steps_w": int(res_w.steps[b]), "steps_n": int(res_n.steps[b])} for b in range(batch)]
    meta = algorithm_meta(G, "crossover", blur_sigma=blur_sigma, steps_w=steps_w, steps_n=steps_n, lr_w=lr_w,
                          lr_n=lr_n)
    return EditResult(embedding(w_out, n_out, meta), out, metrics)
