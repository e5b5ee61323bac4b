"""The IR-SE50 encoders against the reference implementations, their loaders and their registry.

The reference checks rebuild an official-style checkpoint from the data-only fixtures of
``tests/fixtures/encoders`` (key list + seeded weight recipe of :mod:`tests.encoder_fixture`),
load it with :func:`load_encoder` and compare with the outputs the reference code computed from
the same weights.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from i2score.encoders.base import EncoderConfig
from i2score.encoders.build import build_encoder
from i2score.encoders.checkpoints import (
    EncoderCheckpointError,
    EncoderStateMismatchError,
    UnsupportedEncoderError,
    infer_official_config,
    load_encoder,
)
from i2score.encoders.irse import reference_state_shapes
from i2score.encoders.native import save_encoder
from i2score.encoders.registry import (
    DEFAULT_ENCODER,
    ENCODERS,
    UnknownEncoderError,
    encoder_cache_path,
    get_encoder_spec,
)
from i2score.generator.registry import MODELS, ModelUnavailableError, resolve_model_file
from i2score.weights.download import sha256_file
from i2score.weights.unpickle import UnsafePickleError
from tests.encoder_fixture import ARCHS, load_fixture, make_input, make_latent_avg, write_reference_checkpoint

TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


# --- against the reference code ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_module_names_match_the_reference_at_full_size(arch: str) -> None:
    """The 18-style (1024 px) network: every state-dict key and shape of the reference, in order."""
    meta, _ = load_fixture(arch)
    ours = reference_state_shapes(EncoderConfig(arch=arch, backbone="ir_se50", n_styles=18))  # type: ignore[arg-type]
    assert list(ours.items()) == [(k, tuple(s)) for k, s in meta["keys_1024"]]


@pytest.mark.parametrize("arch", ARCHS)
def test_official_checkpoint_reproduces_the_reference(arch: str, tmp_path: Path) -> None:
    meta, ref = load_fixture(arch)
    path = write_reference_checkpoint(meta, tmp_path / f"{arch}_ffhq_encode.pt")
    encoder = load_encoder(str(path))

    cfg = encoder.config
    assert (cfg.arch, cfg.backbone, cfg.n_styles, cfg.in_channels) == (arch, "ir_se50", meta["n_styles"],
                                                                         meta["input"]["shape"][1])
    assert cfg.iterations == (5 if arch.startswith("restyle") else 1)
    assert encoder.source == str(path) and encoder.weights_sha256 == sha256_file(path)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    avg = make_latent_avg(meta["latent_avg"])
    torch.testing.assert_close(encoder.latent_avg, avg.expand(cfg.n_styles, -1), rtol=0, atol=0)

    x = make_input(meta["input"])
    offsets_ref, codes_ref = torch.from_numpy(ref["offsets"]), torch.from_numpy(ref["codes"])
    if cfg.restyle:
        # One ReStyle pass is the net on [image, current render]; encode() needs a generator.
        diff = (encoder.offsets(x) - offsets_ref).abs().max().item()
    else:
        codes = encoder.encode(x)  # = latent_avg + offsets(x): inputs are already 256 px
        diff = (codes - codes_ref).abs().max().item()
        diff = max(diff, (codes - encoder.latent_avg - offsets_ref).abs().max().item())
    print(f"{arch}: max |ours - reference| = {diff:.3g}")
    assert diff <= TOLERANCE


# --- strict loading ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_official() -> dict[str, Any]:
    """The ReStyle-pSp fixture cut to a 4 px generator (2 styles): cheap, still the real layout."""
    meta, _ = load_fixture("restyle-psp")
    keys = [[k, s] for k, s in meta["keys"] if not (k.startswith("styles.") and int(k.split(".")[1]) >= 2)]
    return {**meta, "keys": keys, "opts": {**meta["opts"], "output_size": 4},
            "latent_avg": {"seed": 5, "shape": [2, 512]}}


def test_missing_encoder_key_is_named(small_official: dict[str, Any], tmp_path: Path) -> None:
    path = write_reference_checkpoint(small_official, tmp_path / "cut.pt",
                                      state_edit=lambda s: s.pop("encoder.body.7.res_layer.5.fc1.weight"))
    with pytest.raises(EncoderStateMismatchError) as info:
        load_encoder(path)
    assert "missing key encoder.body.7.res_layer.5.fc1.weight" in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.missing == ["encoder.body.7.res_layer.5.fc1.weight"] and not info.value.unexpected


def test_extra_encoder_key_is_named(small_official: dict[str, Any], tmp_path: Path) -> None:
    def add(state: dict[str, torch.Tensor]) -> None:
        state["encoder.styles.2.linear.bias"] = torch.zeros(512)

    path = write_reference_checkpoint(small_official, tmp_path / "extra.pt", state_edit=add)
    with pytest.raises(EncoderStateMismatchError, match=r"unexpected key encoder\.styles\.2\.linear\.bias") as info:
        load_encoder(path)
    assert str(path) in str(info.value)


def test_wrong_shape_names_key_and_both_shapes(small_official: dict[str, Any], tmp_path: Path) -> None:
    def reshape(state: dict[str, torch.Tensor]) -> None:
        state["encoder.input_layer.0.weight"] = torch.zeros(64, 3, 3, 3)

    path = write_reference_checkpoint(small_official, tmp_path / "shape.pt", state_edit=reshape)
    with pytest.raises(EncoderStateMismatchError) as info:
        load_encoder(path)
    assert "encoder.input_layer.0.weight: shape [64, 3, 3, 3] in the file, [64, 6, 3, 3] expected" in str(info.value)


def test_decoder_keys_are_ignored_and_latent_avg_vector_loads(small_official: dict[str, Any],
                                                                tmp_path: Path) -> None:
    fixture = {**small_official, "latent_avg": {"seed": 6, "shape": [512]}}
    encoder = load_encoder(write_reference_checkpoint(fixture, tmp_path / "vec.pt"))
    assert encoder.config.n_styles == 2 and encoder.meta["encoder_type"] == "BackboneEncoder"
    torch.testing.assert_close(encoder.latent_avg, make_latent_avg(fixture["latent_avg"]).expand(2, -1))


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "opts": {}, "extra": fractions.Fraction(1, 3)}, path)  # not plain data
    with pytest.raises(UnsafePickleError):
        load_encoder(path)


def test_web_page_instead_of_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "psp_ffhq_encode.pt"
    path.write_bytes(b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>")
    with pytest.raises(EncoderCheckpointError, match="web page"):
        load_encoder(path)


@pytest.mark.parametrize(("opts", "message"), [
    ({"encoder_type": "ResNetBackboneEncoder", "n_iters_per_batch": 5}, "not supported"),
    ({"encoder_type": "GradualStyleEncoder", "n_iters_per_batch": 5, "input_nc": 6}, "feature pyramid"),
    ({"encoder_type": "GradualStyleEncoder", "learn_in_w": True}, "learn_in_w"),
    ({"encoder_type": "GradualStyleEncoder", "input_nc": 1, "label_nc": 19}, "input_nc=1"),
])
def test_unsupported_variants_are_refused(opts: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedEncoderError, match=message):
        infer_official_config(opts)


def test_config_from_official_opts() -> None:
    psp = infer_official_config({"encoder_type": "GradualStyleEncoder", "input_nc": 3, "output_size": 1024})
    e4e = infer_official_config({"encoder_type": "Encoder4Editing", "stylegan_size": 512})
    restyle = infer_official_config({"encoder_type": "ProgressiveBackboneEncoder", "input_nc": 6,
                                     "output_size": 256, "n_iters_per_batch": 3})
    assert (psp.arch, psp.n_styles, psp.iterations) == ("psp", 18, 1)
    assert (e4e.arch, e4e.n_styles) == ("e4e", 16)
    assert (restyle.arch, restyle.n_styles, restyle.iterations, restyle.in_channels) == ("restyle-e4e", 14, 3, 6)
    assert infer_official_config({"encoder_type": "Encoder4Editing"}).n_styles == 18  # the references' default


# --- native format -----------------------------------------------------------------------------


def test_native_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = EncoderConfig(arch="e4e", backbone="ir_se50", n_styles=2, input_size=32)
    encoder = build_encoder(config, latent_avg=torch.randn(512)).eval()
    path = tmp_path / "enc.pt"
    save_encoder(encoder, path, generator="demo")
    loaded = load_encoder(path)
    assert loaded.config == config and loaded.meta == {"generator": "demo"}
    assert loaded.weights_sha256 == sha256_file(path)
    for (k, a), (k2, b) in zip(encoder.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(encoder.encode(x), loaded.encode(x))


# --- registry ----------------------------------------------------------------------------------


def test_registry_entries() -> None:
    assert set(ENCODERS) == {"demo-faces-64-e4e", "demo-faces-64-v2-e4e", "psp-ffhq", "e4e-ffhq", "restyle-psp-ffhq",
                             "restyle-e4e-ffhq"}
    official = {k: s for k, s in ENCODERS.items() if not k.startswith("demo-")}
    assert {s.filename for s in official.values()} == {
        "psp_ffhq_encode.pt", "e4e_ffhq_encode.pt", "restyle_psp_ffhq_encode.pt", "restyle_e4e_ffhq_encode.pt"}
    for spec in ENCODERS.values():
        assert spec.generator in MODELS and MODELS[spec.generator].resolution == spec.resolution
        assert spec.n_styles == MODELS[spec.generator].num_ws
    for spec in official.values():
        assert spec.n_styles == 18
        assert spec.page.startswith("https://drive.google.com/file/d/") and spec.reference
    assert DEFAULT_ENCODER["ffhq-1024"] in ENCODERS
    # Each bundled demo model has its own encoder (the old one stays for the old model), and each
    # resolves offline, checked against its sha256.
    for generator in ("demo-faces-64", "demo-faces-64-v2"):
        name = DEFAULT_ENCODER[generator]
        assert name == f"{generator}-e4e" and ENCODERS[name].generator == generator
        demo = load_encoder(name)
        assert demo.weights_sha256 == ENCODERS[name].sha256 and demo.config.n_styles == 10
    assert get_encoder_spec("e4e-ffhq").arch == "e4e"
    with pytest.raises(UnknownEncoderError,
                       match="known encoders: demo-faces-64-e4e, demo-faces-64-v2-e4e, e4e-ffhq, psp-ffhq"):
        get_encoder_spec("nope")


def test_registry_name_offline_gives_the_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("I2S_CACHE_DIR", str(tmp_path))
    spec = dataclasses.replace(ENCODERS["psp-ffhq"], url="https://models.invalid/psp_ffhq_encode.pt")
    monkeypatch.setitem(ENCODERS, "psp-ffhq", spec)
    with pytest.raises(ModelUnavailableError) as info:
        load_encoder("psp-ffhq")
    message = str(info.value)
    assert spec.url in message and str(encoder_cache_path("psp-ffhq")) in message
    assert info.value.cache_path == encoder_cache_path("psp-ffhq")
    assert encoder_cache_path("psp-ffhq").parent == tmp_path
    assert encoder_cache_path("psp-ffhq").name.endswith("_psp_ffhq_encode.pt")
    assert list(tmp_path.iterdir()) == []


def test_registry_name_uses_a_preplaced_copy(tmp_path: Path) -> None:
    target = encoder_cache_path("restyle-e4e-ffhq", tmp_path)
    target.write_bytes(b"weights")
    assert resolve_model_file("restyle-e4e-ffhq", cache_dir=tmp_path, registry=ENCODERS) == target


def test_missing_local_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="psp-ffhq"):  # the message lists the encoder names
        load_encoder(tmp_path / "absent.pt")


def test_fixtures_stay_small() -> None:
    for arch in ARCHS:
        meta, arrays = load_fixture(arch)
        sizes = [p.stat().st_size for p in Path(__file__).parents[1].glob(f"fixtures/encoders/{arch}.*")]
        assert sizes and max(sizes) < 1 << 20
        assert all(a.dtype == np.float32 for a in arrays.values())
        assert math.isfinite(meta["output_abs_max"])


def test_cli_models_list_shows_the_encoders(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from i2score.cli.app import app

    result = CliRunner().invoke(app, ["models", "list", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for spec in ENCODERS.values():
        assert spec.name in result.output and spec.page in result.output
