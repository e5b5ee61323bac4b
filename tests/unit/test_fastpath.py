"""Engine fast-path options: channels_last, torch.compile, automatic batch size, bf16 state,
and a loop that reads nothing back from the device per step."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from i2score.kernels import batch_invariant
from i2score.method.batch_size import _search_largest, largest_fitting_batch
from i2score.method.blocks import EarlyStop, optimize_noise, optimize_w
from i2score.method.objective import embedding_target


def _start(G, batch):
    w = G.mean_w(1000, 0)[None, None].expand(batch, G.num_ws, -1).clone()
    return w, G.random_noise(batch, [0] * batch)


# -- automatic batch size --------------------------------------------------------------------

@pytest.mark.parametrize("max_batch", [1, 7, 64, 100])
def test_search_largest_finds_the_threshold_with_few_probes(max_batch):
    for limit in range(max_batch + 3):
        probes: list[int] = []

        def fits(b: int, probes: list[int] = probes, limit: int = limit) -> bool:
            probes.append(b)
            return b <= limit

        assert _search_largest(fits, max_batch) == min(limit, max_batch)
        assert all(1 <= b <= max_batch for b in probes)
        # Doubling then bisection: about 2·log2(max_batch) probes, never a linear scan.
        assert len(probes) <= 2 * math.ceil(math.log2(max_batch)) + 2
        assert len(set(probes)) == len(probes)  # no size is probed twice


def test_search_largest_rejects_an_empty_range():
    with pytest.raises(ValueError):
        _search_largest(lambda b: True, 0)


def test_largest_fitting_batch_does_not_guess_on_cpu(small_G, vgg):
    assert largest_fitting_batch(small_G, vgg, "cpu", max_batch=12) == 12
    assert largest_fitting_batch(small_G, None, torch.device("cpu"), max_batch=3) == 3


# -- channels_last ---------------------------------------------------------------------------

def test_channels_last_render_and_gradient_match_the_default(small_G, vgg):
    """Same values to float32 rounding: NHWC kernels accumulate the same products in another
    order (measured: image 2e-6, gradient 1e-6 of its max); 1e-5 and 1e-4 leave a 5-100x margin."""
    w, n = _start(small_G, 2)
    w = (w + 0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    with batch_invariant("cpu"):
        a = small_G.synthesize(w, n)
        (ga,) = torch.autograd.grad(a.square().sum(), w)
        b = small_G.synthesize(w, n, channels_last=True)
        (gb,) = torch.autograd.grad(b.square().sum(), w)
    assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
    assert torch.allclose(a, b, rtol=0, atol=1e-5)
    assert torch.allclose(ga, gb, rtol=0, atol=1e-4 * float(ga.abs().max()))


def test_channels_last_embedding_is_close_to_the_default(small_G, vgg, target_images):
    """Adam normalises each gradient entry: where an entry is at float-rounding level (w rows or
    channels the image barely depends on), its sign, and so a step of size ~lr, is arbitrary
    in both runs. Elementwise, w is therefore compared in distribution: the median entry agrees
    to 1e-5 and 99% to 1e-3 (measured: ~1e-6 and 1.1e-4 after 5 steps, while w moves by 0.05),
    and none differs
    by more than the 2·lr·steps two opposite Adam trajectories can reach. The objective, a mean
    over all pixels, is insensitive to that: per-image losses agree to 1e-3 relative (measured
    1.3e-4). The noise stage (Adam lr 5) is compared through its loss for the same reason."""
    w0, n0 = _start(small_G, 4)
    steps, lr = 5, 0.01
    targets = [embedding_target(target_images)]
    wa, ra = optimize_w(small_G, targets, w_ini=w0, n_ini=n0, vgg=vgg, steps=steps, lr=lr)
    wb, rb = optimize_w(small_G, targets, w_ini=w0, n_ini=n0, vgg=vgg, steps=steps, lr=lr, channels_last=True)
    diff = (wa - wb).abs().flatten()
    assert float(diff.median()) <= 1e-5 and float(diff.quantile(0.99)) <= 1e-3
    assert float(diff.max()) <= 2 * lr * steps + 1e-6
    assert float((wa - w0).abs().max()) > 30 * float(diff.quantile(0.99))  # w really moved
    assert torch.allclose(ra.loss, rb.loss, rtol=1e-3, atol=0)
    na, rna = optimize_noise(small_G, M=None, w=wa, n_ini=n0, x=target_images, steps=5)
    nb, rnb = optimize_noise(small_G, M=None, w=wa, n_ini=n0, x=target_images, steps=5, channels_last=True)
    assert all(b.shape == a.shape and b.dtype == a.dtype for a, b in zip(na, nb, strict=True))
    assert torch.allclose(rna.loss, rnb.loss, rtol=1e-3, atol=0)


def test_early_stop_still_works_with_the_fast_path_options(small_G, target_images):
    w0, n0 = _start(small_G, 4)
    x = target_images.clone()
    # Already perfect (rendered the way the run renders): stops first.
    x[1] = small_G.synthesize(w0[1:2], [n[1:2] for n in n0], channels_last=True)[0]
    stop = EarlyStop(patience=10, min_delta_db=0.05, check_every=5)
    _, res = optimize_noise(small_G, M=None, w=w0, n_ini=n0, x=x, steps=40, lr=0.5, early_stop=stop,
                            channels_last=True)
    assert int(res.steps[1]) < 40
    assert bool(torch.isfinite(res.loss).all())
    assert res.history and res.history[0][0] == stop.check_every - 1


# -- bf16 and host reads -----------------------------------------------------------------------

def test_bf16_autocast_keeps_loss_parameters_and_adam_state_float32(small_G, vgg, target_images):
    w0, n0 = _start(small_G, 2)
    seen: list[torch.dtype] = []
    w, res = optimize_w(small_G, [embedding_target(target_images[:2])], w_ini=w0, n_ini=n0, vgg=vgg, steps=2,
                        autocast_dtype=torch.bfloat16, callback=lambda step, loss: seen.append(loss.dtype))
    assert w.dtype == torch.float32 and res.loss.dtype == torch.float32
    assert seen == [torch.float32, torch.float32]
    noise, res_n = optimize_noise(small_G, M=None, w=w, n_ini=n0, x=target_images[:2], steps=2,
                                  autocast_dtype=torch.bfloat16)
    assert all(n.dtype == torch.float32 for n in noise) and res_n.loss.dtype == torch.float32


def test_the_loop_reads_nothing_back_per_step(small_G, target_images, monkeypatch):
    """Device-to-host reads (``.cpu()``, ``.tolist()``, ``float(t)``, ``bool(t)``) happen only at
    early-stop checks and at the end, so their number must not grow with the number of steps.
    (``.item()`` is left out: Adam reads its own CPU step counter with it, which is no sync.)"""
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in ("cpu", "tolist", "__float__", "__bool__")}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            counts["n"] += 1
            return originals[name](self, *args, **kwargs)
        return wrapper

    w0, n0 = _start(small_G, 2)
    x = target_images[:2]

    def reads(steps: int, early_stop: EarlyStop | None) -> int:
        for name in originals:
            monkeypatch.setattr(torch.Tensor, name, counting(name))
        counts["n"] = 0
        try:
            optimize_noise(small_G, M=None, w=w0, n_ini=n0, x=x, steps=steps, early_stop=early_stop)
        finally:
            for name, fn in originals.items():
                monkeypatch.setattr(torch.Tensor, name, fn)
        return counts["n"]

    assert reads(3, None) == reads(12, None)
    # With early stopping (which never triggers here: min_delta_db < 0), reads grow with the
    # number of checks, not of steps: 12 steps at check_every=6 read like 2 checks.
    never = EarlyStop(patience=6, min_delta_db=-1e9, check_every=6)
    assert reads(12, never) == reads(13, never) == reads(17, never)


# -- batch-invariant kernels -------------------------------------------------------------------

def test_an_image_renders_identically_alone_and_in_a_batch_of_16(small_G):
    """From batch 16 up PyTorch's non-oneDNN CPU convolutions switch to NNPACK, whose rounding
    differs: ``batch_invariant`` must turn NNPACK off as well as oneDNN."""
    w, _ = _start(small_G, 17)
    w = w + 0.1 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
    n = small_G.random_noise(17, list(range(17)))
    with torch.no_grad():
        batch = small_G.synthesize(w, n)
        alone = small_G.synthesize(w[3:4], [m[3:4] for m in n])
    assert torch.equal(batch[3:4], alone)


def test_separable_fir_path_equals_the_depthwise_convolution():
    """The batch-invariant CPU FIR (two 1-D passes) computes the same filter as the grouped
    convolution it replaces, asymmetric filters (flip) included; float64 isolates the maths."""
    from i2score import kernels
    from i2score.generator import ops

    x = torch.randn(2, 5, 11, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    asymmetric = torch.outer(torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 1.0]))
    for fir in (ops.make_fir_filter().double(), asymmetric.double()):
        cases: tuple[dict[str, Any], ...] = ({"pad": (2, 2), "gain": 4.0}, {"up": 2, "pad": (2, 1), "gain": 4.0})
        for kwargs in cases:
            invariant = ops.upfirdn2d(x, fir, **kwargs)
            with kernels.fast_kernels():
                conv = ops.upfirdn2d(x, fir, **kwargs)
            assert invariant.shape == conv.shape
            assert torch.allclose(invariant, conv, rtol=0, atol=1e-12)
    assert ops._separable_taps(torch.tensor([[1.0, 2.0], [3.0, 5.0]])) is None  # rank 2: the conv path


def test_channels_last_keeps_an_image_independent_of_its_batch(small_G, vgg, target_images):
    """With the default batch-invariant kernels, NHWC runs stay bitwise batch independent."""
    w0, n0 = _start(small_G, 4)
    wa, _ = optimize_w(small_G, [embedding_target(target_images)], w_ini=w0, n_ini=n0, vgg=vgg, steps=3,
                       channels_last=True)
    wb, _ = optimize_w(small_G, [embedding_target(target_images[2:3])], w_ini=w0[2:3], n_ini=[n[2:3] for n in n0],
                       vgg=vgg,
                       steps=3, channels_last=True)
    assert torch.equal(wa[2:3], wb)
