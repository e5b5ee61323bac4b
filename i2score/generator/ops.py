"""Plain-PyTorch building blocks of StyleGAN2: equalised linear layers, FIR resampling and
modulated convolution. No compiled extensions, so everything runs on CPU and CUDA alike.

The numerics follow the StyleGAN2 papers' definitions (and therefore both public PyTorch
ports, whose weights we load): weights are stored unscaled and multiplied by their He
constant at run time ("equalised learning rate"); the up-sampling convolution is a stride-2
transposed convolution followed by a [1, 3, 3, 1] blur.
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)

# Embedding wants batch-invariant CPU kernels (see ``batch_invariant``); training wants the
# fastest ones and never compares an image across batch sizes. ``fast_kernels`` flips this.
_batch_invariance_enabled = True


@contextlib.contextmanager
def fast_kernels() -> Iterator[None]:
    """Inside this block, ``batch_invariant`` and ``batch_invariant_linear`` use the ordinary
    (fastest, batch-size dependent) CPU kernels. For training, where throughput matters and
    bitwise batch independence does not."""
    global _batch_invariance_enabled
    previous = _batch_invariance_enabled
    _batch_invariance_enabled = False
    try:
        yield
    finally:
        _batch_invariance_enabled = previous


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for an NHWC-strided 4-D tensor, else ``torch.contiguous_format``.

    Tensors whose layout is ambiguous (one channel, or 1x1 spatial) count as contiguous."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def make_fir_filter(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> Tensor:
    """Separable 2-D FIR filter, normalised to sum 1. Returns ``[k, k]`` float32."""
    f1 = torch.tensor(taps, dtype=torch.float32)
    f2 = torch.outer(f1, f1)
    return f2 / f2.sum()


def upfirdn2d(x: Tensor, fir: Tensor, *, up: int = 1, pad: tuple[int, int] = (0, 0), gain: float = 1.0) -> Tensor:
    """Upsample by zero insertion, pad, then convolve every channel with ``fir``.

    Args:
        x: ``[B, C, H, W]``.
        fir: ``[k, k]`` filter (true convolution: the filter is flipped, which only matters
            for asymmetric filters).
        up: integer up-sampling factor.
        pad: (before, after) padding applied to both spatial axes after up-sampling.
        gain: multiplies the filter; ``up**2`` keeps the mean brightness when up-sampling.

    Returns:
        ``[B, C, H*up + pad0 + pad1 - k + 1, ...]``.
    """
    b, c, h, w = x.shape
    if up > 1:
        fmt = memory_format_of(x)
        # Zero insertion: every input pixel lands on the top-left of an up x up cell.
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        # The 6-D detour comes back in NCHW order; restore the caller's layout so a
        # channels_last forward pass stays channels_last (a no-op for NCHW inputs).
        x = x.reshape(b, c, h * up, w * up).contiguous(memory_format=fmt)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    if _batch_invariance_enabled and x.device.type == "cpu":
        taps = _separable_taps(fir)
        if taps is not None:
            return _fir_separable(x, [t * gain for t in taps[0]], taps[1])
    k = (fir * gain).flip([0, 1]).to(dtype=x.dtype, device=x.device)
    weight = k[None, None].expand(c, 1, *k.shape)
    return F.conv2d(x, weight, groups=c)


# Per FIR tensor (by id, with a weak reference that detects a recycled id): its version counter
# and the separable taps of the flipped filter, or None when it is not separable. Read once per
# filter, not once per call. (Tensors cannot key a WeakKeyDictionary: ``==`` is element-wise.)
_SEPARABLE: dict[int, tuple[weakref.ref[Tensor], int, tuple[list[float], list[float]] | None]] = {}


def _separable_taps(fir: Tensor) -> tuple[list[float], list[float]] | None:
    """``(taps_h, taps_w)`` with ``outer(taps_h, taps_w) == fir.flip([0, 1])`` (a true
    convolution's kernel), or None when ``fir`` is not a rank-1 (separable) filter."""
    hit = _SEPARABLE.get(id(fir))
    if hit is not None and hit[0]() is fir and hit[1] == fir._version:
        return hit[2]
    f = fir.detach().double().cpu().flip([0, 1])
    total = f.sum()
    col, row = f.sum(dim=1) / total, f.sum(dim=0)
    taps = (col.tolist(), row.tolist()) if torch.allclose(torch.outer(col, row), f, rtol=0, atol=1e-12) else None
    _SEPARABLE[id(fir)] = (weakref.ref(fir), fir._version, taps)
    return taps


def _fir_separable(x: Tensor, taps_h: list[float], taps_w: list[float]) -> Tensor:
    """Valid 2-D correlation of every channel of ``x [B, C, H, W]`` with ``outer(taps_h, taps_w)``
    as two 1-D passes: ``[B, C, H - kh + 1, W - kw + 1]``.

    The batch-invariant CPU path of the FIR blur. PyTorch's native (non-oneDNN) depthwise
    convolution loops over channel groups and is the slowest op of the generator's backward
    (3x the whole rest of the narrow demo model). Plain multiplies by a scalar and plain adds
    are exactly rounded, hence computed identically at any position of any batch (no fused
    multiply-add whose use could differ between vectorised body and scalar tail)."""
    kh, kw = len(taps_h), len(taps_w)
    ho, wo = x.shape[-2] - kh + 1, x.shape[-1] - kw + 1
    acc = x[..., :, 0:wo] * taps_w[0]
    for t in range(1, kw):
        acc = acc + x[..., :, t:t + wo] * taps_w[t]
    out = acc[..., 0:ho, :] * taps_h[0]
    for t in range(1, kh):
        out = out + acc[..., t:t + ho, :] * taps_h[t]
    return out


def upsample2d(x: Tensor, fir: Tensor) -> Tensor:
    """2x FIR up-sampling of ``[B, C, H, W]`` to ``[B, C, 2H, 2W]`` (the skip-RGB path)."""
    k = fir.shape[-1]
    return upfirdn2d(x, fir, up=2, pad=((k + 1) // 2, (k - 2) // 2), gain=4.0)


# cuBLAS is deterministic only with a fixed workspace; the variable must be set before the
# first cuBLAS call, i.e. before any CUDA work, which importing this module precedes.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def batch_invariant(device: torch.device | str, enabled: bool = True) -> Iterator[None]:
    """Reproducible kernels: the same inputs give the same bits on the same device.

    CPU: oneDNN picks convolution algorithms by shape, batch size included, so an image computed
    alone and inside a batch can differ in the last bits, and the noise stage's Adam at lr 5
    amplifies that. PyTorch's native CPU kernels work image by image and are batch invariant
    (about 25% slower on large layers, 2-3x slower on the narrow demo model), so inside this
    block oneDNN is off. So is NNPACK: without oneDNN, PyTorch switches forward convolutions to
    NNPACK from batch 16 up (measured: the demo model rendered an image differently, by 1e-5,
    alone and in a batch of 16).

    CUDA: cuDNN's autotuner and its atomic-add backward kernels make two runs with the same seed
    differ (measured on an H100: w after 300+300 steps differed by up to 0.4), so inside this
    block cuDNN is deterministic, the autotuner off and PyTorch's deterministic algorithms on
    (warn-only, for ops that have none). Results still depend on the batch size on CUDA.
    """
    if not enabled or not _batch_invariance_enabled:
        yield
        return
    kind = torch.device(device).type
    if kind == "cpu":
        # Set the flags directly: ``mkldnn.flags()`` also resets TF32 settings and warns each time.
        previous = torch._C._get_mkldnn_enabled(), torch._C._get_nnpack_enabled()
        torch._C._set_mkldnn_enabled(False)
        torch._C._set_nnpack_enabled(False)
        try:
            yield
        finally:
            torch._C._set_mkldnn_enabled(previous[0])
            torch._C._set_nnpack_enabled(previous[1])
    elif kind == "cuda":
        cudnn = torch.backends.cudnn
        saved = (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
                 torch.is_deterministic_algorithms_warn_only_enabled())
        cudnn.deterministic, cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            cudnn.deterministic, cudnn.benchmark = saved[0], saved[1]
            torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
    else:
        yield


def batch_invariant_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``x [B, K] @ weight[N, K].T -> [B, N]`` whose rows do not depend on the other rows.

    CPU BLAS switches kernels with the number of rows (gemv for one), which changes rounding;
    computing every row with the same one-row call rounds identically for any batch, so on CPU
    an image's embedding is bitwise independent of the batch it is computed in. These products
    are tiny next to the convolutions. On CUDA the ordinary GEMM is used (agreement to float
    tolerance).
    """
    w = weight.to(x.dtype)
    if _batch_invariance_enabled and x.device.type == "cpu" and x.shape[0] > 1:
        return torch.cat([F.linear(row, w) for row in x.split(1)])
    return F.linear(x, w)


class EqualLinear(nn.Module):
    """Fully connected layer with the equalised learning rate of ProGAN/StyleGAN.

    ``y = x @ (weight * lr_mul / sqrt(in)).T + bias * lr_mul``, optionally followed by a
    leaky ReLU scaled by sqrt(2). ``lr_mul`` is 0.01 in the mapping network.
    """

    def __init__(self, in_features: int, out_features: int, *, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        y = batch_invariant_linear(x, self.weight * self.weight_gain) + (self.bias * self.lr_mul).to(x.dtype)
        if self.activation:
            y = F.leaky_relu(y, LRELU_SLOPE) * LRELU_GAIN
        return y


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool = True,
                     up: bool = False, fir: Tensor | None = None) -> Tensor:
    """StyleGAN2 modulated convolution, batched without grouped convolutions.

    Modulating the input activations instead of the weights is algebraically identical to
    per-image weights, and it lets the whole batch share one dense convolution (fast on GPU,
    friendly to channels_last and autocast).

    Args:
        x: ``[B, Cin, H, W]``.
        weight: ``[Cout, Cin, k, k]`` (already He-scaled or not; demodulation removes scale).
        styles: ``[B, Cin]`` per-image channel scales.
        demodulate: normalise each output channel to unit expected variance.
        up: 2x up-sampling via transposed convolution + FIR blur (needs ``fir``).

    Returns:
        ``[B, Cout, H, W]`` (``2H, 2W`` when ``up``).
    """
    kw = weight.shape[-1]
    x = x * styles.to(x.dtype)[:, :, None, None]
    w = weight.to(x.dtype)
    if up:
        assert fir is not None
        # Transposed conv wants [Cin, Cout, k, k]; stride 2 up-samples, the blur removes the
        # checkerboard. Padding matches the reference: output is exactly 2H x 2W.
        x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
        p = fir.shape[-1] - 2 - (kw - 1)
        x = upfirdn2d(x, fir, pad=((p + 1) // 2 + 1, p // 2 + 1), gain=4.0)
    else:
        x = F.conv2d(x, w, padding=kw // 2)
    if demodulate:
        # d[b, o] = 1 / sqrt(sum_{i,k} (w[o,i,k] * s[b,i])^2 + eps), computed in fp32.
        wsq = weight.float().square().sum(dim=[2, 3])  # [Cout, Cin]
        dcoefs = (batch_invariant_linear(styles.float().square(), wsq) + 1e-8).rsqrt()  # [B, Cout]
        x = x * dcoefs.to(x.dtype)[:, :, None, None]
    return x
