"""Local style transfer (paper Algorithm 6): restyle a region of an image like a style image.

    Input: images I_1, I_2; mask M_blur;  Output: the embedded code (w_out, n_out)
    1  (w*, n_ini) ← initialize()
    2  w_out = W_l(M_blur, M_blur, 1, w*, n_ini, I_1) + Mst(1 − M_blur, w*, n_ini, I_2)
    3  n_out = Mk_n(M_blur, w_out, n_ini, I_1, G(w_out))

``I_1`` is the content image with its cached embedding ``(w*, n_ini)``, ``I_2`` the style image.
``M_blur`` marks what is kept: everything outside the blurred region the user's mask ``M``
marks white.
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
    locality_metrics,
    render,
    require_noise,
)
from i2score.method.blocks import StepCallback, optimize_noise, optimize_w
from i2score.method.masks import as_mask, enlarged_soft_mask
from i2score.method.objective import StyleTarget, embedding_target


def local_style_transfer(content_latents: Latents, content: Tensor, style: Tensor, mask: Tensor, G: StyleGAN2, *,
                         style_mask: Tensor | None = None, blur_sigma: float = 2.0, style_weight: float = 0.05,
                         steps_w: int = 1000, steps_n: int = 1000, lr_w: float = 0.01, lr_n: float = 5.0,
                         vgg: VGG16Features | None = None, callback: StepCallback | None = None) -> EditResult:
    """Restyle the ``mask`` region of ``content`` like ``style`` (Algorithm 6).

    Args:
        content_latents: ``(w*, n_ini)``, the cached embedding of ``content``.
        content: ``I_1``, ``[B, 3, R, R]`` in [-1, 1].
        style: ``I_2``, ``[B or 1, 3, R, R]`` in [-1, 1].
        mask: ``M``, ``[B or 1, 1, R, R]`` in [0, 1], white = the region to restyle.
        style_mask: white = the part of the style image whose statistics are the target
            (``[B or 1, 1, R, R]``; None = the whole style image).
        blur_sigma: Gaussian sigma, in pixels, of the band around the region.
        style_weight: λs of ``Mst`` relative to the MSE's 1 (the paper's 5e-7 : 1e-5).
        steps_w, steps_n, lr_w, lr_n: the two stages (paper: 1000 + 1000, Adam).

    Returns:
        :class:`~i2score.method.applications.common.EditResult`; metrics: see
        :func:`~i2score.method.applications.common.locality_metrics` (vs ``content``).
    """
    require_noise(G, "local style transfer (its noise stage)")
    I_1 = as_images(content, G, "content")
    I_2 = as_images(style, G, "style")
    batch = I_1.shape[0]
    check_batch("content_latents", content_latents, batch)
    M = as_mask(mask.to(G.device), batch, G.resolution)
    blurred_region = enlarged_soft_mask(M, 0, blur_sigma)
    M_blur = 1.0 - blurred_region
    vgg = vgg if vgg is not None else load_vgg16(device=G.device)
    y_mask = None if style_mask is None else as_mask(style_mask.to(G.device), I_2.shape[0], G.resolution)

    # 1. (w*, n_ini) ← initialize(): the cached embedding of the content image
    start = content_latents.to(G.device)
    w_star, n_ini = start.w, start.noise

    # 2. w_out = W_l(M_blur, M_blur, 1, w*, n_ini, I_1) + Mst(1 − M_blur, w*, n_ini, I_2)
    # Mst measures the region itself rather than the whole blurred band 1 − M_blur: the Gram
    # statistics are averaged over the mask's weight, and the band's soft edge would mix kept
    # content into the statistics the region is pulled towards.
    w_out, res_w = optimize_w(G, [embedding_target(I_1, Mp=M_blur, Mm=M_blur),
                                  StyleTarget(I_2, Ms=M, y_mask=y_mask, weight=style_weight)],
                              w_ini=w_star, n_ini=n_ini, vgg=vgg, steps=steps_w, lr=lr_w, callback=callback)

    # 3. n_out = Mk_n(M_blur, w_out, n_ini, I_1, G(w_out))
    n_out, res_n = optimize_noise(G, M=M_blur, w=w_out, n_ini=n_ini, x=I_1, y=render(G, w_out, n_ini),
                                  steps=steps_n, lr=lr_n, callback=after_steps(callback, steps_w))

    out = render(G, w_out, n_out)
    metrics = locality_metrics(out, render(G, w_star, n_ini), I_1, M, blurred_region, res_w, res_n)
    meta = algorithm_meta(G, "style_transfer", blur_sigma=blur_sigma, style_weight=style_weight, steps_w=steps_w,
                          steps_n=steps_n, lr_w=lr_w, lr_n=lr_n)
    return EditResult(embedding(w_out, n_out, meta), out, metrics)
