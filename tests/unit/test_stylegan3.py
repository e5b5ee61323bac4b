"""StyleGAN3 (alias-free) generators: NVIDIA pickles, the match to their forward, the interface.

How ``fixtures/nvidia_stylegan3_repo/sg3{t,r}_32*`` were made (once, outside this repository;
see that folder's README): NVlabs/stylegan3 (commit c233a91) in /tmp, its
``networks_stylegan3.Generator`` built on CPU (reference ``filtered_lrelu``/``upfirdn2d``, no
custom CUDA ops) at 32 px with z 24, w 32, 2 mapping layers and the default 14 layers:
config T (channel_base 512, channel_max 16) and config R (``conv_kernel=1``,
``use_radial_filters=True``, channel_base 1024, channel_max 32; the R fixture also has a rotated
and shifted input ``transform``); biases, ``magnitude_ema``, the input affine and ``w_avg``
randomised. The ``_clamp`` variants have synthesis biases ~N(0, 300), so their default
``conv_clamp=256`` fires on 16-48 % of every layer's outputs; the others never reach it. Pickled
as their training loop does with every embedded ``module_src`` replaced by a comment; the
``.npz`` holds ``z``, ``w`` (mapped + N(0, 0.25) per layer), ``synthesis(w)``, ``mapping(z)``
and ``G(z)``.

Measured, our float32 CPU forward against theirs (max abs difference; ``synthesis(w)`` /
``mapping(z)`` / ``G(z)``):

* sg3t_32: 1.9e-6 / 3.6e-7 / 9.5e-7 (outputs up to |3.3|)
* sg3t_32_clamp: 2.7e-5 / 4.8e-7 / 5.7e-5 (outputs up to |64|, the clamp times output_scale)
* sg3r_32: 8.9e-7 / 3.1e-7 / 1.2e-6 (outputs up to |0.79|)
* sg3r_32_clamp: 5.3e-5 / 3.6e-7 / 6.9e-5 (outputs up to |64|)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from i2score.features import VGG16Features
from i2score.generator import stylegan3
from i2score.generator.checkpoints.errors import UnsupportedCheckpointError
from i2score.generator.checkpoints.load import detect_format, load_generator_file, nvidia_noise_const, save_generator
from i2score.generator.checkpoints.pickles import PickledObject, restricted_pickle_load
from i2score.generator.checkpoints.stylegan3 import stylegan3_from_pickle
from i2score.generator.stylegan3 import NoNoiseInputsError, StyleGAN3, resample2d
from i2score.method.applications.augment import resample_noise
from i2score.method.applications.inpaint import inpaint
from i2score.method.blocks import blend_activations

FIXTURES = Path(__file__).parents[1] / "fixtures" / "nvidia_stylegan3_repo"
TOL = 1e-4


@pytest.fixture(scope="module")
def G_t() -> StyleGAN3:
    G = load_generator_file(FIXTURES / "sg3t_32.pkl")
    assert isinstance(G, StyleGAN3)
    return G


@pytest.mark.parametrize(("name", "family"), [("sg3t_32", "stylegan3-t"), ("sg3t_32_clamp", "stylegan3-t"),
                                              ("sg3r_32", "stylegan3-r"), ("sg3r_32_clamp", "stylegan3-r")])
def test_matches_nvidia_forward(name: str, family: str) -> None:
    path = FIXTURES / f"{name}.pkl"
    rec = np.load(FIXTURES / f"{name}.npz")
    assert detect_format(path) == "nvidia-pkl"
    G = load_generator_file(path)
    assert isinstance(G, StyleGAN3) and G.family == family and G.checkpoint_format == "nvidia-pkl"
    assert G.num_ws == 16 and G.resolution == 32 and G.has_w_avg
    assert all(spec.conv_clamp == 256 for spec in G.sg3.layers)  # NVIDIA's default, read from the layers
    with torch.no_grad():
        img = G.synthesize(torch.from_numpy(rec["w"]), [])
        assert float((img - torch.from_numpy(rec["img_w"])).abs().max()) <= TOL
        ws = G.map(torch.from_numpy(rec["z"]))
        assert float((ws - torch.from_numpy(rec["ws_z"])).abs().max()) <= 1e-5
        assert float((G.synthesize(ws, []) - torch.from_numpy(rec["img_z"])).abs().max()) <= TOL


def test_the_clamp_fires_in_the_clamp_fixture() -> None:
    G = load_generator_file(FIXTURES / "sg3t_32_clamp.pkl")
    assert isinstance(G, StyleGAN3)
    rec = np.load(FIXTURES / "sg3t_32_clamp.npz")
    H = StyleGAN3(dataclasses.replace(G.sg3, layers=tuple(dataclasses.replace(s, conv_clamp=None)
                                                          for s in G.sg3.layers)))
    H.load_state_dict(G.state_dict())
    with torch.no_grad():
        assert float((H.synthesize(torch.from_numpy(rec["w"]), []) - torch.from_numpy(rec["img_w"])).abs().max()) > 10


@pytest.mark.parametrize("matrix_max", [256, 0])  # per-axis matrices / strided convolutions
def test_resample2d_is_upfirdn(matrix_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the definition: zero insertion, padding, a true convolution, decimation."""
    monkeypatch.setattr(stylegan3, "MATRIX_MAX_SIZE", matrix_max)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 7, generator=gen)
    radial = torch.outer(torch.randn(4, generator=gen), torch.randn(4, generator=gen))
    radial = radial + 1e-3 * torch.outer(torch.randn(4, generator=gen), torch.randn(4, generator=gen))
    for f in (torch.randn(5, generator=gen), torch.randn(4, 4, generator=gen), radial):
        f2 = f if f.ndim == 2 else torch.outer(f, f)
        for up, down, pad in ((1, 1, (0, 0, 0, 0)), (2, 1, (3, 2, 1, 4)), (1, 2, (2, 2, 2, 2)), (2, 2, (-1, 3, 2, -2))):
            z = torch.zeros(2, 3, 9 * up, 7 * up)
            z[:, :, ::up, ::up] = x
            z = torch.nn.functional.pad(z, tuple(max(p, 0) for p in pad))
            z = z[:, :, max(-pad[2], 0): z.shape[2] - max(-pad[3], 0), max(-pad[0], 0): z.shape[3] - max(-pad[1], 0)]
            k = f2.flip([0, 1])[None, None].expand(3, 1, *f2.shape)
            ref = torch.nn.functional.conv2d(z, k, groups=3)[:, :, ::down, ::down] * 1.5
            got = resample2d(x, f, up=up, down=down, padding=pad, gain=1.5)
            assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-5


