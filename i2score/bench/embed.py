"""Embedding throughput benchmark (``i2s bench embed``).

Times real optimisation steps of both stages of Alg. 2 (the W+ step: generator forward and
backward plus VGG16 perceptual loss; the noise step: generator forward and backward with the
MSE loss) over batch sizes, precisions, kernels and memory layouts, and, in the same process,
a per-image **reference loop** written the way published reimplementations run it
(:func:`reference_stage`). Every number is a median of timed steps after warm-up; images/hour
for the paper's 5000 + 3000 schedule is computed from the two measured per-step times
(:func:`images_per_hour`), never assumed, and every row's speed-up is the ratio of its
images/hour to the reference loop's (:func:`add_reference_ratios`). Ratios within one run are
meaningful even on a noisy shared machine; absolute numbers across runs are not.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from i2score.features import VGG16Features, perceptual_preprocess
from i2score.generator.network import StyleGAN2
from i2score.kernels import batch_invariant, fast_kernels
from i2score.method.blocks import optimize_noise, optimize_w
from i2score.method.losses import PERCEPTUAL_LAYERS, masked_feature_mse, masked_mse
from i2score.method.objective import PERCEPT_WEIGHT, embedding_target

PAPER_STEPS_W = 5000
PAPER_STEPS_N = 3000

KERNELS = ("invariant", "fast")
"""``invariant``: the product's default batch-invariant kernels (:func:`~i2score.kernels.batch_invariant`);
``fast``: PyTorch's ordinary kernels (oneDNN on CPU, cuDNN autotuning), via :func:`~i2score.kernels.fast_kernels`."""

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class EmbedBenchRow:
    """One measured configuration. Times are medians in seconds per optimisation step.

    ``loop`` is ``"batched"`` (the product's engine, :func:`i2score.method.blocks.optimize_w` /
    ``optimize_noise``) or ``"reference"`` (:func:`reference_stage`, batch 1, fp32).
    ``speedup_vs_reference`` is ``images_per_hour_paper`` over the reference row's (same
    model and device), None when no reference was measured.
    """

    resolution: int
    channel_max: int
    batch: int
    dtype: str
    device: str
    w_step_s: float
    n_step_s: float
    w_steps_per_s: float
    n_steps_per_s: float
    images_per_s_w: float
    images_per_hour_paper: float
    repeats: int
    loop: str = "batched"
    kernels: str = "invariant"
    channels_last: bool = False
    compile: bool = False
    model: str = "random"
    speedup_vs_reference: float | None = None


def images_per_hour(batch: int, w_step_s: float, n_step_s: float, *, steps_w: int = PAPER_STEPS_W,
                    steps_n: int = PAPER_STEPS_N) -> float:
    """Images per hour of the full schedule: ``3600·batch / (steps_w·t_w + steps_n·t_n)``, from
    the measured seconds per step of each stage (one step advances ``batch`` images)."""
    return 3600.0 * batch / (steps_w * w_step_s + steps_n * n_step_s)


def make_row(*, resolution: int, channel_max: int, batch: int, dtype: str, device: str, w_step_s: float,
             n_step_s: float, repeats: int, loop: str = "batched", kernels: str = "invariant",
             channels_last: bool = False, compile: bool = False, model: str = "random") -> EmbedBenchRow:
    """A row with every derived rate computed from the two measured per-step times."""
    return EmbedBenchRow(
        resolution=resolution, channel_max=channel_max, batch=batch, dtype=dtype, device=device,
        w_step_s=w_step_s, n_step_s=n_step_s, w_steps_per_s=1 / w_step_s, n_steps_per_s=1 / n_step_s,
        images_per_s_w=batch / w_step_s, images_per_hour_paper=images_per_hour(batch, w_step_s, n_step_s),
        repeats=repeats, loop=loop, kernels=kernels, channels_last=channels_last, compile=compile, model=model)


