"""The per-image SSIM and PSNR that runs record (``manifest.parquet``'s ssim/psnr columns)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from i2score.method.metrics import psnr, ssim


def _pair(seed: int = 0, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    # A smoothed, noisier copy: SSIM well inside (0, 1).
    b = (torch.nn.functional.avg_pool2d(a, 3, 1, 1) + 0.2 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    return a, b


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of two ``[H, W, C]`` images in [0, 1], written out in numpy: an
    11-tap Gaussian window (sigma 1.5), borders by reflection without the edge pixel (numpy's
    and torch's ``reflect``), every pixel's SSIM averaged over the image and channels."""
    taps = np.exp(-(np.arange(11) - 5.0) ** 2 / (2 * 1.5**2))
    taps /= taps.sum()

    def blur(z: np.ndarray) -> np.ndarray:
        p = np.pad(z, ((5, 5), (5, 5), (0, 0)), mode="reflect")
        rows = sum(taps[k] * p[k:k + z.shape[0], :, :] for k in range(11))
        return sum(taps[k] * rows[:, k:k + z.shape[1], :] for k in range(11))

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())


def _hwc(t: torch.Tensor) -> np.ndarray:
    return ((t + 1) / 2).permute(1, 2, 0).double().numpy()


def test_ssim_of_identical_images_is_one_and_of_a_pair_matches_its_definition():
    a, b = _pair()
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)
    got = ssim(a, b)
    assert got.shape == (2,) and bool(((got > 0.05) & (got < 0.95)).all())
    for i in range(2):
        assert abs(float(got[i]) - _ssim_reference(_hwc(a[i]), _hwc(b[i]))) < 1e-4


def test_ssim_agrees_with_scikit_image_away_from_the_borders():
    # scikit-image leaves out a 5-pixel border instead of reflecting it: on a large image the
    # border hardly counts and the two agree; on 48 px images they differ by up to ~0.02.
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a, b = _pair(2, size=256)
    ref = skimage_metrics.structural_similarity(_hwc(a[0]), _hwc(b[0]), data_range=1.0, channel_axis=2,
                                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(float(ssim(a[:1], b[:1])[0]) - ref) < 3e-3


def test_psnr_matches_its_definition_on_the_0_255_scale():
    a, b = _pair(1)
    x = ((a + 1) * 127.5).double().numpy()
    y = ((b + 1) * 127.5).double().numpy()
    mse = ((x - y) ** 2).reshape(2, -1).mean(axis=1)
    ref = 10 * np.log10(255.0**2 / mse)
    assert np.allclose(psnr(a, b).numpy(), ref, atol=1e-3)
