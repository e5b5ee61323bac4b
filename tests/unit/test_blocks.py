"""Building blocks: masks are respected exactly, images never influence each other."""

from __future__ import annotations

import pytest
import torch

from i2score.method.blocks import EarlyStop, blend_activations, optimize_noise, optimize_w
from i2score.method.objective import StyleTarget, embedding_target


def _start(G, batch):
    w = G.mean_w(1000, 0)[None, None].expand(batch, G.num_ws, -1).clone()
    return w, G.random_noise(batch, [0] * batch)


def test_w_rows_with_mask_zero_are_bitwise_unchanged(small_G, vgg, target_images):
    w0, n0 = _start(small_G, 4)
    w0 = w0 + 0.01 * torch.randn(w0.shape, generator=torch.Generator().manual_seed(3))
    wm = torch.zeros(4, small_G.num_ws, dtype=torch.bool)
    wm[0, :3] = True
    wm[1, 5:] = True
    wm[2, ::2] = True  # image 3: nothing may change
    w, _ = optimize_w(small_G, [embedding_target(target_images)], w_ini=w0, n_ini=n0, vgg=vgg, wm=wm, steps=5)
    assert torch.equal(w[~wm], w0[~wm])
    changed = (w != w0).any(dim=2)
    assert bool(changed[wm].all())


def test_noise_maps_with_mask_zero_are_bitwise_unchanged(small_G, target_images):
    w0, n0 = _start(small_G, 4)
    nm = torch.zeros(4, len(n0), dtype=torch.bool)
    nm[0, -2:] = True
    nm[1, :3] = True
    noise, _ = optimize_noise(small_G, M=None, w=w0, n_ini=n0, x=target_images, nm=nm, steps=5)
    for j, (n, init) in enumerate(zip(noise, n0, strict=True)):
        for b in range(4):
            same = torch.equal(n[b], init[b])
            assert same != bool(nm[b, j]), (b, j)


def test_pixels_outside_the_masks_have_no_influence(small_G, vgg, target_images):
    w0, n0 = _start(small_G, 4)
    mask = torch.zeros(4, 1, 32, 32)
    mask[:, :, :, :16] = 1.0
    mask[2, :, 8:24, :] = 1.0
    perturbed = target_images + 5.0 * (1 - mask) * torch.randn(target_images.shape,
                                                               generator=torch.Generator().manual_seed(1))
    assert not torch.equal(perturbed, target_images)
    a, _ = optimize_w(small_G, [embedding_target(target_images, Mp=mask, Mm=mask)], w_ini=w0, n_ini=n0, vgg=vgg,
                      steps=4)
    b, _ = optimize_w(small_G, [embedding_target(perturbed, Mp=mask, Mm=mask)], w_ini=w0, n_ini=n0, vgg=vgg, steps=4)
    assert torch.equal(a, b)
    # Noise block: x is used inside M only, y outside only.
    y = torch.flip(target_images, dims=[0])
    y_perturbed = y + 5.0 * mask * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    na, _ = optimize_noise(small_G, M=mask, w=w0, n_ini=n0, x=target_images, y=y, steps=4)
    nb, _ = optimize_noise(small_G, M=mask, w=w0, n_ini=n0, x=perturbed, y=y_perturbed, steps=4)
    assert all(torch.equal(p, q) for p, q in zip(na, nb, strict=True))
    # ...and the masks are not vacuous: a change inside them does change the result.
    inside = target_images + 0.5 * mask
    c, _ = optimize_w(small_G, [embedding_target(inside, Mp=mask, Mm=mask)], w_ini=w0, n_ini=n0, vgg=vgg, steps=4)
    assert not torch.equal(a, c)


def test_optimisation_lowers_the_loss_with_adam_and_gd(small_G, vgg, target_images):
    w0, n0 = _start(small_G, 2)
    x = target_images[:2]
    for kind, lr in (("adam", 0.01), ("gd", 0.8)):
        losses: list[torch.Tensor] = []

        def record(step: int, loss: torch.Tensor, seen: list[torch.Tensor] = losses) -> None:
            seen.append(loss.clone())

        optimize_w(small_G, [embedding_target(x)], w_ini=w0, n_ini=n0, vgg=vgg, steps=30, optimizer=kind, lr=lr,
                   callback=record)
        assert bool((losses[-1] < losses[0]).all()), kind


