"""Attribute-level feature transfer (paper Sec. 7.6): another image's features in a region.

    I_att(M1, M2, w, n, l) with M1 = M2 = 1 − M_s

Both cached codes run the generator up to layer ``l``; the image keeps its activations where
``M1`` is 1 and takes the donor's where ``1 − M2`` is 1, i.e. inside the user's mask ``M_s``;
the layers after ``l`` continue with the image's own styles and noise. Forward only.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from i2score.data.latents import Latents
from i2score.generator.network import StyleGAN2
from i2score.kernels import batch_invariant
from i2score.method.applications.common import EditResult, algorithm_meta, check_batch
from i2score.method.blocks import blend_activations
from i2score.method.masks import as_mask

ATTRIBUTE_LAYER = 4
"""Default layer of attribute transfer: ``conv4``, the 5th synthesis conv in execution order
(conv0 is the 4x4 conv; conv3/conv4 are the 16x16 pair, so conv4 is the last 16x16 conv).
The paper's "layer 4" is ambiguous; any ``conv{i}`` or index can be passed."""


def attribute_transfer(latents: Latents, donor_latents: Latents, mask: Tensor, G: StyleGAN2, *,
                       layer: int | str = ATTRIBUTE_LAYER, mode: str = "copy", alpha: float = 0.5,
                       channels: Tensor | None = None) -> EditResult:
    """The donor's activations at ``layer`` inside ``mask`` (Sec. 7.6).

    Args:
        latents: the image's cached embedding ``(w, n)``.
        donor_latents: the donor's cached embedding.
        mask: ``M_s``, ``[B or 1, 1, R, R]`` in [0, 1], white = the region that receives the
            donor's attribute. An all-zero mask reproduces the image exactly.
        layer: ``l``, ``"conv{i}"`` or an index (default :data:`ATTRIBUTE_LAYER`).
        mode: the paper's spatial ``copy`` (its best), ``average`` (donor weight ``alpha``) or
            ``channels`` (the donor on the channels ``channels`` ``[C]`` selects); see
            :func:`~i2score.method.blocks.blend_activations`.

    Returns:
        :class:`~i2score.method.applications.common.EditResult` whose latents are the image's
        (the edit lives in the activations, so it is recorded in ``meta`` rather than in ``w``);
        metric ``seconds`` per image.
    """
    a, b = latents.to(G.device), donor_latents.to(G.device)
    batch = len(a)
    check_batch("donor_latents", b, batch)
    M_s = as_mask(mask.to(G.device), batch, G.resolution)
    t0 = time.perf_counter()
    # I_att(M1, M2, w, n, l) with M1 = M2 = 1 − M_s
    M1 = M2 = 1 - M_s
    with torch.no_grad(), batch_invariant(G.device):
        out = blend_activations(G, (a.w, a.noise), (b.w, b.noise), M1=M1, M2=M2, layer=layer, mode=mode,
                                alpha=alpha, channels=channels)
    seconds = (time.perf_counter() - t0) / batch
    meta = algorithm_meta(G, "attribute_transfer", layer=G.layer_names[G.layer_index(layer)], mode=mode, alpha=alpha)
    return EditResult(Latents(a.w, a.noise, meta), out, [{"seconds": seconds} for _ in range(batch)])
