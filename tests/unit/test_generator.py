"""Generator mechanics: shapes, explicit noise, layer capture/continue, determinism, bf16."""

from __future__ import annotations

import pytest
import torch

from i2score import StyleGAN2
from i2score.generator.network import channels_at


@pytest.mark.parametrize("resolution,num_ws", [(4, 2), (8, 4), (64, 10), (256, 14), (1024, 18)])
def test_num_ws_and_noise_shapes(resolution, num_ws):
    G = StyleGAN2(resolution, channel_max=8, n_mapping=1)
    assert G.num_ws == num_ws
    assert len(G.noise_shapes) == num_ws - 1
    assert G.noise_shapes[0] == (1, 4, 4) and G.noise_shapes[-1] == (1, resolution, resolution)


def test_config_f_channels():
    assert [channels_at(r) for r in (4, 64, 128, 256, 512, 1024)] == [512, 512, 256, 128, 64, 32]
    assert channels_at(64, channel_max=32) == 32


def test_synthesize_shapes_and_explicit_noise(small_G):
    w = small_G.map(small_G.random_z(2, 0))
    n1, n2 = small_G.random_noise(2, 1), small_G.random_noise(2, 2)
    a, b = small_G.synthesize(w, n1), small_G.synthesize(w, n2)
    assert a.shape == (2, 3, 32, 32)
    assert not torch.equal(a, b)  # the noise maps are used
    assert torch.equal(a, small_G.synthesize(w, n1))  # and nothing else is random


def test_seeded_construction_and_sampling_are_deterministic():
    G1, G2 = StyleGAN2(16, channel_max=16, seed=5), StyleGAN2(16, channel_max=16, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(G1.state_dict().values(), G2.state_dict().values(), strict=True))
    assert not torch.equal(StyleGAN2(16, channel_max=16, seed=6).synthesis.const, G1.synthesis.const)
    assert torch.equal(G1.sample(3, seed=9)[0], G2.sample(3, seed=9)[0])
    assert torch.equal(G1.mean_w(500, 0), G2.mean_w(500, 0))


def test_per_image_noise_seeds_do_not_depend_on_position(small_G):
    alone = small_G.random_noise(1, [7])
    batch = small_G.random_noise(3, [1, 7, 2])
    assert all(torch.equal(a[0], b[1]) for a, b in zip(alone, batch, strict=True))


def test_capture_and_continue_reproduces_the_forward(small_G):
    w = small_G.map(small_G.random_z(2, 0))
    n = small_G.random_noise(2, 1)
    full = small_G.synthesize(w, n)
    for layer in small_G.layer_names:
        state = small_G.synthesize_until(w, n, layer)
        assert torch.equal(small_G.synthesize_from(state, w, n), full), layer


def test_replaced_activation_changes_the_output(small_G):
    w = small_G.map(small_G.random_z(1, 0))
    n = small_G.random_noise(1, 1)
    state = small_G.synthesize_until(w, n, "conv3")
    state.x = torch.zeros_like(state.x)
    assert not torch.allclose(small_G.synthesize_from(state, w, n), small_G.synthesize(w, n))


def test_bad_shapes_give_clear_errors(small_G):
    w = small_G.map(small_G.random_z(1, 0))
    with pytest.raises(ValueError, match="noise maps"):
        small_G.synthesize(w, small_G.random_noise(1, 0)[:-1])
    with pytest.raises(ValueError, match=r"w must be"):
        small_G.synthesize(w[:, :3], small_G.random_noise(1, 0))
    with pytest.raises(ValueError, match="unknown layer"):
        small_G.synthesize_until(w, small_G.random_noise(1, 0), "conv99")


def test_bf16_autocast_runs_and_is_close(small_G):
    w = small_G.map(small_G.random_z(2, 0))
    n = small_G.random_noise(2, 1)
    ref = small_G.synthesize(w, n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = small_G.synthesize(w, n)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
