"""StyleGAN2 pickles written by NVIDIA's stylegan3 repository (``training/networks_stylegan2.py``).

That code takes the synthesis settings as top-level ``Generator`` kwargs and defaults
``conv_clamp`` to 256; stylegan2-ada-pytorch nests them in ``synthesis_kwargs`` and defaults the
clamp to None. How ``fixtures/nvidia_stylegan3_repo/sg3repo_stylegan2_*`` were made (once,
outside this repository; see that folder's README): NVlabs/stylegan3 (commit c233a91) was
checked out to /tmp, ``networks_stylegan2.Generator`` built on CPU (reference ops), biases,
noise strengths and ``w_avg`` randomised, and ``pickle.dump(dict(G_ema=G, ...))`` written with
their persistence active but every class's embedded ``module_src`` replaced by a comment, so the
pickle is NVIDIA's real layout (init kwargs, module attributes, numpy scalars) without their
code. The ``.npz`` next to it holds ``z``, ``w`` and their outputs: ``synthesis(w,
noise_mode='const'|'none')``, ``mapping(z)``, ``G(z, noise_mode='const')``.

* ``clamp_32``: 32 px, channel_base 256, channel_max 16, num_fp16_res 2, no ``conv_clamp`` kwarg
  (so their default 256 applies) and synthesis biases ~N(0, 400) so the clamp fires on 19-65 % of
  each layer's outputs; outputs up to |449|.
* ``cbase16384_64``: 64 px, ``channel_base=16384``, channel_max 16, ``conv_clamp=256`` given.

Measured with our loader (float32 CPU): clamp_32 max abs difference 2.4e-4 (const/none noise),
4.8e-7 (mapping), 2.8e-4 (``G(z)``) on outputs up to |449| (relative 6e-7); cbase16384_64:
6.7e-6 / 3.5e-6 / 3.6e-7 / 6.4e-6. Before the fix the clamp was dropped and channel_base read
as 32768 (both fixtures refused with ``CheckpointMismatchError``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from i2score.generator.checkpoints.load import (
    UnsupportedCheckpointError,
    detect_format,
    load_generator_file,
    nvidia_noise_const,
    read_nvidia_pickle,
)
from i2score.generator.checkpoints.nvidia import nvidia_from_pickle
from i2score.generator.checkpoints.pickles import PickledObject, restricted_pickle_load
from i2score.generator.network import GeneratorConfig, StyleGAN2

FIXTURES = Path(__file__).parents[1] / "fixtures" / "nvidia_stylegan3_repo"


def _max_diff(a: torch.Tensor, b: np.ndarray) -> float:
    return float((a - torch.from_numpy(b)).abs().max())


def _tol(ref: np.ndarray) -> float:
    # float32 rounding of sums of values near the 256 clamp: relative, with 1e-4 as the floor
    return max(1e-4, 2e-6 * float(np.abs(ref).max()))


@pytest.mark.parametrize(("name", "cfg"), [
    ("sg3repo_stylegan2_clamp_32", GeneratorConfig(resolution=32, channel_multiplier=256 / 16384, channel_max=16,
                                                   n_mapping=2, w_dim=64, z_dim=48, conv_clamp=256.0)),
    ("sg3repo_stylegan2_cbase16384_64", GeneratorConfig(resolution=64, channel_multiplier=1, channel_max=16,
                                                        n_mapping=2, w_dim=32, z_dim=32, conv_clamp=256.0)),
])
def test_stylegan3_repo_stylegan2_matches_their_forward(name: str, cfg: GeneratorConfig) -> None:
    path = FIXTURES / f"{name}.pkl"
    rec = np.load(FIXTURES / f"{name}.npz")
    assert detect_format(path) == "nvidia-pkl"
    G = load_generator_file(path)
    assert G.cfg == cfg  # clamp from the layers (default 256 there), channel_base from the top-level kwargs
    kwargs, _ = read_nvidia_pickle(path)
    assert "synthesis_kwargs" not in kwargs and "channel_base" in kwargs  # the stylegan3-repo layout
    noise = nvidia_noise_const(G)
    w, z = torch.from_numpy(rec["w"]), torch.from_numpy(rec["z"])
    with torch.no_grad():
        assert _max_diff(G.synthesize(w, noise), rec["img_w_const"]) <= _tol(rec["img_w_const"])
        assert _max_diff(G.synthesize(w, G.const_noise(len(w))), rec["img_w_none"]) <= _tol(rec["img_w_none"])
        ws = G.map(z)
        assert _max_diff(ws, rec["ws_z"]) <= 1e-5
        assert _max_diff(G.synthesize(ws, noise), rec["img_z_const"]) <= _tol(rec["img_z_const"])


def test_the_clamp_fires_in_the_clamp_fixture() -> None:
    """Without the clamp the render is far off: the fixture really tests that it is read."""
    G = load_generator_file(FIXTURES / "sg3repo_stylegan2_clamp_32.pkl")
    rec = np.load(FIXTURES / "sg3repo_stylegan2_clamp_32.npz")
    H = StyleGAN2(GeneratorConfig(**{**G.cfg.__dict__, "conv_clamp": None}))
    H.load_state_dict(G.state_dict())
    with torch.no_grad():
        assert _max_diff(H.synthesize(torch.from_numpy(rec["w"]), nvidia_noise_const(G)), rec["img_w_const"]) > 100


def _load_tree(name: str) -> dict[str, object]:
    with open(FIXTURES / f"{name}.pkl", "rb") as f:
        data = restricted_pickle_load(f)
    assert isinstance(data, dict)
    return data


def _walk(obj: PickledObject, prefix: str = "") -> list[tuple[str, PickledObject]]:
    out = [(prefix, obj)]
    for n, sub in (obj.state.get("_modules") or {}).items():
        if isinstance(sub, PickledObject):
            out += _walk(sub, f"{prefix}.{n}" if prefix else n)
    return out


def test_values_the_loader_cannot_find_are_errors_naming_them() -> None:
    # channel_base lives only in the init kwargs: without it, the error names it (no 32768 guess).
    data = _load_tree("sg3repo_stylegan2_cbase16384_64")
    gen = data["G_ema"]
    assert isinstance(gen, PickledObject)
    del gen.state["_init_kwargs"]["channel_base"]
    with pytest.raises(UnsupportedCheckpointError, match="'channel_base'"):
        nvidia_from_pickle(data)
    # conv_clamp: gone from every layer and from the kwargs -> named, never silently None.
    data = _load_tree("sg3repo_stylegan2_cbase16384_64")
    gen = data["G_ema"]
    assert isinstance(gen, PickledObject)
    del gen.state["_init_kwargs"]["conv_clamp"]
    for _, mod in _walk(gen):
        mod.state.pop("conv_clamp", None)
    with pytest.raises(UnsupportedCheckpointError, match="'conv_clamp'"):
        nvidia_from_pickle(data)


def test_layers_that_disagree_on_the_clamp_are_refused() -> None:
    data = _load_tree("sg3repo_stylegan2_clamp_32")
    gen = data["G_ema"]
    assert isinstance(gen, PickledObject)
    layer = dict(_walk(gen))["synthesis.b8.conv0"]
    layer.state["conv_clamp"] = 64.0
    with pytest.raises(UnsupportedCheckpointError, match="conv_clamp"):
        nvidia_from_pickle(data)


def test_fixture_pickles_hold_no_code() -> None:
    """NVIDIA's embedded module source was replaced before dumping: only data is committed."""
    paths = sorted(FIXTURES.glob("*.pkl"))
    assert len(paths) == 6
    for path in paths:
        raw = path.read_bytes()
        assert b"import torch" not in raw and b"def forward" not in raw and b"NVIDIA CORPORATION" not in raw
        assert b"module source removed" in raw
        assert len(raw) < 400_000
