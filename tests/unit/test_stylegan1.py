"""StyleGAN (v1): the network, the TF-pickle loader, and Image2StyleGAN++ on it.

How ``fixtures/stylegan1/`` was made (once, at development time, outside this repository; no
reference code is in the repository or in the fixture, only data):

* random weights were drawn in NVIDIA's TF variable layout (names and shapes of NVlabs/stylegan
  ``training/networks_stylegan.py``: ``G_style`` / ``G_mapping`` / ``G_synthesis``) for a 32 px
  generator with latent_size = dlatent_size = mapping_fmaps = 32, 8 mapping layers,
  fmap_base 128, fmap_max 16 (16 channels up to 16 px, 8 at 32 px), and noise strengths,
  biases, style biases and ``dlatent_avg`` randomised so that every term matters;
* ``stylegan1-auto-32.pkl`` (NVIDIA's default ``fused_scale='auto'``: nearest up-sampling + conv
  below 128 px) and ``stylegan1-fused-32.pkl`` (``fused_scale=True`` in its static kwargs: the
  fused transposed conv the official models use from 128 px up) were pickled like the official
  ``karras2019stylegan-*.pkl``: a protocol-3 tuple ``(G, D, Gs)`` of
  ``dnnlib.tflib.network.Network`` (version 3) whose state holds ``variables`` as
  ``(name, array)`` pairs and ``components`` {synthesis, mapping}; numpy arrays under the numpy-1
  name ``numpy.core.multiarray._reconstruct``; the embedded ``build_module_src`` is a line that
  would raise ``SystemExit`` if it ever ran;
* the same weights were converted into genforce's PyTorch port (genforce/genforce
  ``models/stylegan_generator.py``, which its ``converters/stylegan_converter.py`` checks
  against NVIDIA's TF outputs) exactly as that converter does, and its forward recorded with
  ``randomize_noise=False`` (the pickle's ``noise{i}`` variables) into ``stylegan1_small.npz``:
  ``w`` = mapping(z), ``w_trunc`` (psi 0.7, cutoff 8), images from z with and without
  truncation, and from a random W+ code (a different row per layer).

Measured (CPU, torch 2.13): max abs difference of our loader + network to genforce
<= 2.9e-5 on images up to |14.9| (auto: 2.8e-5 / 2.0e-5 / 1.6e-5 for z, truncated z, W+; fused:
2.9e-5 / 2.2e-5 / 1.5e-5), <= 3.1e-6 on w.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from i2score.generator.checkpoints.errors import CheckpointMismatchError, UnsupportedCheckpointError
from i2score.generator.checkpoints.load import detect_format, load_generator_file, save_generator
from i2score.generator.checkpoints.pickles import restricted_pickle_load
from i2score.generator.checkpoints.tensorflow import _merged_kwargs, _tf_variables
from i2score.generator.checkpoints.tensorflow_v1 import (
    stylegan1_config,
    stylegan1_tf_shapes,
    tf_stylegan1_from_variables,
)
from i2score.generator.network import StyleGAN2
from i2score.generator.registry import MODELS
from i2score.generator.stylegan1 import StyleGAN1

FIXTURES = Path(__file__).parents[1] / "fixtures" / "stylegan1"
TOL = 1e-4


@pytest.fixture(scope="module")
def recorded() -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / "stylegan1_small.npz") as z:
        return {k: torch.from_numpy(z[k]) for k in z.files if k != "meta"}


def _tf_gs(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        data = restricted_pickle_load(f, context=path.name)
    return _merged_kwargs(data[2].state), _tf_variables(data[2])


@pytest.mark.parametrize("tag", ["auto", "fused"])
def test_tf_pickle_matches_the_reference_port(tag: str, recorded: dict[str, torch.Tensor]) -> None:
    path = FIXTURES / f"stylegan1-{tag}-32.pkl"
    assert b"must never run" in path.read_bytes()  # the embedded source is there, and not executed
    assert detect_format(path) == "nvidia-tf-pkl"
    G = load_generator_file(path)
    assert isinstance(G, StyleGAN1) and G.family == "stylegan1" and G.checkpoint_format == "nvidia-tf-pkl"
    assert G.has_w_avg and G.num_ws == 8 and len(G.noise_shapes) == 8
    assert G.checkpoint_noise is not None and len(G.checkpoint_noise) == 8
    assert G.synthesis.convs[6].fused == (tag == "fused")
    r = {k.split("/", 1)[1]: v for k, v in recorded.items() if k.startswith(f"{tag}/")}
    with torch.no_grad():
        w = G.map(r["z"])
        w_trunc = G.map(r["z"], truncation_psi=0.7, truncation_cutoff=8)
        diffs = {
            "w": (w[:, 0] - r["w"]).abs().max().item(),
            "w_trunc": (w_trunc - r["w_trunc"]).abs().max().item(),
            "img_z": (G.synthesize(w, G.checkpoint_noise) - r["img_z"]).abs().max().item(),
            "img_z_trunc": (G.synthesize(w_trunc, G.checkpoint_noise) - r["img_z_trunc"]).abs().max().item(),
            "img_wplus": (G.synthesize(r["wplus"], G.checkpoint_noise) - r["img_wplus"]).abs().max().item(),
        }
    assert max(diffs.values()) < TOL, diffs
    assert r["img_wplus"].abs().max() > 5  # the comparison is on outputs of real magnitude


def _ffhq_1024_variables_by_hand() -> dict[str, tuple[int, ...]]:
    """The variables of karras2019stylegan-ffhq-1024x1024.pkl's Gs, written out from
    networks_stylegan.py (defaults: fmap_base 8192, fmap_max 512, 8 mapping layers of 512)."""
    def nf(stage: int) -> int:
        return min(int(8192 / 2.0**stage), 512)

    out: dict[str, tuple[int, ...]] = {"lod": (), "dlatent_avg": (512,), "synthesis/lod": ()}
    for i in range(8):
        out[f"mapping/Dense{i}/weight"] = (512, 512)
        out[f"mapping/Dense{i}/bias"] = (512,)
    for i in range(18):  # num_layers = 2 * log2(1024) - 2; noise{i} at 2**(i // 2 + 2)
        out[f"synthesis/noise{i}"] = (1, 1, 2 ** (i // 2 + 2), 2 ** (i // 2 + 2))

    def epilogue(scope: str, c: int) -> None:
        out[f"synthesis/{scope}/Noise/weight"] = (c,)
        out[f"synthesis/{scope}/bias"] = (c,)
        out[f"synthesis/{scope}/StyleMod/weight"] = (512, 2 * c)
        out[f"synthesis/{scope}/StyleMod/bias"] = (2 * c,)

    out["synthesis/4x4/Const/const"] = (1, nf(1), 4, 4)
    epilogue("4x4/Const", nf(1))
    out["synthesis/4x4/Conv/weight"] = (3, 3, nf(1), nf(1))
    epilogue("4x4/Conv", nf(1))
    for res in range(3, 11):
        s = f"{2**res}x{2**res}"
        out[f"synthesis/{s}/Conv0_up/weight"] = (3, 3, nf(res - 2), nf(res - 1))
        epilogue(f"{s}/Conv0_up", nf(res - 1))
        out[f"synthesis/{s}/Conv1/weight"] = (3, 3, nf(res - 1), nf(res - 1))
        epilogue(f"{s}/Conv1", nf(res - 1))
    for res in range(2, 11):
        out[f"synthesis/ToRGB_lod{10 - res}/weight"] = (1, 1, nf(res - 1), 3)
        out[f"synthesis/ToRGB_lod{10 - res}/bias"] = (3,)
    return out


def test_the_official_ffhq_1024_layout_gives_18_style_rows_and_18_noise_maps() -> None:
    # What the official file stores as static kwargs (train.py passes only these to G_style).
    kw = {"num_channels": 3, "resolution": 1024, "label_size": 0, "dlatent_broadcast": 18}
    cfg = stylegan1_config(kw)
    assert stylegan1_tf_shapes(cfg) == _ffhq_1024_variables_by_hand()
    assert cfg.num_ws == 18 and [cfg.channels(2**k) for k in range(2, 11)] == [512] * 4 + [256, 128, 64, 32, 16]
    # The whole file's worth of variables (zeros of the right shapes) converts: every name is
    # found, every shape fits, and the 18 stored noise maps become the checkpoint noise.
    G = tf_stylegan1_from_variables(kw, {k: np.zeros(s, np.float32) for k, s in _ffhq_1024_variables_by_hand().items()})
    assert G.num_ws == 18 and len(G.layer_names) == 18 and G.checkpoint_noise is not None
    assert G.noise_shapes == [(1, 2 ** (i // 2 + 2), 2 ** (i // 2 + 2)) for i in range(18)]
    assert [tuple(n.shape[1:]) for n in G.checkpoint_noise] == G.noise_shapes
    # NVIDIA's fused_scale='auto': the up-sampling layers into 128 px and above are fused.
    assert [layer.fused for layer in G.synthesis.convs][2::2] == [False] * 4 + [True] * 4
    assert G.state_dict()["synthesis.to_rgbs.0.weight"].shape == (3, 16, 1, 1)


def test_missing_or_misshapen_variables_are_named() -> None:
    kw, v = _tf_gs(FIXTURES / "stylegan1-auto-32.pkl")
    broken = dict(v)
    del broken["synthesis/16x16/Conv1/StyleMod/bias"]
    broken["synthesis/noise3"] = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        tf_stylegan1_from_variables(kw, broken)
    assert "synthesis/16x16/Conv1/StyleMod/bias" in str(err.value) and "synthesis/noise3" in str(err.value)
    with pytest.raises(UnsupportedCheckpointError, match="lod"):
        tf_stylegan1_from_variables(kw, {**v, "synthesis/lod": np.array(1.5, np.float32)})


@pytest.mark.parametrize(("key", "value"), [("use_pixel_norm", True), ("fmap_decay", 0.5), ("label_size", 10),
                                            ("nonlinearity", "relu"), ("mapping_fmaps", 64), ("new_thing", 1)])
def test_settings_this_port_lacks_are_refused_by_name(key: str, value: Any) -> None:
    kw = {"num_channels": 3, "resolution": 32, "latent_size": 32, "dlatent_size": 32, "mapping_fmaps": 32}
    with pytest.raises(UnsupportedCheckpointError, match=key):
        stylegan1_config({**kw, key: value})


def test_truncation_touches_only_the_first_rows() -> None:
    G = StyleGAN1(16, fmap_base=64, channel_max=8, n_mapping=2, w_dim=16, seed=3)
    with pytest.raises(ValueError, match="dlatent_avg"):
        G.map(torch.randn(1, 16), truncation_psi=0.7)
    G.w_avg.normal_()
    G.has_w_avg = True
    z = torch.randn(2, 16)
    w, wt = G.map(z), G.map(z, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(wt[:, 3:], w[:, 3:])  # NVIDIA lerps every row, with coefficient 1 here
    torch.testing.assert_close(wt[:, :3], G.w_avg + 0.5 * (w[:, :3] - G.w_avg))


def _tiny() -> StyleGAN1:
    return StyleGAN1(32, fmap_base=64, channel_max=16, n_mapping=2, w_dim=32, seed=1)


def test_every_layer_has_its_own_style_row_and_noise_map() -> None:
    G = _tiny()
    w, noise = G.map(G.random_z(1, 0)), G.random_noise(1, 1)
    with torch.no_grad():
        base = G.synthesize(w, noise)
        for i in range(G.num_ws):
            w2 = w.clone()
            w2[:, i] += 1
            n2 = [n.clone() for n in noise]
            n2[i] += 1
            assert not torch.equal(G.synthesize(w2, noise), base), f"row {i} of w has no effect"
            assert not torch.equal(G.synthesize(w, n2), base), f"noise map {i} has no effect"
    with pytest.raises(ValueError, match="expected 8 noise maps"):
        G.synthesize(w, noise[:-1])


@pytest.mark.parametrize("fused", [False, True])
def test_an_image_alone_equals_the_same_image_in_a_batch(fused: bool) -> None:
    # The cache relies on it (README "Conventions"): on CPU the render is bitwise batch invariant.
    G = StyleGAN1(32, fmap_base=64, channel_max=16, n_mapping=2, w_dim=32, seed=1, fused_scale=fused)
    w, noise = G.map(G.random_z(3, 0)), G.random_noise(3, 1)
    with torch.no_grad():
        batch = G.synthesize(w, noise)
        alone = G.synthesize(w[1:2], [n[1:2] for n in noise])
    assert torch.equal(batch[1:2], alone)


def test_native_round_trip(tmp_path: Path) -> None:
    G = _tiny()
    G.w_avg.normal_()
    G.has_w_avg = True
    save_generator(G, tmp_path / "v1.pt")
    back = load_generator_file(tmp_path / "v1.pt")
    assert isinstance(back, StyleGAN1) and back.cfg == G.cfg and back.has_w_avg
    w, noise = G.map(G.random_z(2, 0)), G.random_noise(2, 1)
    with torch.no_grad():
        assert torch.equal(back.synthesize(w, noise), G.synthesize(w, noise))


def test_image2stylegan_plus_plus_runs_on_it_unchanged(vgg: Any) -> None:
    from i2score.method.applications import reconstruct
    from i2score.method.blocks import blend_activations

    G = _tiny()
    with torch.no_grad():
        target, _ = G.sample(2, seed=5)
    res = reconstruct(target.clamp(-1, 1), G, steps_w=2, steps_n=2, vgg=vgg, lpips=False, mean_w_samples=64)
    assert res.latents.w.shape == (2, 8, 32) and len(res.latents.noise) == 8
    assert [m["steps_w"] for m in res.metrics] == [2, 2] and [m["steps_n"] for m in res.metrics] == [2, 2]
    n_ini = G.random_noise(2, [0, 0])
    assert all(not torch.equal(a, b) for a, b in zip(res.latents.noise, n_ini, strict=True))  # the noise stage ran
    assert not torch.equal(res.images, res.images_w)
    # Sec. 6's activation blend, at a middle layer and at the last one (where the image is made).
    lat = res.latents
    ones = torch.ones(2, 1, 32, 32)
    half = torch.zeros(2, 1, 32, 32)
    half[..., :16] = 1
    for layer in ("conv3", "conv7"):
        with torch.no_grad():
            same = blend_activations(G, (lat.w, lat.noise), (lat.w.flip(0), lat.noise), M1=ones, M2=ones, layer=layer)
            mixed = blend_activations(G, (lat.w, lat.noise), (lat.w.flip(0), lat.noise), M1=half, M2=half, layer=layer)
        torch.testing.assert_close(same, res.images, rtol=0, atol=1e-5)
        assert not torch.allclose(mixed, res.images)


def test_registry_has_the_official_v1_models() -> None:
    v1 = {name: spec for name, spec in MODELS.items() if spec.family == "stylegan1"}
    assert {s.resolution for s in v1.values()} == {1024, 512, 256}
    assert sorted(v1) == ["celebahq-1024-stylegan1", "ffhq-1024-stylegan1", "lsun-bedroom-256-stylegan1",
                          "lsun-car-512-stylegan1", "lsun-cat-256-stylegan1"]
    ffhq = v1["ffhq-1024-stylegan1"]
    assert ffhq.url == "https://drive.google.com/uc?id=1MEGjdvVpUsu1jB4zrXZN7Y4kBBOzizDQ"
    assert ffhq.filename == "karras2019stylegan-ffhq-1024x1024.pkl" and ffhq.num_ws == 18
    assert all(s.format == "nvidia-tf-pkl" and s.sha256 is None for s in v1.values())
    assert v1["lsun-car-512-stylegan1"].valid_hw == (384, 512)


def test_models_list_shows_the_family(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from i2score.cli.app import app

    result = CliRunner().invoke(app, ["models", "list", "--cache-dir", str(tmp_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    assert lines["ffhq-1024-stylegan1"][1:3] == ["stylegan1", "nvidia-tf-pkl"]
    assert lines["ffhq-1024"][1:3] == ["stylegan2", "nvidia-pkl"]


def test_registry_family_is_checked_against_the_file(tmp_path: Path) -> None:
    from i2score.generator.checkpoints.errors import CheckpointError
    from i2score.generator.checkpoints.load import load_generator
    from i2score.generator.registry import model_cache_path

    spec = MODELS["lsun-cat-256-stylegan1"]
    dest = model_cache_path(spec.name, tmp_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_generator(StyleGAN2(256, channel_max=8, n_mapping=1, w_dim=8), dest)  # a StyleGAN2 under the v1 name
    with pytest.raises(CheckpointError, match="registry says a stylegan1 generator"):
        load_generator(spec.name, cache_dir=tmp_path)
    save_generator(StyleGAN1(256, fmap_base=1024, channel_max=8, n_mapping=1, w_dim=8), dest)
    assert isinstance(load_generator(spec.name, cache_dir=tmp_path), StyleGAN1)


def test_rosinality_export_refuses_v1(tmp_path: Path) -> None:
    from i2score.generator.checkpoints.load import save_rosinality

    with pytest.raises(UnsupportedCheckpointError, match="StyleGAN2 only"):
        save_rosinality(_tiny(), tmp_path / "x.pt")