def test_interface_without_noise(G_t: StyleGAN3) -> None:
    assert G_t.noise_shapes == [] and G_t.random_noise(2, 0) == [] and G_t.const_noise(2) == []
    assert nvidia_noise_const(G_t) == []
    w = G_t.map(G_t.random_z(2, 0))
    with pytest.raises(ValueError, match="stylegan3-t has no noise inputs"):
        G_t.synthesize(w, [torch.zeros(2, 1, 4, 4)])
    with pytest.raises(ValueError, match=r"w must be \[B, 16, 32\]"):
        G_t.synthesize(w[:, :15], [])
    names = G_t.layer_names
    assert len(names) == 15 and names[3].startswith("L3_") and names[-1] == "L14_32_3"
    assert G_t.layer_index(names[3]) == G_t.layer_index("L3") == G_t.layer_index(3) == 3
    with pytest.raises(ValueError, match="unknown layer 'conv3' for stylegan3-t"):
        G_t.layer_index("conv3")
    mean = G_t.mean_w(500, 0)
    assert mean.shape == (32,)
    img, w2 = G_t.sample(2, 5)
    assert img.shape == (2, 3, 32, 32) and w2.shape == (2, 16, 32)


def test_activations_continue_and_blend(G_t: StyleGAN3) -> None:
    gen = torch.Generator().manual_seed(1)
    wa, wb = (torch.randn(1, 16, 32, generator=gen) for _ in range(2))
    with torch.no_grad():
        full = G_t.synthesize(wa, [])
        state = G_t.synthesize_until(wa, [], "L6")
        assert state.x.shape == (1, G_t.sg3.layers[6].out_channels, 52, 52) and state.rgb is None
        assert torch.equal(G_t.synthesize_from(state, wa, []), full)
        ones, zeros = torch.ones(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
        # M1 = M2 = 1 keeps the base exactly; M1 = M2 = 0 copies the donor's activation.
        assert torch.equal(blend_activations(G_t, (wa, []), (wb, []), M1=ones, M2=ones, layer="L6"), full)
        donor_x = G_t.synthesize_until(wb, [], 6).x
        copied = blend_activations(G_t, (wa, []), (wb, []), M1=zeros, M2=zeros, layer=6)
        assert torch.equal(copied, G_t.synthesize_from(dataclasses.replace(state, x=donor_x), wa, []))
    # Masks land on the image part of a margin layer: the image is the central 32 of 52 samples.
    half = torch.zeros(1, 1, 32, 32)
    half[..., 16:] = 1
    placed = G_t.mask_to_activation(half, 6, (52, 52))
    assert placed.shape == (1, 1, 52, 52)
    assert placed[0, 0, 0, :26].eq(0).all() and placed[0, 0, 0, 26:].eq(1).all()
    assert torch.equal(G_t.mask_to_activation(half, 14, (32, 32)), half)


def test_noise_dependent_applications_name_the_family(G_t: StyleGAN3) -> None:
    from i2score.data.latents import Latents

    lat = Latents(torch.zeros(1, 16, 32), [], {})
    with pytest.raises(NoNoiseInputsError, match="noise resampling needs the generator's noise inputs, and "
                                                 "stylegan3-t generators have none"):
        resample_noise(lat, [1], G_t)
    with pytest.raises(NoNoiseInputsError, match="inpainting .*stylegan3-t"):
        inpaint(torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32), G_t, steps_w=1, steps_n=1)


