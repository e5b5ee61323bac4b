"""Throughput options of the embedding engine: channels_last, ``torch.compile``, batch sizing.

None of these change the objective: they change memory layouts, kernels and batch sizes, so
results agree with the default engine to float rounding (not bit for bit; the default engine is
the reproducible one). The blocks (:func:`i2score.method.blocks.optimize_w`, ``optimize_noise``) and
:func:`i2score.method.applications.reconstruct.reconstruct` take them as keyword options, off by default.

* ``channels_last``: the synthesis starts from an NHWC activation and every later op keeps the
  layout (FIR resampling restores it after its NCHW detour); the generated image, and hence the
  VGG16 input, is NHWC too. Only activations are converted: cuDNN and oneDNN pick their NHWC
  kernels when the input is NHWC and reorder the (frozen, small next to the activations)
  weights themselves, so the caller's modules are never mutated.
* ``compile``: :func:`compiled_synthesis` wraps the synthesis forward in ``torch.compile``,
  once per (module, layout) per process.
* :func:`largest_fitting_batch`: on CUDA, the largest batch whose W+ step fits in free memory.
"""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from i2score.generator.network import StyleGAN2, SynthesisNetwork

Render = Callable[[Tensor, Sequence[Tensor]], Tensor]
"""``render(w [B, L, w_dim], noise list of [B, 1, r, r]) -> image [B, 3, R, R]`` in [-1, 1]."""

# Compiled synthesis forwards, per module: compiling again for every block call would cost
# seconds to minutes each time; dynamo's own cache is per function object, so the function
# object must be kept. Weak keys: a dropped generator drops its compiled code.
_COMPILED: weakref.WeakKeyDictionary[SynthesisNetwork, dict[bool, Render]] = weakref.WeakKeyDictionary()

# Largest fitting batch per (id(G), id(vgg), device, dtype, channels_last, max_batch); the
# weak references detect a recycled id().
_BATCH_CACHE: dict[
    tuple[object, ...], tuple[weakref.ref[torch.nn.Module], weakref.ref[torch.nn.Module] | None, int]
] = {}


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
    the cached compiled one; both optionally channels_last."""
    if compile:
        compiled = compiled_synthesis(G, channels_last=channels_last)

        def render(w: Tensor, noise: Sequence[Tensor]) -> Tensor:
            G._check(w, noise)  # shape errors as in eager mode (cheap Python, outside the graph)
            return compiled(w, noise)

        return render
    return lambda w, noise: G.synthesize(w, noise, channels_last=channels_last)


def _search_largest(fits: Callable[[int], bool], max_batch: int) -> int:
    """Largest ``b`` in ``1..max_batch`` with ``fits(b)``, assuming ``fits`` is monotone
    (true up to some size, false above); 0 when even ``fits(1)`` is false.

    Doubles from 1 until a size fails (or ``max_batch`` is reached), then bisects between the
    last size that fit and the first that failed: ``O(log max_batch)`` probes, each a real
    optimisation step when probing GPU memory.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if not fits(1):
        return 0
    good, bad = 1, None
    while bad is None and good < max_batch:
        trial = min(good * 2, max_batch)
        if fits(trial):
            good = trial
        else:
            bad = trial
    if bad is None:
        return good  # max_batch fits
    while bad - good > 1:  # invariant: fits(good), not fits(bad)
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def _w_step_fits(G: StyleGAN2, vgg: torch.nn.Module | None, device: torch.device, batch: int, *,
                 autocast_dtype: torch.dtype | None, channels_last: bool, headroom: float) -> bool:
    """Run one W+ optimisation step (generator forward + backward, MSE + VGG16 perceptual
    loss, Adam update) at ``batch`` on CUDA; False on out-of-memory or when the peak memory
    leaves less than ``headroom`` of the device's memory free (room for the loop's targets,
    Adam moments and allocator fragmentation, which a single probe step does not show)."""
    from i2score.features import perceptual_preprocess
    from i2score.method.losses import PERCEPTUAL_LAYERS

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        w = torch.zeros(batch, G.num_ws, G.w_dim, device=device, requires_grad=True)
        noise = [torch.zeros(batch, *s, device=device) for s in G.noise_shapes]
        opt = torch.optim.Adam([w], lr=0.01)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            image = G.synthesize(w, noise, channels_last=channels_last)
        image = image.float()
        target = torch.zeros_like(image)
        loss = (image - target).square().flatten(1).mean(dim=1)
        if vgg is not None:
            with torch.no_grad():
                tf = vgg(perceptual_preprocess(target), PERCEPTUAL_LAYERS)
            pf = vgg(perceptual_preprocess(image), PERCEPTUAL_LAYERS)
            loss = loss + sum((a - b).square().flatten(1).mean(dim=1) for a, b in zip(pf, tf, strict=True))
        loss.sum().backward()
        opt.step()
        torch.cuda.synchronize(device)
        _, total = torch.cuda.mem_get_info(device)
        return torch.cuda.max_memory_reserved(device) <= (1.0 - headroom) * total
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        # Drop every probe tensor before giving the cached blocks back to the driver.
        w = noise = opt = image = target = loss = None  # type: ignore[assignment]
        torch.cuda.empty_cache()


def largest_fitting_batch(G: StyleGAN2, vgg: torch.nn.Module | None, device: torch.device | str, *,
                          max_batch: int = 64, autocast_dtype: torch.dtype | None = None,
                          channels_last: bool = False, headroom: float = 0.05) -> int:
    """Largest batch (``<= max_batch``) whose W+ optimisation step fits in GPU memory.

    On CUDA it probes real steps (:func:`_w_step_fits`) with doubling then bisection
    (:func:`_search_largest`), catching ``torch.cuda.OutOfMemoryError`` and emptying the cache
    after each probe; the answer is cached per (model, VGG, device, dtype, layout, max_batch)
    for the process. On any other device it does not guess: CPU memory is not the limit there
    (time is), so it returns ``max_batch`` unchanged.

    Args:
        G: generator on ``device``.
        vgg: VGG16 features on ``device`` (None: probe the noise stage's generator-only step).
        max_batch: upper bound of the search (and the answer on CPU).
        autocast_dtype: e.g. ``torch.bfloat16``: probe under the autocast the run will use.
        headroom: fraction of device memory to keep free at the probe's peak.

    Raises:
        RuntimeError: on CUDA when not even batch 1 fits.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return max_batch
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    key = (id(G), id(vgg), str(dev), autocast_dtype, channels_last, max_batch, headroom)
    hit = _BATCH_CACHE.get(key)
    if hit is not None and hit[0]() is G and (hit[1] is None and vgg is None or hit[1] is not None and hit[1]() is vgg):
        return hit[2]
    best = _search_largest(lambda b: _w_step_fits(G, vgg, dev, b, autocast_dtype=autocast_dtype,
                                                  channels_last=channels_last, headroom=headroom), max_batch)
    if best == 0:
        raise RuntimeError(f"not even one image's W+ step fits in the free memory of {dev}")
    _BATCH_CACHE[key] = (weakref.ref(G), None if vgg is None else weakref.ref(vgg), best)
    return best


def clear_batch_cache() -> None:
    """Forget the cached :func:`largest_fitting_batch` answers (e.g. after freeing memory)."""
    _BATCH_CACHE.clear()


__all__ = [
    "Render",
    "clear_batch_cache",
    "compiled_synthesis",
    "has_c_compiler",
    "largest_fitting_batch",
    "renderer",
]
