"""Throughput options of the synthesis forward: channels_last and ``torch.compile``.

None of these change the objective: they change memory layouts, kernels and batch sizes, so
results agree with the default engine to float rounding (not bit for bit; the default engine is
the reproducible one). The blocks (:func:`i2score.method.blocks.optimize_w`, ``optimize_noise``) and
:func:`i2score.method.applications.reconstruct` take them as keyword options, off by default.

* ``channels_last``: the synthesis starts from an NHWC activation and every later op keeps the
  layout (FIR resampling restores it after its NCHW detour); the generated image, and hence the
  VGG16 input, is NHWC too. Only activations are converted: cuDNN and oneDNN pick their NHWC
  kernels when the input is NHWC and reorder the (frozen, small next to the activations)
  weights themselves, so the caller's modules are never mutated.
* ``compile``: :func:`compiled_synthesis` wraps the synthesis forward in ``torch.compile``,
  once per (module, layout) per process.

The batch size that fits a GPU is :func:`i2score.method.batch_size.largest_fitting_batch`.
"""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from i2score.generator.network import StyleGAN2, SynthesisNetwork
from i2score.generator.stylegan3 import STYLEGAN3_FAMILIES

Render = Callable[[Tensor, Sequence[Tensor]], Tensor]
"""``render(w [B, L, w_dim], noise list of [B, 1, r, r]) -> image [B, 3, R, R]`` in [-1, 1]."""

# Compiled synthesis forwards, per module: compiling again for every block call would cost
# seconds to minutes each time; dynamo's own cache is per function object, so the function
# object must be kept. Weak keys: a dropped generator drops its compiled code.
_COMPILED: weakref.WeakKeyDictionary[SynthesisNetwork, dict[bool, Render]] = weakref.WeakKeyDictionary()

def has_c_compiler() -> bool:
    """Whether a C/C++ compiler is on PATH (torch.compile's CPU backend needs one)."""
    return any(shutil.which(cc) is not None for cc in ("cc", "gcc", "clang", "c++", "g++"))


def compiled_synthesis(G: StyleGAN2, *, channels_last: bool = False) -> Render:
    """``torch.compile`` of ``G``'s synthesis forward, compiled once per process and layout.

    The returned function renders ``w [B, L, w_dim]`` with ``noise`` (list of ``[B, 1, r, r]``)
    to ``[B, 3, R, R]`` (nominally [-1, 1]). Kernel choices (batch-invariant vs fast) follow
    the caller's context as in eager mode; inductor's fused elementwise kernels are not
    bitwise batch invariant, so compiled results agree with eager to float tolerance only.
    Every new batch size is a new specialisation (dynamo marks the batch dynamic after the
    first change), so per-image early stopping, which shrinks the batch, can recompile.
    """
    synthesis = G.synthesis
    per_layout = _COMPILED.setdefault(synthesis, {})
    if channels_last not in per_layout:
        last = synthesis.cfg.num_convs - 1

        def render(w: Tensor, noise: Sequence[Tensor]) -> Tensor:
            # ``_run`` rather than ``run``: the caller already holds the kernel context, and a
            # context manager that flips backend flags would split the compiled graph.
            rgb = synthesis._run(None, w, list(noise), last, channels_last=channels_last).rgb
            assert rgb is not None
            return rgb

        per_layout[channels_last] = torch.compile(render)
    return per_layout[channels_last]


def renderer(G: StyleGAN2, *, channels_last: bool = False, compile: bool = False) -> Render:
    """The synthesis forward the optimisation loop calls: eager ``G.synthesize`` (default) or
    the cached compiled one; both optionally channels_last (not for StyleGAN3)."""
    if compile and G.family in STYLEGAN3_FAMILIES:
        raise ValueError(f"compile is a StyleGAN2 engine option; {G.family} generators run eager only")
    if compile:
        compiled = compiled_synthesis(G, channels_last=channels_last)

        def render(w: Tensor, noise: Sequence[Tensor]) -> Tensor:
            G._check(w, noise)  # shape errors as in eager mode (cheap Python, outside the graph)
            return compiled(w, noise)

        return render
    return lambda w, noise: G.synthesize(w, noise, channels_last=channels_last)


__all__ = [
    "Render",
    "compiled_synthesis",
    "has_c_compiler",
    "renderer",
]
