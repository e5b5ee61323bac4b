"""Reconstruction (Alg. 2): batch independence, the PSNR ladder, metrics, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from i2score import Latents, reconstruct


def _astronaut(size: int) -> torch.Tensor:
    skimage = pytest.importorskip("skimage")
    img = Image.fromarray(skimage.data.astronaut()).resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def test_an_image_alone_equals_the_same_image_in_a_batch(small_G, vgg, target_images):
    alone = reconstruct(target_images[2:3], small_G, steps_w=12, steps_n=12, vgg=vgg, lpips=False)
    batch = reconstruct(target_images, small_G, steps_w=12, steps_n=12, vgg=vgg, lpips=False)
    torch.testing.assert_close(batch.latents.w[2:3], alone.latents.w, rtol=1e-5, atol=1e-6)
    for a, b in zip(batch.latents.noise, alone.latents.noise, strict=True):
        torch.testing.assert_close(a[2:3], b, rtol=1e-5, atol=1e-5)
    assert abs(batch.metrics[2]["psnr_wn"] - alone.metrics[0]["psnr_wn"]) < 1e-3


def test_same_seed_same_result(small_G, vgg, target_images):
    a = reconstruct(target_images[:2], small_G, steps_w=5, steps_n=5, vgg=vgg, lpips=False, seed=4)
    b = reconstruct(target_images[:2], small_G, steps_w=5, steps_n=5, vgg=vgg, lpips=False, seed=4)
    assert torch.equal(a.latents.w, b.latents.w) and torch.equal(a.latents.noise[-1], b.latents.noise[-1])


def test_noise_stage_adds_at_least_10_db(small_G, vgg):
    x = _astronaut(32)
    res = reconstruct(x, small_G, steps_w=150, steps_n=150, vgg=vgg, seed=0)
    m = res.metrics[0]
    assert m["psnr_wn"] - m["psnr_w"] >= 10.0, m
    assert m["lpips"] is not None and 0 <= m["lpips"] < 1
    assert 0 < m["ssim"] <= 1 and m["steps"] == 300
    # Metrics are computed from the returned latents, not assumed.
    with torch.no_grad():
        again = small_G.synthesize(res.latents.w, res.latents.noise)
    assert torch.equal(again, res.images)


def test_result_latents_round_trip(small_G, vgg, target_images, tmp_path):
    res = reconstruct(target_images[:2], small_G, steps_w=3, steps_n=3, vgg=vgg, lpips=False)
    res.latents.save(str(tmp_path / "e.npz"))
    back = Latents.load(str(tmp_path / "e.npz"))
    assert torch.equal(back.w, res.latents.w) and back.meta["steps_w"] == 3


def test_pil_input_and_size_errors(small_G, vgg):
    img = Image.new("RGB", (32, 32), (200, 30, 30))
    res = reconstruct([img], small_G, steps_w=2, steps_n=2, vgg=vgg, lpips=False)
    assert res.images.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="32x32"):
        reconstruct([Image.new("RGB", (40, 32))], small_G, steps_w=1, steps_n=1, vgg=vgg)