def add_reference_ratios(rows: Sequence[EmbedBenchRow], reference: Sequence[EmbedBenchRow]) -> list[EmbedBenchRow]:
    """Copies of ``rows`` (and of ``reference``) with ``speedup_vs_reference`` = images/hour over
    that of the reference row of the same (model, resolution, channel_max, device)."""
    def key(r: EmbedBenchRow) -> tuple[str, int, int, str]:
        return (r.model, r.resolution, r.channel_max, r.device)

    ref = {key(r): r for r in reference}
    out = []
    for r in [*reference, *rows]:
        base = ref.get(key(r))
        ratio = None if base is None else r.images_per_hour_paper / base.images_per_hour_paper
        out.append(replace(r, speedup_vs_reference=ratio))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(run: Callable[[], None], device: torch.device, *, warmup: int, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _per_step(run: Callable[[int], None], device: torch.device, *, steps: int, warmup: int, repeats: int) -> float:
    """Seconds per optimisation step: a call also prepares targets (and the product's blocks
    render once more for the final loss), so the difference between a ``steps``-step and a
    0-step call, over ``steps``, is the cost of the steps alone. Both loops are timed this way."""
    t_k = _median_seconds(lambda: run(steps), device, warmup=warmup, repeats=repeats)
    t_0 = _median_seconds(lambda: run(0), device, warmup=1, repeats=repeats)
    return max(t_k - t_0, 1e-9) / steps


@contextlib.contextmanager
def kernel_mode(kernels: str) -> Iterator[None]:
    """``"invariant"``: leave the product's batch-invariant kernels on; ``"fast"``: ordinary ones."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    with fast_kernels() if kernels == "fast" else contextlib.nullcontext():
        yield


def reference_stage(G: StyleGAN2, vgg: VGG16Features, x: Tensor, *, w_init: Tensor, noise: Sequence[Tensor],
                    stage: str, steps: int, lr_w: float = 0.01, lr_n: float = 5.0) -> tuple[float, list[Tensor]]:
    """The per-image baseline: one stage of Alg. 2 for ONE image, as published
    reimplementations run it (the baseline the engine is compared with, not the product).

    Batch 1, float32, PyTorch's ordinary kernels (inside :func:`~i2score.kernels.fast_kernels`, so oneDNN /
    cuDNN stay as PyTorch sets them and no batch-invariant row splitting happens), a single
    parameter tensor with Adam, the target's VGG16 features computed once (as careful
    projectors do), the same objective as the engine (a ``W_l`` target: MSE + perceptual;
    the noise stage: MSE), and ``loss.item()`` every step, because they log the loss every
    step (a host sync on GPU).

    Args:
        x: ``[1, 3, R, R]`` in [-1, 1].
        w_init: ``[1, L, w_dim]`` start point (the W stage's variable; fixed in the noise stage).
        noise: list of ``[1, 1, r, r]`` maps (fixed in the W stage; the noise stage's variables).
        stage: ``"w"`` (Adam lr ``lr_w`` on w) or ``"noise"`` (Adam lr ``lr_n`` on the maps).
        steps: optimisation steps.

    Returns:
        ``(last logged loss, variables)``: the loss a Python float (NaN when ``steps`` is 0), the
        variables ``[w]`` or the noise maps as optimised.
    """
    if x.shape[0] != 1:
        raise ValueError(f"the reference loop embeds one image at a time, got a batch of {x.shape[0]}")
    last = float("nan")
    with fast_kernels():
        if stage == "w":
            w = w_init.detach().clone().requires_grad_(True)
            fixed_noise = [n.detach() for n in noise]
            opt = torch.optim.Adam([w], lr=lr_w, betas=(0.9, 0.999), eps=1e-8)
            with torch.no_grad():
                target_feats = vgg(perceptual_preprocess(x), PERCEPTUAL_LAYERS)
            for _ in range(steps):
                image = G.synthesize(w, fixed_noise)
                feats = vgg(perceptual_preprocess(image), PERCEPTUAL_LAYERS)
                loss = (masked_mse(image, x) + PERCEPT_WEIGHT * masked_feature_mse(feats, target_feats)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last = loss.item()
            return last, [w.detach()]
        if stage == "noise":
            fixed_w = w_init.detach()
            maps = [n.detach().clone().requires_grad_(True) for n in noise]
            opt = torch.optim.Adam(maps, lr=lr_n, betas=(0.9, 0.999), eps=1e-8)
            for _ in range(steps):
                loss = masked_mse(G.synthesize(fixed_w, maps), x).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last = loss.item()
            return last, [m.detach() for m in maps]
    raise ValueError(f"stage must be 'w' or 'noise', got {stage!r}")


def _inputs(G: StyleGAN2, batch: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Targets ``[B, 3, R, R]`` (the generator's own samples), mean-latent start ``[B, L, w_dim]``
    and initial noise, the same for every configuration."""
    with torch.no_grad(), batch_invariant(G.device):
        x = G.sample(batch, seed=1)[0].clamp(-1, 1)
    w0 = G.mean_w(1000, 0)[None, None].expand(batch, G.num_ws, -1).clone()
    return x, w0, G.random_noise(batch, [0] * batch)


def bench_reference(G: StyleGAN2, vgg: VGG16Features, *, repeats: int = 5, warmup: int = 1,
                    steps_per_timing: int = 3, model: str = "random") -> EmbedBenchRow:
    """Time :func:`reference_stage` per step (both stages) and return its row (batch 1, fp32)."""
    dev = G.device
    x, w0, n0 = _inputs(G, 1)

    def w_steps(k: int) -> None:
        reference_stage(G, vgg, x, w_init=w0, noise=n0, stage="w", steps=k)

    def n_steps(k: int) -> None:
        reference_stage(G, vgg, x, w_init=w0, noise=n0, stage="noise", steps=k)

    timing = {"steps": steps_per_timing, "warmup": warmup, "repeats": repeats}
    t_w, t_n = _per_step(w_steps, dev, **timing), _per_step(n_steps, dev, **timing)
    return make_row(resolution=G.resolution, channel_max=G.cfg.channel_max, batch=1, dtype="fp32", device=str(dev),
                    w_step_s=t_w, n_step_s=t_n, repeats=repeats, loop="reference", kernels="fast", model=model)


def resolve_batch_sizes(batch_sizes: Sequence[int | str], G: StyleGAN2, vgg: VGG16Features, *, max_batch: int,
                        autocast_dtype: torch.dtype | None, channels_last: bool) -> list[int]:
    """Integers as given; ``"auto"`` becomes :func:`i2score.method.batch_size.largest_fitting_batch` (on
    CPU that is ``max_batch``: CPU memory is not what limits the batch there)."""
    from i2score.method.batch_size import largest_fitting_batch

    out: list[int] = []
    for b in batch_sizes:
        if b == "auto":
            b = largest_fitting_batch(G, vgg, G.device, max_batch=max_batch, autocast_dtype=autocast_dtype,
                                      channels_last=channels_last)
        b = int(b)
        if b < 1:
            raise ValueError(f"batch sizes must be >= 1, got {b}")
        if b not in out:
            out.append(b)
    return out


def bench_embed(*, resolution: int = 64, batch_sizes: Sequence[int | str], dtypes: Sequence[str] = ("fp32",),
                device: str = "cpu", channel_max: int = 512, channel_multiplier: float = 2,
                repeats: int = 5, warmup: int = 1, steps_per_timing: int = 3, vgg: VGG16Features,
                kernels: Sequence[str] = ("invariant",), channels_last: Sequence[bool] = (False,),
                compile: Sequence[bool] = (False,), G: StyleGAN2 | None = None, model: str = "random",
                max_batch: int = 64, progress: Callable[[str], None] | None = None) -> list[EmbedBenchRow]:
    """Measure steps/s and images/hour of both embedding stages of the product's engine.

    Args:
        resolution, channel_max, channel_multiplier: a randomly initialised generator (config-f
            channels at the defaults; speed does not depend on the weights). Ignored with ``G``.
        G: a generator to time instead (e.g. the bundled demo model); ``model`` labels it.
        batch_sizes: images per optimisation batch; ``"auto"``: see :func:`resolve_batch_sizes`.
        dtypes: ``"fp32"`` and/or ``"bf16"`` (generator under autocast; loss and Adam in fp32).
        device: ``"cpu"`` or ``"cuda[:i]"``.
        vgg: VGG16 features (real weights; the cost is the same for any weights).
        kernels: subset of :data:`KERNELS`.
        channels_last, compile: the values of each engine option to measure (every combination).
        repeats: timed calls per measurement (the median is reported).
        steps_per_timing: optimisation steps in each timed call.

    Returns:
        One :class:`EmbedBenchRow` per (dtype, kernels, channels_last, compile, batch), ``loop="batched"``.
    """
    dev = torch.device(device)
    if G is None:
        G = StyleGAN2(resolution, channel_max=channel_max, channel_multiplier=channel_multiplier, seed=0)
    G = G.to(dev)
    vgg = vgg.to(dev)
    rows: list[EmbedBenchRow] = []
    for dtype_name in dtypes:
        if dtype_name not in DTYPES:
            raise ValueError(f"unknown dtype {dtype_name!r}; use {sorted(DTYPES)}")
        autocast = DTYPES[dtype_name]
        for kern in kernels:
            for cl in channels_last:
                for comp in compile:
                    sizes = resolve_batch_sizes(batch_sizes, G, vgg, max_batch=max_batch, autocast_dtype=autocast,
                                                channels_last=cl)
                    for batch in sizes:
                        row = _bench_batched(G, vgg, batch=batch, autocast=autocast, dtype_name=dtype_name,
                                             kernels=kern, channels_last=cl, compile=comp, repeats=repeats,
                                             warmup=warmup, steps_per_timing=steps_per_timing, model=model)
                        rows.append(row)
                        if progress is not None:
                            progress(f"{describe(row)}: {row.w_steps_per_s:.2f} W-steps/s, "
                                     f"{row.images_per_hour_paper:.1f} images/h (5000+3000)")
    return rows


def _bench_batched(G: StyleGAN2, vgg: VGG16Features, *, batch: int, autocast: torch.dtype | None, dtype_name: str,
                   kernels: str, channels_last: bool, compile: bool, repeats: int, warmup: int,
                   steps_per_timing: int, model: str) -> EmbedBenchRow:
    dev = G.device
    x, w0, n0 = _inputs(G, batch)

    def w_steps(k: int) -> None:
        optimize_w(G, [embedding_target(x)], w_ini=w0, n_ini=n0, vgg=vgg, steps=k, autocast_dtype=autocast,
                   channels_last=channels_last, compile=compile)

    def n_steps(k: int) -> None:
        optimize_noise(G, M=None, w=w0, n_ini=n0, x=x, steps=k, autocast_dtype=autocast,
                       channels_last=channels_last, compile=compile)

    timing = {"steps": steps_per_timing, "warmup": warmup, "repeats": repeats}
    with kernel_mode(kernels):
        t_w, t_n = _per_step(w_steps, dev, **timing), _per_step(n_steps, dev, **timing)
    return make_row(resolution=G.resolution, channel_max=G.cfg.channel_max, batch=batch, dtype=dtype_name,
                    device=str(dev), w_step_s=t_w, n_step_s=t_n, repeats=repeats, kernels=kernels,
                    channels_last=channels_last, compile=compile, model=model)


def describe(row: EmbedBenchRow) -> str:
    """Short label of a row's configuration (progress lines)."""
    extra = "".join([", channels_last" if row.channels_last else "", ", compile" if row.compile else ""])
    return (f"{row.loop} res {row.resolution} batch {row.batch} {row.dtype} {row.kernels} kernels{extra}")


def cpu_has_native_bf16() -> bool | None:
    """Whether the CPU has bf16 arithmetic (AVX512-BF16 or AMX); None when it cannot be told.
    Without it, CPU bf16 autocast is emulated and much slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu") -> dict[str, Any]:
    """Where the numbers were taken: versions, the device's name, threads and machine load."""
    dev = torch.device(device)
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "device": str(dev), "cpu": _cpu_name(), "cpu_threads": torch.get_num_threads(),
                           "cpu_count": os.cpu_count(), "machine": platform.machine(),
                           "cpu_native_bf16": cpu_has_native_bf16(),
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                           "mkldnn_available": torch.backends.mkldnn.is_available()}
    with contextlib.suppress(OSError):
        # Other processes on the same cores inflate every row alike; ratios survive, absolutes don't.
        env["load_average_1m"] = os.getloadavg()[0]
    env["device_name"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else env["cpu"]
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def rows_to_markdown(rows: Sequence[EmbedBenchRow], reference: Sequence[EmbedBenchRow] = ()) -> str:
    """Markdown table, reference rows first; ``vs reference`` is each row's images/hour over the
    reference loop's (computed here from the measured times when rows carry no ratio yet)."""
    all_rows = add_reference_ratios(rows, reference) if reference else list(rows)
    lines = [
        ("| loop | res | ch max | batch | dtype | kernels | channels_last | compile | W s/step | noise s/step "
        "| W steps/s | images/h (5000 W + 3000 noise) | vs reference |"),
        "|---|---:|---:|---:|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in all_rows:
        lines.append(f"| {r.loop} | {r.resolution} | {r.channel_max} | {r.batch} | {r.dtype} | {r.kernels} | "
                     f"{'yes' if r.channels_last else 'no'} | {'yes' if r.compile else 'no'} | {r.w_step_s:.4f} | "
                     f"{r.n_step_s:.4f} | {r.w_steps_per_s:.2f} | {r.images_per_hour_paper:.1f} | "
                     f"{_ratio(r.speedup_vs_reference)} |")
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[EmbedBenchRow], json_path: str, md_path: str, *,
                 reference: Sequence[EmbedBenchRow] = (), device: str = "cpu",
                 settings: dict[str, Any] | None = None) -> None:
    """Write the environment, the measurement settings, the reference row(s) and the product's
    rows (each with its ratio over the reference) as JSON, and the Markdown table."""
    ratioed = add_reference_ratios(rows, reference)
    ref_out, rows_out = ratioed[:len(reference)], ratioed[len(reference):]
    payload = {"environment": environment(device), "settings": settings or {},
               "schedule": {"steps_w": PAPER_STEPS_W, "steps_n": PAPER_STEPS_N},
               "reference": [asdict(r) for r in ref_out], "rows": [asdict(r) for r in rows_out]}
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=2)
    with open(md_path, "w") as f:
        f.write(rows_to_markdown(rows, reference))


@dataclass
class LadderRow:
    """Reconstruction quality of one image (all values computed from the returned latents)."""

    image: str
    early_stop: bool
    psnr_w: float
    psnr_wn: float
    ssim: float
    lpips: float | None
    steps: int
    seconds: float


def sample_photos(resolution: int, names: Sequence[str] = ("astronaut", "coffee", "chelsea")
                  ) -> tuple[list[str], torch.Tensor]:
    """scikit-image's bundled photos, centre-cropped square and resized: ``[B, 3, R, R]`` in [-1, 1]."""
    import numpy as np
    import skimage.data
    from PIL import Image

    arrays = []
    for name in names:
        im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.Resampling.LANCZOS)
        arrays.append(np.asarray(im, dtype=np.float32) / 127.5 - 1)
    return list(names), torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def bench_ladder(G: StyleGAN2, images: torch.Tensor, names: Sequence[str], *, steps_w: int, steps_n: int,
                 seed: int = 0, early_stop: Any = None) -> list[LadderRow]:
    """The PSNR ladder of Alg. 2 (W+ stage, then noise stage) on a batch of images."""
    from i2score.method.applications import reconstruct

    res = reconstruct(images.to(G.device), G, steps_w=steps_w, steps_n=steps_n, seed=seed, early_stop=early_stop)
    return [LadderRow(image=n, early_stop=early_stop is not None, psnr_w=m["psnr_w"], psnr_wn=m["psnr_wn"],
                      ssim=m["ssim"], lpips=m["lpips"], steps=m["steps"], seconds=m["seconds"])
            for n, m in zip(names, res.metrics, strict=True)]


def ladder_to_markdown(rows: Sequence[LadderRow]) -> str:
    lines = ["| image | early stop | PSNR W+ (dB) | PSNR W+ then noise (dB) | gain (dB) | SSIM | LPIPS | steps "
             "| s/image |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lp = "-" if r.lpips is None else f"{r.lpips:.3f}"
        lines.append(f"| {r.image} | {'on' if r.early_stop else 'off'} | {r.psnr_w:.2f} | {r.psnr_wn:.2f} | "
                     f"{r.psnr_wn - r.psnr_w:.2f} | {r.ssim:.3f} | {lp} | {r.steps} | {r.seconds:.1f} |")
    return "\n".join(lines) + "\n"
