"""How many images one optimisation batch can hold: on CUDA, the largest batch whose W+ step
(generator forward and backward, MSE and VGG16 perceptual loss, Adam update) fits in free
memory, found by probing real steps."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from i2score.features import VGG16Features
from i2score.generator.network import StyleGAN2
from i2score.method.objective import ImageTarget, Objective, embedding_target

# Largest fitting batch per (id(G), id(vgg), device, dtype, channels_last, max_batch); the
# weak references detect a recycled id().
_BATCH_CACHE: dict[
    tuple[object, ...], tuple[weakref.ref[torch.nn.Module], weakref.ref[torch.nn.Module] | None, int]
] = {}


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


def _w_step_fits(G: StyleGAN2, vgg: VGG16Features | None, device: torch.device, batch: int, *,
                 autocast_dtype: torch.dtype | None, channels_last: bool, headroom: float) -> bool:
    """Run one W+ optimisation step (generator forward + backward, MSE + VGG16 perceptual
    loss, Adam update) at ``batch`` on CUDA; False on out-of-memory or when the peak memory
    leaves less than ``headroom`` of the device's memory free (room for the loop's targets,
    Adam moments and allocator fragmentation, which a single probe step does not show)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        w = torch.zeros(batch, G.num_ws, G.w_dim, device=device, requires_grad=True)
        noise = [torch.zeros(batch, *s, device=device) for s in G.noise_shapes]
        opt = torch.optim.Adam([w], lr=0.01)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            image = G.synthesize(w, noise, channels_last=channels_last)
        target = torch.zeros_like(image, dtype=torch.float32)
        objective = Objective([embedding_target(target) if vgg is not None else ImageTarget(target)], vgg=vgg)
        loss = objective(image.float())
        loss.sum().backward()
        opt.step()
        torch.cuda.synchronize(device)
        _, total = torch.cuda.mem_get_info(device)
        return torch.cuda.max_memory_reserved(device) <= (1.0 - headroom) * total
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        # Drop every probe tensor before giving the cached blocks back to the driver.
        w = noise = opt = image = target = objective = loss = None  # type: ignore[assignment]
        torch.cuda.empty_cache()


def largest_fitting_batch(G: StyleGAN2, vgg: VGG16Features | None, device: torch.device | str, *,
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


__all__ = ["clear_batch_cache", "largest_fitting_batch"]