def test_style_term_and_w_regulariser_enter_the_objective(small_G, vgg, target_images):
    w0, n0 = _start(small_G, 2)
    x = target_images[:2]
    plain, _ = optimize_w(small_G, [embedding_target(x)], w_ini=w0, n_ini=n0, vgg=vgg, steps=5)
    styled, res = optimize_w(small_G, [embedding_target(x), StyleTarget(target_images[2:3], weight=10.0)],
                             w_ini=w0, n_ini=n0, vgg=vgg, steps=5)
    assert not torch.equal(plain, styled) and torch.isfinite(res.loss).all()
    anchored, _ = optimize_w(small_G, [embedding_target(x)], w_ini=w0, n_ini=n0, vgg=vgg, steps=5, w_reg=(w0, 1e3))
    assert (anchored - w0).norm() < (plain - w0).norm()


def test_early_stop_freezes_converged_images_and_saves_steps(small_G, target_images):
    w0, n0 = _start(small_G, 4)
    x = target_images.clone()
    x[1] = small_G.synthesize(w0[1:2], [n[1:2] for n in n0])[0]  # already perfect: stops first
    stop = EarlyStop(patience=10, min_delta_db=0.05, check_every=5)
    noise, res = optimize_noise(small_G, M=None, w=w0, n_ini=n0, x=x, steps=200, lr=0.5, early_stop=stop)
    assert int(res.steps[1]) < 200
    assert int(res.steps.min()) < int(res.steps.max()) or int(res.steps.max()) < 200
    # The frozen image keeps the values it had when it stopped, and the others still improve.
    full, _ = optimize_noise(small_G, M=None, w=w0, n_ini=n0, x=x, steps=int(res.steps[1]), lr=0.5)
    assert all(torch.allclose(a[1], b[1], rtol=1e-5, atol=1e-6) for a, b in zip(noise, full, strict=True))


def test_activation_blend_modes(small_G):
    w1, w2 = small_G.map(small_G.random_z(2, 0)), small_G.map(small_G.random_z(2, 1))
    n = small_G.random_noise(2, 5)
    zero, one = torch.zeros(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    img1 = small_G.synthesize(w1, n)
    # M1 = M2 = 1 keeps A (the base) everywhere, so the result is image 1 exactly, in every mode.
    for mode in ("copy", "average", "channels"):
        out = blend_activations(small_G, (w1, n), (w2, n), M1=1 - zero, M2=1 - zero, layer=3, mode=mode,
                                channels=torch.arange(32) % 2 == 0)
        assert torch.equal(out, img1), mode
    # A full copy at the last layer is the donor's activations continued with the base's
    # styles: different from both images.
    full = blend_activations(small_G, (w1, n), (w2, n), M1=1 - one, M2=1 - one, layer=3)
    assert not torch.allclose(full, img1)
    half = zero.clone()
    half[..., 16:] = 1
    outs = {m: blend_activations(small_G, (w1, n), (w2, n), M1=1 - half, M2=1 - half, layer="conv3", mode=m,
                                 channels=torch.arange(32) % 2 == 0) for m in ("copy", "average", "channels")}
    assert not torch.allclose(outs["copy"], outs["average"]) and not torch.allclose(outs["copy"], outs["channels"])
    with pytest.raises(ValueError, match="copy\\|average"):
        blend_activations(small_G, (w1, n), (w2, n), M1=1 - half, M2=1 - half, layer=3, mode="swap")


def test_objective_validation(small_G, target_images):
    w0, n0 = _start(small_G, 1)
    with pytest.raises(ValueError, match="VGG16"):
        optimize_w(small_G, [embedding_target(target_images[:1])], w_ini=w0, n_ini=n0, vgg=None, steps=1)
    with pytest.raises(ValueError, match="at least one target"):
        optimize_w(small_G, [], w_ini=w0, n_ini=n0, vgg=None, steps=1)
    style = StyleTarget(target_images[:1])
    with pytest.raises(ValueError, match="at most one style"):
        optimize_w(small_G, [style, style], w_ini=w0, n_ini=n0, vgg=None, steps=1)
