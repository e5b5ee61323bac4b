"""Generator quality (``i2s bench generator``): perceptual path length and realism of samples.

**Realism**: KID of seeded random samples against held-out procedural portraits, on VGG16
features (:data:`i2score.features.kid.KID_NOTE`: Inception weights cannot be fetched here, so the
figures compare our models with each other, not with published FID/KID).

**Perceptual path length** (StyleGAN, Karras et al. 2019, Sec. 3; the ``ppl_wend`` of the
StyleGAN2 paper): for ``w1, w2`` mapped from random ``z``, the LPIPS distance between
``G(w1)`` and ``G(lerp(w1, w2, ε))`` (same noise), divided by ``ε²``; the mean after dropping
the pairs outside the 1st–99th percentiles. Lower means a smoother W: equal steps change the
image equally, which is what edits and interpolations between embedded images rely on. LPIPS
runs at the generator's resolution (no crop, no resize): figures compare models of one
resolution, not with published FFHQ numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from i2score.features import LPIPS, VGG16Features
from i2score.features.kid import KIDFeatures, kid
from i2score.generator.network import StyleGAN2
from i2score.kernels import batch_invariant

#: The interpolation step of the path length (NVIDIA's ``epsilon``).
PPL_EPSILON = 1e-4


def perceptual_path_length(G: StyleGAN2, lpips: LPIPS, *, n: int = 1000, seed: int = 0, batch: int = 50,
                           epsilon: float = PPL_EPSILON) -> dict[str, float]:
    """The perceptual path length in W at the path ends (``ppl_wend``) over ``n`` seeded pairs.

    Returns ``{"ppl": mean of the kept distances, "ppl_median": median, "n": pairs}``; the same
    seed gives the same figure on one device.
    """
    # Every pair drawn up front, so a figure does not depend on the batch size.
    z = torch.randn(2, n, G.cfg.z_dim, generator=torch.Generator().manual_seed(seed))
    dists: list[np.ndarray] = []
    with torch.no_grad(), batch_invariant(G.device):
        for start in range(0, n, batch):
            b = min(batch, n - start)
            w1 = G.mapping(z[0, start:start + b].to(G.device))
            w2 = G.mapping(z[1, start:start + b].to(G.device))
            w_eps = w1.lerp(w2, epsilon)
            noise = [m.to(G.device) for m in G.random_noise(b, [seed * 1_000_003 + start + i for i in range(b)])]
            ws = torch.cat([w1, w_eps])[:, None].expand(-1, G.num_ws, -1)
            img = G.synthesize(ws, [torch.cat([m, m]) for m in noise]).float()
            d = lpips(img[:b].clamp(-1, 1), img[b:].clamp(-1, 1)).double() / epsilon**2
            dists.append(d.cpu().numpy())
    all_d = np.concatenate(dists)
    lo, hi = np.percentile(all_d, 1, method="lower"), np.percentile(all_d, 99, method="higher")
    kept = all_d[(all_d >= lo) & (all_d <= hi)]
    return {"ppl": float(kept.mean()), "ppl_median": float(np.median(all_d)), "n": int(len(all_d))}


def generator_quality(G: StyleGAN2, vgg: VGG16Features, lpips: LPIPS, *, n_samples: int = 256,
                      n_reference: int = 256, n_ppl: int = 500, seed: int = 0) -> dict[str, Any]:
    """Realism and smoothness of a generator trained on the procedural portraits.

    KID (:mod:`i2score.features.kid`, VGG16 features) of ``n_samples`` seeded random samples
    against the first ``n_reference`` held-out portraits, and :func:`perceptual_path_length`
    over ``n_ppl`` pairs. Returns a JSON-able dict (``kid``, ``kid_std``, ``ppl``, ``ppl_median``,
    the counts and the weights' hash).
    """
    from i2score.demo.portraits import heldout_images

    extractor = KIDFeatures(vgg)
    with torch.no_grad():
        reference = extractor(heldout_images(n_reference, G.resolution).to(G.device))
        samples = torch.cat([G.sample(min(64, n_samples - s), seed * 1_000_003 + s)[0].clamp(-1, 1)
                             for s in range(0, n_samples, 64)])
        realism = kid(extractor(samples), reference, seed=seed)
    return {"sha256": G.weights_sha256, "kid": realism.kid, "kid_std": realism.std, "n_samples": n_samples,
            "n_reference": n_reference, **perceptual_path_length(G, lpips, n=n_ppl, seed=seed)}
