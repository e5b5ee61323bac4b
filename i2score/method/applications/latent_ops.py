"""Global edits of embedded images (Image2StyleGAN, which Image2StyleGAN++ builds on):

    morph:                w = (1 − t)·w_a + t·w_b
    style mixing:         w = [w_content rows 0..k−1, w_style rows k..L−1]
    expression transfer:  w = w + λ·(w_b − w_a)

and the noise maps the edited ``w`` is rendered with (:data:`NOISE_POLICIES`). The noise stage
fits each image's maps to its own pixels, so they carry that image's content (an eye, a hair
edge); under an edited ``w`` that content paints over the edit. The policies:

* ``content``: the content image's maps (morph: image a's; style mixing: the content's;
  expression transfer: the target's);
* ``interpolate``: each map follows its ``w``: morph interpolates the maps by ``t``, style
  mixing takes each layer's map from the source of its W+ row, expression transfer keeps the
  target's (it has one image);
* ``resample``: fresh standard-normal maps from ``noise_seed`` (the same maps for every row, so
  a result does not depend on its batch);
* ``refit``: a short noise stage (``refit_steps`` of Mk_n, MSE) on the edited ``w`` from the
  resampled maps towards the content image's reconstruction (morph: the nearer endpoint's),
  so fine detail comes back only where the edited code can hold it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from i2score.data.latents import Latents
from i2score.generator.network import StyleGAN2
from i2score.method.applications.common import EditResult, algorithm_meta, check_batch, render
from i2score.method.blocks import optimize_noise

#: How an edited ``w`` gets its noise maps (see the module docstring).
NOISE_POLICIES = ("content", "interpolate", "resample", "refit")
#: Mk_n steps of the ``refit`` policy (Adam, the noise stage's lr 5).
REFIT_STEPS = 100
#: Each edit's default policy, chosen on the ground-truth benchmark (README "Editability";
#: ``i2s bench editability --n-pairs 8``, demo model): morph has no truth, and resampled maps make
#: its midpoints the most real (KID 0.84 vs 1.17 interpolated); style mixing is closest to the
#: truth with the content's maps (LPIPS 0.315 vs 0.381, KID 0.87 vs 1.22); expression transfer
#: with refitted maps (LPIPS 0.088 vs 0.095, 0.7 vs 2.1 levels changed outside the mouth).
DEFAULT_NOISE_POLICY = {"morph": "resample", "style_mix": "content", "expression_transfer": "refit"}


def edit_noise(G: StyleGAN2, policy: str, w: Tensor, *, content: Sequence[Tensor], interpolated: Sequence[Tensor],
               refit_target: Tensor, noise_seed: int | Sequence[int] = 0,
               refit_steps: int = REFIT_STEPS) -> list[Tensor]:
    """The noise maps of an edit's ``w [B, L, w_dim]`` under ``policy``.

    Args:
        content: the content image's maps (``[B, 1, r, r]`` each).
        interpolated: the maps that follow the edited ``w`` (see :data:`NOISE_POLICIES`).
        refit_target: ``[B, 3, R, R]`` in [-1, 1], the image ``refit`` fits the maps to.
        noise_seed: seed of ``resample`` and of ``refit``'s start: one for every image, or one
            per image.
        refit_steps: Mk_n steps of ``refit``.

    Returns:
        a list of ``[B, 1, r, r]`` maps in synthesis order.
    """
    if policy not in NOISE_POLICIES:
        raise ValueError(f"noise_policy must be one of {NOISE_POLICIES}, got {policy!r}")
    if policy == "content":
        return list(content)
    if policy == "interpolate":
        return list(interpolated)
    seeds = [noise_seed] * w.shape[0] if isinstance(noise_seed, int) else [int(v) for v in noise_seed]
    fresh = [m.to(G.device) for m in G.random_noise(w.shape[0], seeds)]
    if policy == "resample" or refit_steps == 0:
        return fresh
    # Edits run under no_grad (forward only); the refit stage needs gradients for the maps.
    with torch.enable_grad():
        maps, _ = optimize_noise(G, M=None, w=w, n_ini=fresh, x=refit_target, steps=refit_steps)
    return [m.detach() for m in maps]


def morph(a: Latents, b: Latents, t: float | Tensor, G: StyleGAN2, *,
          noise_policy: str = DEFAULT_NOISE_POLICY["morph"],
          noise_seed: int | Sequence[int] = 0, refit_steps: int = REFIT_STEPS) -> EditResult:
    """Morph: ``w = (1 − t)·w_a + t·w_b``, its noise by ``noise_policy`` (:data:`NOISE_POLICIES`;
    ``interpolate``: the maps likewise). ``t`` scalar or ``[B]`` in [0, 1] (values outside
    extrapolate). With ``interpolate``, ``t = 0`` and ``t = 1`` give the endpoints exactly."""
    la, lb = a.to(G.device), b.to(G.device)
    check_batch("b", lb, len(la))
    tt = torch.as_tensor(t, dtype=torch.float32, device=G.device).reshape(-1)
    if tt.numel() not in (1, len(la)):
        raise ValueError(f"t must be a scalar or have {len(la)} values, got {tt.numel()}")

    def lerp(x: Tensor, y: Tensor) -> Tensor:
        s = tt.reshape(-1, *([1] * (x.ndim - 1))).expand(x.shape[0], *([1] * (x.ndim - 1)))
        # torch.where keeps the endpoints bit-exact (x + t*(y - x) rounds at t = 1).
        return torch.where(s == 0, x, torch.where(s == 1, y, (1 - s) * x + s * y))

    w = lerp(la.w, lb.w)
    nearer_b = (tt.expand(len(la)) > 0.5).reshape(-1, 1, 1, 1)
    target = torch.where(nearer_b, render(G, lb.w, lb.noise), render(G, la.w, la.noise)) \
        if noise_policy == "refit" else la.w.new_empty(0)
    noise = edit_noise(G, noise_policy, w, content=la.noise,
                       interpolated=[lerp(x, y) for x, y in zip(la.noise, lb.noise, strict=True)],
                       refit_target=target, noise_seed=noise_seed, refit_steps=refit_steps)
    meta = algorithm_meta(G, "morph", t=tt.tolist(), noise_policy=noise_policy)
    return EditResult(Latents(w, noise, meta), render(G, w, noise), [{"t": float(v)} for v in tt.expand(len(la))])


def style_mix(content: Latents, style: Latents, k: int, G: StyleGAN2, *,
              noise_policy: str = DEFAULT_NOISE_POLICY["style_mix"],
              noise_seed: int | Sequence[int] = 0, refit_steps: int = REFIT_STEPS) -> EditResult:
    """Style mixing: synthesis layers ``0..k-1`` from ``content``, the rest from ``style``.

    The noise by ``noise_policy`` (:data:`NOISE_POLICIES`); with ``interpolate`` each layer
    takes its W+ row and its noise map from the same source, and ``k = L`` returns the content
    image and ``k = 0`` the style image exactly.
    """
    c, s = content.to(G.device), style.to(G.device)
    check_batch("style", s, len(c))
    if not 0 <= k <= G.num_ws:
        raise ValueError(f"k must be in 0..{G.num_ws}, got {k}")
    w = torch.cat([c.w[:, :k], s.w[:, k:]], dim=1)
    # Noise map i belongs to synthesis conv i, which W+ row i modulates.
    layered = [cn if i < k else sn for i, (cn, sn) in enumerate(zip(c.noise, s.noise, strict=True))]
    target = render(G, c.w, c.noise) if noise_policy == "refit" else c.w.new_empty(0)
    noise = edit_noise(G, noise_policy, w, content=c.noise, interpolated=layered, refit_target=target,
                       noise_seed=noise_seed, refit_steps=refit_steps)
    meta = algorithm_meta(G, "style_mix", k=k, noise_policy=noise_policy)
    return EditResult(Latents(w, noise, meta), render(G, w, noise), [{"k": k} for _ in range(len(c))])


def expression_transfer(target: Latents, a: Latents, b: Latents, strength: float, G: StyleGAN2, *,
                        noise_policy: str = DEFAULT_NOISE_POLICY["expression_transfer"],
                        noise_seed: int | Sequence[int] = 0,
                        refit_steps: int = REFIT_STEPS) -> EditResult:
    """Expression transfer: ``w = w_target + strength·(w_b − w_a)`` (a, b: the same person with
    a neutral and a target expression; a batch-1 pair applies to every target); the noise by
    ``noise_policy`` (:data:`NOISE_POLICIES`; ``content`` and ``interpolate``: the target's)."""
    t = target.to(G.device)
    la, lb = a.to(G.device), b.to(G.device)
    for name, lat in (("a", la), ("b", lb)):
        if len(lat) not in (1, len(t)):
            raise ValueError(f"{name} has {len(lat)} latents for {len(t)} targets")
    w = t.w + strength * (lb.w - la.w)
    refit_target = render(G, t.w, t.noise) if noise_policy == "refit" else t.w.new_empty(0)
    noise = edit_noise(G, noise_policy, w, content=t.noise, interpolated=t.noise, refit_target=refit_target,
                       noise_seed=noise_seed, refit_steps=refit_steps)
    meta = algorithm_meta(G, "expression_transfer", strength=strength, noise_policy=noise_policy)
    return EditResult(Latents(w, noise, meta), render(G, w, noise),
                      [{"strength": strength} for _ in range(len(t))])