def test_missing_settings_are_named() -> None:
    with open(FIXTURES / "sg3r_32.pkl", "rb") as f:
        data = restricted_pickle_load(f)
    gen = data["G_ema"]
    assert isinstance(gen, PickledObject)
    layer = gen.state["_modules"]["synthesis"].state["_modules"]["L3_36_32"]
    del layer.state["conv_clamp"]
    with pytest.raises(UnsupportedCheckpointError, match="synthesis.L3_36_32.conv_clamp"):
        stylegan3_from_pickle(data)


def test_reconstruct_is_w_plus_only(G_t: StyleGAN3, vgg: VGG16Features) -> None:
    from i2score.method.applications.reconstruct import reconstruct

    with torch.no_grad():
        targets, _ = G_t.sample(2, 11)
    res = reconstruct(targets.clamp(-1, 1), G_t, steps_w=2, steps_n=3, vgg=vgg, lpips=False, mean_w_samples=500)
    assert res.latents.w.shape == (2, 16, 32) and res.latents.noise == []
    assert res.images.shape == (2, 3, 32, 32)
    assert "skipped: stylegan3-t has no noise inputs" in res.latents.meta["noise_stage"]
    for m in res.metrics:
        assert m["steps_w"] == 2 and m["steps_n"] == 0 and m["psnr_wn"] == m["psnr_w"]
    assert not torch.equal(res.latents.w[0], G_t.mean_w(500, 0)[None].expand(16, -1))  # W+ moved


def test_stylegan2_engine_options_are_refused(G_t: StyleGAN3) -> None:
    from i2score.generator.fastpath import renderer

    with pytest.raises(ValueError, match="compile is a StyleGAN2 engine option; stylegan3-t"):
        renderer(G_t, compile=True)
    with pytest.raises(ValueError, match="channels_last is a StyleGAN2 engine option; stylegan3-t"):
        G_t.synthesize(G_t.map(G_t.random_z(1, 0)), [], channels_last=True)
    with pytest.raises(ValueError, match="native format does not hold stylegan3-t generators"):
        save_generator(G_t, Path("/nonexistent/never-written.pt"))


def test_attribute_transfer_on_stylegan3(G_t: StyleGAN3) -> None:
    from i2score.data.latents import Latents
    from i2score.method.applications.attribute import attribute_transfer

    gen = torch.Generator().manual_seed(2)
    a, b = (Latents(torch.randn(1, 16, 32, generator=gen), [], {}) for _ in range(2))
    with torch.no_grad():
        base = G_t.synthesize(a.w, [])
    kept = attribute_transfer(a, b, torch.zeros(1, 1, 32, 32), G_t)  # default layer 4 = L4
    assert torch.equal(kept.images, base) and kept.latents.meta["layer"] == G_t.layer_names[4]
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 16:, :] = 1
    moved = attribute_transfer(a, b, mask, G_t, layer="L8")
    change = (moved.images - base).abs().mean(dim=(0, 1, 3))
    assert change[16:].mean() > 3 * change[:16].mean()  # the edit lands mostly in the masked half


@pytest.mark.parametrize("name", ["sg3t_32", "sg3r_32"])
def test_render_is_batch_invariant_on_cpu(name: str) -> None:
    from i2score.kernels import batch_invariant

    G = load_generator_file(FIXTURES / f"{name}.pkl")
    w = torch.randn(3, 16, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), batch_invariant("cpu"):
        batch = G.synthesize(w, [])
        alone = torch.cat([G.synthesize(w[i:i + 1], []) for i in range(3)])
    assert torch.equal(batch, alone)
