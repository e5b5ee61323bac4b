"""Hybrid inversion (an encoder start), per-image converge-stopping and warm starts."""

from __future__ import annotations

import pytest
import torch

from i2score.encoders import EncoderConfig
from i2score.encoders.build import build_encoder
from i2score.method.applications import reconstruct, state_from_arrays, state_to_arrays
from i2score.method.blocks import EarlyStop, optimize_noise


@pytest.fixture(scope="module")
def encoder(small_G):
    torch.manual_seed(3)
    cfg = EncoderConfig(arch="e4e", backbone="small", n_styles=small_G.num_ws, w_dim=small_G.w_dim, input_size=64)
    return build_encoder(cfg, small_G.mean_w(200, 0)).eval().requires_grad_(False)


def _same(a, b):
    return torch.equal(a.latents.w, b.latents.w) and all(
        torch.equal(x, y) for x, y in zip(a.latents.noise, b.latents.noise, strict=True))


def test_an_encoder_start_gives_the_same_result_alone_and_in_a_batch(small_G, vgg, encoder, target_images):
    kw = {"steps_w": 6, "steps_n": 6, "init": "encoder", "encoder": encoder, "vgg": vgg, "lpips": False}
    batch = reconstruct(target_images, small_G, **kw)
    alone = reconstruct(target_images[2:3], small_G, **kw)
    assert torch.equal(batch.latents.w[2:3], alone.latents.w)
    assert all(torch.equal(n[2:3], m) for n, m in zip(batch.latents.noise, alone.latents.noise, strict=True))
    # The encoder's code is the start: different from the mean latent's, and 0 steps return it.
    start = reconstruct(target_images, small_G, steps_w=0, steps_n=0, init="encoder", encoder=encoder, vgg=vgg,
                        lpips=False)
    mean = reconstruct(target_images, small_G, steps_w=0, steps_n=0, init="mean", vgg=vgg, lpips=False)
    assert not torch.equal(start.latents.w, mean.latents.w)
    assert [m["psnr_init"] for m in start.metrics] == [m["psnr_wn"] for m in start.metrics]


def test_an_encoder_start_needs_an_encoder(small_G, vgg, target_images):
    with pytest.raises(ValueError, match="needs an encoder"):
        reconstruct(target_images, small_G, steps_w=1, steps_n=1, init="encoder", vgg=vgg, lpips=False)


def test_converge_stopping_never_changes_an_image_that_did_not_stop(small_G, target_images):
    w = small_G.mean_w(200, 0)[None, None].expand(4, small_G.num_ws, -1).clone()
    n0 = small_G.random_noise(4, [0] * 4)
    # Image 1 is already matched (its target is rendered from w, n0): it stops at the first check.
    x = target_images.clone()
    with torch.no_grad():
        x[1] = small_G.synthesize(w[1:2], [n[1:2] for n in n0])[0]
    stop = EarlyStop(patience=10, min_delta_db=0.5, check_every=5)
    off, res_off = optimize_noise(small_G, M=None, w=w, n_ini=n0, x=x, steps=40, lr=0.5)
    on, res_on = optimize_noise(small_G, M=None, w=w, n_ini=n0, x=x, steps=40, lr=0.5, early_stop=stop)
    ran_all = [b for b in range(4) if int(res_on.steps[b]) == 40]
    stopped = [b for b in range(4) if int(res_on.steps[b]) < 40]
    assert 1 in stopped and ran_all, (res_on.steps, "the test needs images of both kinds")
    for b in ran_all:
        assert all(torch.equal(p[b], q[b]) for p, q in zip(off, on, strict=True)), f"image {b} changed"
    assert all(res_on.states[b].stopped for b in stopped)


@pytest.mark.parametrize("first, then", [((5, 4), (12, 10)), ((12, 4), (12, 10)), ((12, 10), (12, 10))])
def test_a_warm_start_continues_exactly_where_the_cached_embedding_ended(small_G, vgg, encoder, target_images,
                                                                         first, then):
    kw = {"init": "encoder", "encoder": encoder, "vgg": vgg, "lpips": False, "seed": 2,
          "early_stop": EarlyStop(patience=4, min_delta_db=0.01, check_every=2)}
    short = reconstruct(target_images[:2], small_G, steps_w=first[0], steps_n=first[1], **kw)
    # Through the cache's array form, as a run stores it.
    states = [state_from_arrays(state_to_arrays(s)) for s in short.states]
    warm = reconstruct(target_images[:2], small_G, steps_w=then[0], steps_n=then[1], resume=states, **kw)
    cold = reconstruct(target_images[:2], small_G, steps_w=then[0], steps_n=then[1], **kw)
    assert _same(warm, cold)
    assert [m["steps"] for m in warm.metrics] == [m["steps"] for m in cold.metrics]
    taken = [m["warm_start"] for m in warm.metrics]
    if first[0] < then[0]:  # the W+ stage continues; the noise stage starts over (w changed)
        assert taken == [s.w_stage.steps for s in short.states]
    else:  # the W+ stage is reused and the noise stage continues
        assert taken == [s.w_stage.steps + s.noise_stage.steps for s in short.states]


def test_a_warm_start_cannot_rewind_a_stage(small_G, vgg, target_images):
    kw = {"vgg": vgg, "lpips": False}
    longer = reconstruct(target_images[:1], small_G, steps_w=6, steps_n=2, **kw)
    with pytest.raises(ValueError, match="cannot warm-start"):
        reconstruct(target_images[:1], small_G, steps_w=3, steps_n=2, resume=longer.states, **kw)
    # A stage that stopped by itself after more steps than asked is no shortcut either.
    longer.states[0].w_stage.stopped = True
    with pytest.raises(ValueError, match="cannot warm-start"):
        reconstruct(target_images[:1], small_G, steps_w=3, steps_n=2, resume=longer.states, **kw)
    # A longer noise stage is not reused for a shorter one: that stage starts over.
    longer.states[0].w_stage.stopped = False
    fewer_noise = reconstruct(target_images[:1], small_G, steps_w=6, steps_n=1, resume=longer.states, **kw)
    cold = reconstruct(target_images[:1], small_G, steps_w=6, steps_n=1, **kw)
    assert _same(fewer_noise, cold) and fewer_noise.metrics[0]["warm_start"] == 6
