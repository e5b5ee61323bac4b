"""Which compute kernels PyTorch runs: reproducible ones by default, ordinary ones on request.

Embedding wants batch-invariant kernels (:func:`batch_invariant`): an image embedded alone and
inside a batch must give the same bits, or results would depend on how a run was batched.
Training wants the fastest kernels and never compares an image across batch sizes:
:func:`fast_kernels` switches the reproducible paths off. A leaf of the library: the generator,
the features and the method all use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

_batch_invariance_enabled = True


def batch_invariance_enabled() -> bool:
    """False inside :func:`fast_kernels`: code with a batch-invariant path of its own (row-wise
    linear layers, separable FIR filters) takes the ordinary one then."""
    return _batch_invariance_enabled


_batch_invariance_enabled = True


@contextlib.contextmanager
def fast_kernels() -> Iterator[None]:
    """Inside this block, :func:`batch_invariant` and the batch-invariant paths of
    :mod:`i2score.generator.ops` use the ordinary (fastest, batch-size dependent) CPU kernels.
    For training, where throughput matters and bitwise batch independence does not."""
    global _batch_invariance_enabled
    previous = _batch_invariance_enabled
    _batch_invariance_enabled = False
    try:
        yield
    finally:
        _batch_invariance_enabled = previous



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
