"""The small encoder backbone, the encoder trainer (tiny runs) and the bundled demo encoder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from i2score.demo.portraits import heldout_images
from i2score.demo.training import TrainConfig, load_portrait_dataset
from i2score.encoders.base import ARCHS, EncoderConfig
from i2score.encoders.build import build_encoder
from i2score.encoders.native import encoder_from_native, save_encoder
from i2score.encoders.small import SmallEncoderNet, build_small_net, style_groups
from i2score.encoders.training import EncoderTrainConfig, delta_regularizer, evaluate_encoder, psnr, train_encoder
from i2score.generator.network import StyleGAN2

BUNDLED = Path(__file__).resolve().parents[2] / "i2score" / "models" / "demo-faces-64-e4e.pt"
# A 64 px generator narrow enough to train against in milliseconds (num_ws 10, w_dim 32).
TINY_G_KW = {"channel_multiplier": 0.0625, "channel_max": 16, "n_mapping": 2, "w_dim": 32}
TINY = EncoderTrainConfig(width=8, steps=4, batch=4, lpips=0.8, lpips_images=2, n_portraits=8, warmup=2,
                          seed=5, snapshot_every=2, log_every=1, eval_every=0)


def _tiny_generator() -> StyleGAN2:
    return StyleGAN2(64, seed=1, **TINY_G_KW)  # type: ignore[arg-type]


def _config(arch: str, **kw: object) -> EncoderConfig:
    iterations = 2 if arch.startswith("restyle") else 1
    return EncoderConfig(arch=arch, backbone="small", n_styles=10, w_dim=32, input_size=64,  # type: ignore[arg-type]
                         iterations=iterations, width=8, **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_small_net_shapes(arch: str) -> None:
    cfg = _config(arch)
    net = build_small_net(cfg)
    x = torch.randn(3, cfg.in_channels, 64, 64)
    assert cfg.in_channels == (6 if arch.startswith("restyle") else 3)
    out = net(x)
    assert out.shape == (3, 10, 32) and torch.isfinite(out).all()
    assert isinstance(net, SmallEncoderNet)
    codes, deltas = net.codes_and_deltas(x)
    torch.testing.assert_close(codes, out)
    if arch.endswith("e4e"):
        # Code = w0 repeated + deltas; row 0 has no delta.
        assert deltas is not None and deltas.shape == out.shape
        assert torch.equal(deltas[:, 0], torch.zeros_like(deltas[:, 0]))
        w0 = codes - deltas
        torch.testing.assert_close(w0, w0[:, :1].expand_as(w0))
    else:
        assert deltas is None
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 9 - cfg.in_channels, 64, 64))  # the other arch family's channel count


def test_style_groups_follow_psp_split() -> None:
    assert style_groups(18) == [0] * 3 + [1] * 4 + [2] * 11
    assert style_groups(10) == [0, 0, 1, 1, 2, 2, 2, 2, 2, 2]


def test_delta_regularizer_is_zero_for_equal_rows() -> None:
    w0 = torch.randn(4, 1, 32)
    codes = w0.expand(-1, 10, -1)
    assert float(delta_regularizer(codes - codes[:, :1])) == 0.0
    moved = codes.clone()
    moved[:, 3] += 0.5
    assert float(delta_regularizer(moved - moved[:, :1])) > 0
    assert float(delta_regularizer(None)) == 0.0


def test_native_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = build_encoder(_config("e4e"), torch.randn(32))
    path = tmp_path / "enc.pt"
    save_encoder(enc, path, generator="tiny")
    back = encoder_from_native(torch.load(path, weights_only=True))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(back.encode(x), enc.eval().encode(x))
    assert back.meta == {"generator": "tiny"}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=False)["encoder"]


@pytest.fixture(scope="module")
def tiny_lpips() -> torch.nn.Module:
    from i2score.features import load_lpips

    return load_lpips(allow_download=False)


@pytest.fixture()
def one_thread():
    # Bit-for-bit repeatable on one thread only: with two, oneDNN's parallel backward reductions
    # (the trainer runs the ordinary kernels) make two identical runs differ in the last bits.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_training_is_deterministic_and_resumable(tmp_path: Path, tiny_lpips: torch.nn.Module,
                                                       one_thread: None) -> None:
    G = _tiny_generator()
    pool = load_portrait_dataset(TrainConfig(resolution=64, dataset_size=TINY.n_portraits))
    with pytest.raises(ValueError, match="portraits must be"):
        train_encoder(TINY, tmp_path / "bad", G, pool[:3], log=lambda _: None)
    steps_seen: list[int] = []
    # Held-out evaluations along the way read the weights and leave the random streams alone.
    full = train_encoder(dataclasses.replace(TINY, eval_every=2), tmp_path / "full", G, pool,
                         heldout=heldout_images(2, 64), lpips=tiny_lpips, log=lambda _: None,
                         progress=lambda step, total, stats: steps_seen.append(step))
    assert steps_seen == [1, 2, 3, 4] and full.step == 4
    train_encoder(TINY, tmp_path / "again", G, pool, lpips=tiny_lpips, log=lambda _: None)
    part = train_encoder(TINY, tmp_path / "resumed", G, pool, lpips=tiny_lpips, max_steps=2, log=lambda _: None)
    assert part.step == 2
    resumed = train_encoder(TINY, tmp_path / "resumed", G, pool, lpips=tiny_lpips, log=lambda _: None)
    assert resumed.step == 4
    a, b, c = _weights(tmp_path / "full"), _weights(tmp_path / "again"), _weights(tmp_path / "resumed")
    start = build_encoder(TINY.encoder_config(G)).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in start if k != "latent_avg")  # it trained
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(a[k], c[k]), k
    assert (tmp_path / "full" / "log.jsonl").read_text().count('"eval"') == 2
    log_lines = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert len(log_lines) == 4 and '"lpips"' in log_lines[0] and '"delta"' in log_lines[0]
    # The latent average is the generator's mean w, on every row.
    torch.testing.assert_close(a["latent_avg"], G.mean_w()[None].expand(10, -1))
    with pytest.raises(ValueError, match="trained with"):
        train_encoder(dataclasses.replace(TINY, lr=0.5), tmp_path / "full", G, pool, lpips=tiny_lpips,
                      log=lambda _: None)


def test_init_from_starts_from_an_exported_encoder(tmp_path: Path, tiny_lpips: torch.nn.Module,
                                                   one_thread: None) -> None:
    G = _tiny_generator()
    pool = load_portrait_dataset(TrainConfig(resolution=64, dataset_size=TINY.n_portraits))
    torch.manual_seed(3)
    source = build_encoder(TINY.encoder_config(G), torch.randn(32))
    save_encoder(source, tmp_path / "source.pt", generator="tiny")
    cfg = dataclasses.replace(TINY, init_from=str(tmp_path / "source.pt"))
    # No steps: the run's encoder is the source encoder, latent_avg included.
    start = train_encoder(cfg, tmp_path / "start", G, pool, lpips=tiny_lpips, max_steps=0, log=lambda _: None)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(start.encoder.eval().encode(x), source.eval().encode(x))
    # It trains on from there, and a resume keeps to the same start.
    trained = train_encoder(cfg, tmp_path / "run", G, pool, lpips=tiny_lpips, log=lambda _: None)
    train_encoder(TINY, tmp_path / "scratch", G, pool, lpips=tiny_lpips, log=lambda _: None)
    a, b = _weights(tmp_path / "run"), _weights(tmp_path / "scratch")
    assert not torch.equal(a["latent_avg"], b["latent_avg"])
    assert any(not torch.equal(a[k], source.state_dict()[k]) for k in a if k != "latent_avg")
    assert trained.step == TINY.steps
    with pytest.raises(ValueError, match="trained with"):
        train_encoder(TINY, tmp_path / "run", G, pool, lpips=tiny_lpips, log=lambda _: None)
    # Another architecture is refused by name.
    other = build_encoder(_config("psp"), torch.randn(32))
    save_encoder(other, tmp_path / "psp.pt", generator="tiny")
    with pytest.raises(ValueError, match="init_from .*psp.pt"):
        train_encoder(dataclasses.replace(TINY, init_from=str(tmp_path / "psp.pt")), tmp_path / "bad", G, pool,
                      lpips=tiny_lpips, log=lambda _: None)


def test_psnr_matches_the_method_metric() -> None:
    from i2score.method.metrics import psnr as method_psnr

    a, b = torch.rand(3, 3, 8, 8) * 2 - 1, torch.rand(3, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(psnr(a, b), method_psnr(a, b))


def test_heldout_images_are_the_sample_data_files() -> None:
    import numpy as np
    from PIL import Image

    root = Path(__file__).resolve().parents[2] / "manifests" / "demo" / "images"
    x = heldout_images(2, 64)
    for i in range(2):
        png = np.asarray(Image.open(root / f"heldout-{i:02d}.png").convert("RGB"))
        assert np.array_equal(((x[i] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy(), png)


@pytest.mark.skipif(not BUNDLED.is_file(), reason="bundled demo encoder not exported yet")
def test_bundled_demo_encoder_beats_a_random_one() -> None:
    from i2score.generator.checkpoints import load_generator

    G = load_generator("demo-faces-64")
    enc = encoder_from_native(torch.load(BUNDLED, weights_only=True))
    assert enc.meta["generator"] == "demo-faces-64"
    assert enc.meta["generator_sha256"] == G.weights_sha256
    assert enc.config.arch == "e4e" and enc.config.n_styles == G.num_ws
    images = heldout_images(4, G.resolution)
    trained = evaluate_encoder(enc, G, images, speed_batch=0)
    torch.manual_seed(0)
    random = evaluate_encoder(build_encoder(enc.config, G.mean_w()), G, images, speed_batch=0)
    # Measured at export: 19.8 dB median on these 4 (20.3 on all 16); a random encoder with the
    # same latent_avg gets 10.6 dB, the mean-w image 10.9 dB.
    assert trained["psnr_median"] >= 19.0, trained
    assert trained["psnr_worst"] >= 16.0, trained
    assert random["psnr_median"] < 14.0, random
