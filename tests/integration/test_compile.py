"""torch.compile of the synthesis: needs the platform's C compiler (the CPU backend builds C++
kernels), so it is an integration test of the toolchain."""

from __future__ import annotations

import pytest
import torch

from i2score import StyleGAN2
from i2score.generator import fastpath
from i2score.generator.fastpath import compiled_synthesis, has_c_compiler
from i2score.method.blocks import optimize_w
from i2score.method.objective import ImageTarget
from tests.unit.test_fastpath import _start


def test_compiled_synthesis_matches_eager_and_is_compiled_once():
    """torch.compile's CPU backend builds C++ kernels; without a compiler it cannot run at all.
    A tiny generator keeps the one-off compilation to ~20 s on two cores. Inductor fuses the
    element-wise chains (other rounding), so the tolerances are those of channels_last."""
    if not has_c_compiler():
        pytest.skip("torch.compile on CPU needs a C compiler (cc/gcc/clang) on PATH; none found")
    G = StyleGAN2(8, channel_max=8, n_mapping=1, seed=0)
    w0, n0 = _start(G, 2)
    x = G.sample(2, seed=5)[0].detach().clamp(-1, 1)
    wa, ra = optimize_w(G, [ImageTarget(x)], w_ini=w0, n_ini=n0, vgg=None, steps=3)
    wb, rb = optimize_w(G, [ImageTarget(x)], w_ini=w0, n_ini=n0, vgg=None, steps=3, compile=True)
    # Compared as the channels_last run is (see there): Adam may turn rounding-level gradient
    # entries into opposite steps of size lr, so w in distribution, the loss elementwise.
    diff = (wa - wb).abs().flatten()
    assert float(diff.median()) <= 1e-5 and float(diff.quantile(0.99)) <= 1e-3
    assert torch.allclose(ra.loss, rb.loss, rtol=1e-3, atol=0)
    first = compiled_synthesis(G)
    assert compiled_synthesis(G) is first and fastpath._COMPILED[G.synthesis][False] is first
