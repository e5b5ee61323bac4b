"""Inpainting (Alg. 4) mechanics on a small random generator, the mask helpers, and the Telea
baseline. Quality on the demo model: tests/test_demo_model.py and ``i2s bench quality``."""

from __future__ import annotations

import pytest
import torch

from i2score.bench.quality import telea_inpaint
from i2score.method.applications import inpaint, inpainting_w_rows
from i2score.method.masks import as_mask, dilate, enlarged_soft_mask, gaussian_blur
from i2score.method.metrics import psnr


def _hole(res: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(1, 1, res, res)
    m[..., y0:y1, x0:x1] = 1
    return m


def test_mask_helpers() -> None:
    m = _hole(32, 10, 20, 8, 16)
    assert as_mask(m[0, 0]).shape == (1, 1, 32, 32)
    assert as_mask(m, batch=3).shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match="generator needs 64x64"):
        as_mask(m, resolution=64)
    with pytest.raises(ValueError, match="masks for a batch"):
        as_mask(torch.zeros(2, 1, 8, 8), batch=3)
    assert dilate(m, 2).sum() == (10 + 4) * (8 + 4)
    b = gaussian_blur(m, 1.5)
    assert torch.allclose(b.sum(), m.sum(), rtol=1e-3) and b.max() < 1
    soft = enlarged_soft_mask(m, 2, 1.0)
    assert torch.equal(soft[m.bool()], torch.ones(int(m.sum())))  # never smaller than the hole
    assert (soft > 0).sum() > dilate(m, 2).sum() - 1
    assert soft.min() >= 0 and soft.max() <= 1


def test_inpainting_rows_follow_the_paper() -> None:
    rows = inpainting_w_rows(18)
    assert rows.nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 17]  # 1-9, 17, 18
    assert inpainting_w_rows(10).nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 8, 9]


def test_inpaint_mechanics(small_G, vgg, target_images) -> None:
    x = target_images[:2]
    holes = torch.cat([_hole(32, 8, 20, 8, 20), _hole(32, 14, 28, 4, 14)])
    res = inpaint(x, holes, small_G, k=2, steps_w=15, steps_n=15, vgg=vgg, seed=5)
    assert res.images.shape == (4, 3, 32, 32) and res.latents.w.shape == (4, small_G.num_ws, small_G.w_dim)
    assert [m["solution"] for m in res.metrics] == [0, 1, 0, 1]
    known = 1 - holes.repeat_interleave(2, dim=0)
    xs = x.repeat_interleave(2, dim=0)
    assert torch.equal(res.composites * known, xs * known)
    # Two solutions of one image differ inside the hole.
    hole0 = holes[0].bool().expand(3, -1, -1)
    assert (res.images_w[0][hole0] - res.images_w[1][hole0]).abs().mean() > 1e-3
    # Rows outside the inpainting set never move: the middle rows stay at their start.
    w = res.latents.w
    start0 = small_G.mean_w(10000, 5)
    middle = ~inpainting_w_rows(small_G.num_ws)
    assert torch.allclose(w[0, middle], start0.expand(int(middle.sum()), -1))
    # The known region is matched better than the untouched start.
    with torch.no_grad():
        start = small_G.synthesize(start0[None, None].expand(1, small_G.num_ws, -1).repeat(4, 1, 1),
                                   small_G.random_noise(4, [5] * 4))
    assert (psnr(res.images, xs, known) > psnr(start, xs, known)).all()


def test_inpaint_batch_equals_alone(small_G, vgg, target_images) -> None:
    x = target_images[:2]
    holes = torch.cat([_hole(32, 8, 20, 8, 20), _hole(32, 14, 28, 4, 14)])
    both = inpaint(x, holes, small_G, steps_w=8, steps_n=8, vgg=vgg)
    alone = inpaint(x[1:], holes[1:], small_G, steps_w=8, steps_n=8, vgg=vgg)
    torch.testing.assert_close(both.latents.w[1:], alone.latents.w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both.images[1:], alone.images, rtol=1e-5, atol=1e-5)


def test_inpaint_rejects_bad_arguments(small_G, vgg, target_images) -> None:
    with pytest.raises(ValueError, match="k must be"):
        inpaint(target_images[:1], _hole(32, 0, 4, 0, 4), small_G, k=0, vgg=vgg)
    with pytest.raises(ValueError, match="generator needs 32x32"):
        inpaint(target_images[:1], _hole(16, 0, 4, 0, 4), small_G, vgg=vgg)


def test_telea_keeps_known_pixels_and_fills_holes() -> None:
    x = torch.zeros(1, 3, 32, 32)
    x[:, 0] = torch.linspace(-1, 1, 32)  # a horizontal ramp in red
    hole = _hole(32, 10, 20, 10, 20)
    corrupted = x * (1 - hole) + hole  # white hole
    out = telea_inpaint(corrupted, hole)
    assert torch.allclose(out * (1 - hole), (((x + 1) * 127.5).round() / 127.5 - 1) * (1 - hole), atol=1e-6)
    assert psnr(out, x, hole) > psnr(corrupted, x, hole) + 10
