"""Edit mechanics on a small random generator (shapes, exact identities, mask locality, batch
independence). Meaningful quality on the demo model: ``i2s bench edits`` and the README."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i2score.data.latents import Latents
from i2score.method.applications import (
    attribute_transfer,
    crossover,
    expression_transfer,
    local_style_transfer,
    morph,
    scribble_edit,
    style_mix,
)
from i2score.method.masks import dilate


@pytest.fixture(scope="module")
def codes(small_G) -> Latents:
    with torch.no_grad():
        w = small_G.map(small_G.random_z(4, 11))
    return Latents(w, small_G.random_noise(4, 12))


def _render(G, lat: Latents) -> torch.Tensor:
    with torch.no_grad():
        return G.synthesize(lat.w, lat.noise)


def _box(res: int, y0: int, y1: int, x0: int, x1: int, batch: int = 1) -> torch.Tensor:
    m = torch.zeros(batch, 1, res, res)
    m[..., y0:y1, x0:x1] = 1
    return m


def test_morph_endpoints_are_exact(small_G, codes) -> None:
    a, b = codes[0:2], codes[2:4]
    # With the interpolated maps; the default (resampled) maps are another image's detail.
    assert torch.equal(morph(a, b, 0.0, small_G, noise_policy="interpolate").images, _render(small_G, a))
    assert torch.equal(morph(a, b, 1.0, small_G, noise_policy="interpolate").images, _render(small_G, b))
    mid = morph(a, b, torch.tensor([0.25, 0.75]), small_G)
    assert torch.allclose(mid.latents.w[0], 0.75 * a.w[0] + 0.25 * b.w[0], atol=1e-6)
    with pytest.raises(ValueError, match="t must be"):
        morph(a, b, torch.tensor([0.1, 0.2, 0.3]), small_G)


def test_style_mix_identities(small_G, codes) -> None:
    c, s = codes[0:2], codes[2:4]
    assert torch.equal(style_mix(c, s, small_G.num_ws, small_G).images, _render(small_G, c))  # content's maps
    assert torch.equal(style_mix(c, s, 0, small_G, noise_policy="interpolate").images, _render(small_G, s))
    mixed = style_mix(c, s, 2, small_G, noise_policy="interpolate")
    assert torch.equal(mixed.latents.w[:, :2], c.w[:, :2]) and torch.equal(mixed.latents.w[:, 2:], s.w[:, 2:])
    # Each synthesis layer's noise comes from the same source as its W+ row.
    assert all(torch.equal(n, (c if i < 2 else s).noise[i]) for i, n in enumerate(mixed.latents.noise))
    with pytest.raises(ValueError, match="k must be"):
        style_mix(c, s, small_G.num_ws + 1, small_G)


def test_expression_transfer(small_G, codes) -> None:
    out = expression_transfer(codes[0:2], codes[2], codes[3], 0.0, small_G, noise_policy="content")
    assert torch.equal(out.images, _render(small_G, codes[0:2]))
    out = expression_transfer(codes[0:2], codes[2], codes[3], 1.5, small_G)
    assert torch.allclose(out.latents.w, codes[0:2].w + 1.5 * (codes[3].w - codes[2].w))


def test_attribute_transfer_zero_mask_and_locality(small_G, codes) -> None:
    a, b = codes[0:2], codes[2:4]
    zero = torch.zeros(2, 1, 32, 32)
    assert torch.equal(attribute_transfer(a, b, zero, small_G).images, _render(small_G, a))
    mask = _box(32, 8, 16, 8, 16, 2)
    outs = {m: attribute_transfer(a, b, mask, small_G, layer=3, mode=m, channels=torch.arange(32) % 2 == 0).images
            for m in ("copy", "average", "channels")}
    base = _render(small_G, a)
    # The continued convs spread a change by a few pixels; beyond that, everything is the base.
    far = 1 - dilate(mask, 8)
    for mode, img in outs.items():
        assert (img - base).abs().mul(far).max() < 1e-5, mode
        assert (img - base).abs().mul(mask).mean() > 1e-3, mode
    assert not torch.allclose(outs["copy"], outs["average"])
    assert not torch.allclose(outs["copy"], outs["channels"])
    assert torch.allclose(outs["copy"] * far, outs["average"] * far, atol=1e-5)


def test_crossover_mechanics_and_batch_independence(small_G, vgg, codes) -> None:
    x = _render(small_G, codes).clamp(-1, 1)
    image, base = x[0:2], x[2:4]
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., :16] = 1
    res = crossover(image, base, mask, codes[2:4], small_G, steps_w=10, steps_n=10, vgg=vgg)
    assert res.images.shape == (2, 3, 32, 32) and len(res.metrics) == 2
    assert {"psnr_image_region", "psnr_base_region"} <= set(res.metrics[0])
    alone = crossover(image[1:], base[1:], mask[1:], codes[3:4], small_G, steps_w=10, steps_n=10, vgg=vgg)
    torch.testing.assert_close(res.latents.w[1:], alone.latents.w, rtol=1e-5, atol=1e-6)


def test_scribble_and_style_transfer_keep_the_outside(small_G, vgg, codes) -> None:
    original = codes[0:2]
    x = _render(small_G, original).clamp(-1, 1)
    mask = _box(32, 10, 20, 10, 20, 2)
    scribbled = x * (1 - mask) + mask * torch.tensor([1.0, -1.0, -1.0])[None, :, None, None]
    res = scribble_edit(original, scribbled, mask, small_G, layers=4, steps_w=20, steps_n=20, vgg=vgg)
    assert not torch.equal(res.latents.w[:, :4], original.w[:, :4])
    assert torch.equal(res.latents.w[:, 4:], original.w[:, 4:])  # only the first `layers` rows move
    assert all(m["change_inside"] > 0 for m in res.metrics)
    with pytest.raises(ValueError, match="layers must be"):
        scribble_edit(original, scribbled, mask, small_G, layers=0, vgg=vgg)
    st = local_style_transfer(original, x, x.flip(0), mask, small_G, steps_w=10, steps_n=10, vgg=vgg)
    assert st.images.shape == x.shape and all("psnr_outside" in m for m in st.metrics)


def test_edits_reject_mismatched_batches(small_G, vgg, codes) -> None:
    x = _render(small_G, codes).clamp(-1, 1)
    with pytest.raises(ValueError, match="latents for a batch"):
        crossover(x[:2], x[2:4], torch.ones(1, 1, 32, 32), codes[:3], small_G, steps_w=1, steps_n=1, vgg=vgg)
    with pytest.raises(ValueError, match="must be \\[B, 3, 32, 32\\]"):
        crossover(x[:2, :, :16], x[2:4], torch.ones(1, 1, 32, 32), codes[:2], small_G, vgg=vgg)


def test_contact_sheet_layout(small_G, codes) -> None:
    from i2score.runs.contact_sheet import Cell, batch_cells, contact_sheet, grid_tensor

    x = _render(small_G, codes).clamp(-1, 1)
    mask = _box(32, 0, 16, 0, 32)[0]
    sheet = contact_sheet([batch_cells(x[:2], ["a", "b"]) + [Cell(mask, "mask\n50 %")],
                           [Cell(x[2], "c"), None, Cell(np.zeros((32, 32, 3), np.uint8), "black")]],
                          scale=2, title="demo", column_titles=["input", "ref", "mask"])
    assert sheet.mode == "RGB" and sheet.width == 3 * (64 + 4) + 4
    arr = np.asarray(sheet)
    assert arr.std() > 10  # tiles were drawn
    with pytest.raises(ValueError, match="no tiles"):
        contact_sheet([[None]])
    with pytest.raises(ValueError, match="tensor tiles"):
        contact_sheet([[Cell(torch.zeros(2, 8, 8))]])
    assert grid_tensor(x, 3).shape == (3, 64, 96)


def test_bench_edits_writes_every_sheet(tmp_path) -> None:
    from i2score.bench.edits import edits_report, seam_gradient_energy
    from i2score.generator.network import StyleGAN2

    G = StyleGAN2(64, channel_max=16, n_mapping=1, seed=2)
    data = Path(__file__).resolve().parents[2] / "manifests" / "demo"
    report = edits_report(G, data, tmp_path, embed_steps_w=2, embed_steps_n=2, steps_w=2, steps_n=2,
                          inpaint_steps_w=2, inpaint_steps_n=2,
                          log=lambda m: None)
    for name in ("crossover", "inpaint", "scribble", "style_transfer", "attribute_transfer", "global_edits"):
        assert (tmp_path / f"{name}.png").is_file(), name
        assert report[name]["seconds"] > 0
    # Endpoints re-rendered in a batch of 1 vs the embedding batch of 16: float rounding only.
    assert report["global_edits"]["morph_endpoint_error"] < 1e-4
    # A hard step across the mask edge has more seam energy than a smooth image.
    m = torch.zeros(1, 1, 16, 16)
    m[..., :8] = 1
    step = m.expand(1, 3, -1, -1) * 2 - 1
    assert seam_gradient_energy(step, m) > seam_gradient_energy(torch.zeros(1, 3, 16, 16), m) + 1


def test_every_application_equals_running_each_item_alone(small_G, vgg, codes) -> None:
    """Mixed inputs (different images, masks and partners per row) in one batch give, row by
    row, what each row gives alone: the batch is a speed-up, never a different result."""
    x = _render(small_G, codes).clamp(-1, 1)
    masks = torch.cat([_box(32, 4, 14, 4, 20), _box(32, 16, 30, 8, 28)])
    a, b = codes[0:2], codes[2:4]
    scribbled = x[:2] * (1 - masks) + masks * torch.tensor([1.0, -1.0, 0.0])[None, :, None, None]
    runs = {
        "scribble": lambda i: scribble_edit(a[i], scribbled[i], masks[i], small_G, steps_w=6, steps_n=6, vgg=vgg),
        "style": lambda i: local_style_transfer(a[i], x[:2][i], x[2:4][i], masks[i], small_G, steps_w=6,
                                                steps_n=6, vgg=vgg),
        "attribute": lambda i: attribute_transfer(a[i], b[i], masks[i], small_G, mode="average"),
        "morph": lambda i: morph(a[i], b[i], torch.tensor([0.3, 0.8])[i], small_G),
        "style_mix": lambda i: style_mix(a[i], b[i], 3, small_G),
    }
    for name, run in runs.items():
        both = run(slice(0, 2))
        alone = run(slice(1, 2))
        torch.testing.assert_close(both.latents.w[1:], alone.latents.w, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(both.images[1:], alone.images, rtol=1e-5, atol=1e-5, msg=name)
