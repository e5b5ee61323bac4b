"""Noise policies of the global edits: what each one renders with, determinism, batch independence."""

from __future__ import annotations

import pytest
import torch

from i2score.data.latents import Latents
from i2score.method.applications.latent_ops import (
    NOISE_POLICIES,
    edit_noise,
    expression_transfer,
    morph,
    style_mix,
)


@pytest.fixture()
def codes(small_G) -> Latents:
    gen = torch.Generator().manual_seed(5)
    w = small_G.mapping(torch.randn(3, small_G.cfg.z_dim, generator=gen))[:, None].repeat(1, small_G.num_ws, 1)
    return Latents(w.detach(), small_G.random_noise(3, 8))


def _edits(G, c: Latents, policy: str, rows: slice = slice(None)) -> list[torch.Tensor]:
    a, b = c[rows], Latents(c.w.roll(1, 0), [n.roll(1, 0) for n in c.noise])[rows]
    return [morph(a, b, 0.4, G, noise_policy=policy, noise_seed=4, refit_steps=3).images,
            style_mix(a, b, 3, G, noise_policy=policy, noise_seed=4, refit_steps=3).images,
            expression_transfer(a, a[:1], b[:1], 0.5, G, noise_policy=policy, noise_seed=4, refit_steps=3).images]


@pytest.mark.parametrize("policy", NOISE_POLICIES)
def test_each_policy_is_deterministic_and_batch_independent(small_G, codes: Latents, policy: str) -> None:
    whole = _edits(small_G, codes, policy)
    again = _edits(small_G, codes, policy)
    for x, y in zip(whole, again, strict=True):
        assert torch.equal(x, y)
    # Row 2 alone gives what it gave in the batch of 3 (expression transfer's pair is row 0's,
    # so that op is compared on rows computed with the same pair).
    alone = _edits(small_G, codes, policy, slice(2, 3))
    for x, y in zip(whole[:2], alone[:2], strict=True):
        assert torch.allclose(x[2:3], y, atol=1e-5), policy


def test_policies_take_the_maps_they_name(small_G, codes: Latents) -> None:
    w = codes.w
    content, other = codes.noise, [n.flip(0) for n in codes.noise]
    target = torch.zeros(3, 3, small_G.resolution, small_G.resolution)

    def maps(policy: str, seed: int | list[int] = 0, steps: int = 3) -> list[torch.Tensor]:
        return edit_noise(small_G, policy, w, content=content, interpolated=other, refit_target=target,
                          noise_seed=seed, refit_steps=steps)

    assert all(torch.equal(x, y) for x, y in zip(maps("content"), content, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(maps("interpolate"), other, strict=True))
    fresh = small_G.random_noise(3, [7, 7, 7])
    assert all(torch.equal(x, y) for x, y in zip(maps("resample", 7), fresh, strict=True))
    per_row = maps("resample", [1, 2, 3])
    assert not torch.equal(per_row[0][0], per_row[0][1])
    # Refitting moves the resampled maps towards the target (here: flat grey) and changes the render.
    with torch.no_grad():  # how edits run: forward only; refit turns gradients on for itself
        refit = maps("refit", 7)
    assert not torch.equal(refit[-1], fresh[-1])
    with torch.no_grad():
        err_fresh = (small_G.synthesize(w, fresh) - target).square().mean()
        err_refit = (small_G.synthesize(w, refit) - target).square().mean()
    assert err_refit < err_fresh
    with pytest.raises(ValueError, match="noise_policy"):
        maps("smear")


def test_interpolate_keeps_the_endpoints_exact(small_G, codes: Latents) -> None:
    b = Latents(codes.w.roll(1, 0), [n.roll(1, 0) for n in codes.noise])
    start = morph(codes, b, 0.0, small_G, noise_policy="interpolate").images
    own = morph(codes, codes, 0.0, small_G, noise_policy="interpolate").images
    assert torch.equal(start, own)
    assert torch.equal(style_mix(codes, b, small_G.num_ws, small_G, noise_policy="interpolate").images, own)
