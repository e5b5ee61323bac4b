"""W-closeness priors of the W+ stage: parsing, the penalties' values, and their effect."""

from __future__ import annotations

import pytest
import torch

from i2score.method.applications.reconstruct import reconstruct
from i2score.method.priors import (
    GAUSSIANIZE_SAMPLES,
    GAUSSIANIZE_SEED,
    WCloseness,
    gaussianized_w,
    w_closeness_penalty,
    w_prior,
)


def test_parse_and_spec_round_trip() -> None:
    assert WCloseness.parse("none") == WCloseness() and not WCloseness().active
    c = WCloseness.parse("offset=1e-3, pnorm=0.01")
    assert c == WCloseness(offset_weight=1e-3, pnorm_weight=0.01) and c.active
    assert WCloseness.parse(c.spec()) == c and WCloseness().spec() == "none"
    for bad in ("offset", "offset=x", "radius=1", "offset=1,offset=2", "pnorm=-1", "pnorm=nan"):
        with pytest.raises(ValueError):
            WCloseness.parse(bad)


def test_row_offset_penalty_is_zero_in_w_and_grows_with_spread(small_G) -> None:
    w = small_G.mapping(torch.randn(3, small_G.cfg.z_dim))[:, None].repeat(1, small_G.num_ws, 1)
    off = WCloseness(offset_weight=2.0)
    assert torch.allclose(w_closeness_penalty(w, off, None), torch.zeros(3), atol=1e-8)
    spread = w + torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    pen = w_closeness_penalty(spread, off, None)
    # 2 · mean_l ||w_l − mean||² of unit noise: about 2 · w_dim · (1 − 1/L).
    expect = 2 * small_G.cfg.w_dim * (1 - 1 / small_G.num_ws)
    assert torch.allclose(pen, torch.full((3,), expect), rtol=0.15)


def test_pnorm_whitens_the_generator_s_own_samples(small_G) -> None:
    stats = gaussianized_w(small_G)
    assert gaussianized_w(small_G) is stats  # computed once per generator
    gen = torch.Generator().manual_seed(GAUSSIANIZE_SEED)
    z = torch.randn(GAUSSIANIZE_SAMPLES, small_G.cfg.z_dim, generator=gen)
    with torch.no_grad():
        v = stats(small_G.mapping(z))
    cov = torch.cov(v.T.double())
    # Unit variance in every direction but those floored as (near-)unused by the mapping.
    diag = cov.diagonal()
    assert float(diag.max()) < 1.02 and float(((diag - 1).abs() < 0.02).float().mean()) > 0.99
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 0.02
    # About 1 for a typical w (per row, per dimension), much more for a code far off W.
    w = small_G.mapping(torch.randn(64, small_G.cfg.z_dim, generator=gen))[:, None]
    typical = w_closeness_penalty(w, WCloseness(pnorm_weight=1.0), stats)
    assert 0.7 < float(typical.mean()) < 1.3
    far = w_closeness_penalty(w + 3 * w.std(), WCloseness(pnorm_weight=1.0), stats)
    assert float(far.mean()) > 3 * float(typical.mean())
    with pytest.raises(ValueError, match="statistics"):
        w_closeness_penalty(w, WCloseness(pnorm_weight=1.0), None)
    assert w_prior(small_G, WCloseness()) is None and w_prior(small_G, None) is None


@pytest.mark.parametrize(("option", "metric"), [("w_offset_weight", "w_row_offset"), ("pnorm_weight", "w_pnorm")])
def test_each_option_lowers_its_own_penalty(small_G, vgg, target_images, option: str, metric: str) -> None:
    x = target_images[:2]
    kwargs = {"steps_w": 30, "steps_n": 0, "seed": 0, "init": "uniform", "vgg": vgg, "lpips": False,
              "lr_w": 0.05}
    plain = reconstruct(x, small_G, **kwargs)
    weight = {"w_offset_weight": 0.05, "pnorm_weight": 0.5}[option]
    held = reconstruct(x, small_G, **kwargs, **{option: weight})  # type: ignore[arg-type]
    for p, h in zip(plain.metrics, held.metrics, strict=True):
        assert h[metric] < 0.8 * p[metric], (p[metric], h[metric])
    # Same inputs, same result: the prior is deterministic.
    again = reconstruct(x, small_G, **kwargs, **{option: weight})  # type: ignore[arg-type]
    assert torch.equal(again.latents.w, held.latents.w)
