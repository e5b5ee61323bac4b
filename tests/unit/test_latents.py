from __future__ import annotations

import torch

from i2score import Latents


def _latents(batch=3):
    g = torch.Generator().manual_seed(0)
    return Latents(torch.randn(batch, 8, 16, generator=g),
                   [torch.randn(batch, 1, r, r, generator=g) for r in (4, 8, 8, 16)], {"seed": 3})


def test_npz_round_trip_is_bit_exact(tmp_path):
    lat = _latents()
    lat.save(str(tmp_path / "a.npz"))
    back = Latents.load(str(tmp_path / "a.npz"))
    assert torch.equal(back.w, lat.w) and all(torch.equal(a, b) for a, b in zip(back.noise, lat.noise, strict=True))
    assert back.meta == {"seed": 3}


def test_round_trip_through_fsspec_memory():
    lat = _latents()
    lat.save("memory://i2s-test/lat.npz")
    assert torch.equal(Latents.load("memory://i2s-test/lat.npz").noise[-1], lat.noise[-1])


def test_slicing_and_stacking():
    lat = _latents(4)
    parts = [lat[i] for i in range(4)]
    assert all(len(p) == 1 for p in parts)
    again = Latents.stack(parts)
    assert torch.equal(again.w, lat.w) and torch.equal(again.noise[2], lat.noise[2])
    assert torch.equal(lat[[2, 0]].w[1], lat.w[0])
