"""Embedding throughput benchmark (``i2s bench embed``).

Times real optimisation steps of both stages of Alg. 2 (the W+ step: generator forward and
backward plus VGG16 perceptual loss; the noise step: generator forward and backward with the
MSE loss) on a randomly initialised generator, over batch sizes and precisions. Every number is
a median of timed steps after warm-up, measured in one process, so ratios between rows are
meaningful even on a noisy shared machine.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from i2score.blocks import optimize_noise, optimize_w
from i2score.features import VGG16Features
from i2score.generator.network import StyleGAN2

PAPER_STEPS_W = 5000
PAPER_STEPS_N = 3000


@dataclass
class EmbedBenchRow:
    """One measured configuration. Times are medians in seconds per optimisation step."""

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


def bench_embed(*, resolution: int, batch_sizes: Sequence[int], dtypes: Sequence[str] = ("fp32",),
                device: str = "cpu", channel_max: int = 512, channel_multiplier: float = 2,
                repeats: int = 5, warmup: int = 1, steps_per_timing: int = 3, vgg: VGG16Features,
                progress: Callable[[str], None] | None = None) -> list[EmbedBenchRow]:
    """Measure steps/s and images/s of both embedding stages.

    Args:
        resolution: generator resolution (config-f channels at the defaults).
        batch_sizes: images per optimisation batch.
        dtypes: ``"fp32"`` and/or ``"bf16"`` (generator under autocast).
        device: ``"cpu"`` or ``"cuda[:i]"``.
        vgg: VGG16 features (real weights; the cost is the same for any weights).
        repeats: timed calls per measurement (the median is reported).
        steps_per_timing: optimisation steps in each timed call.

    Returns:
        One :class:`EmbedBenchRow` per (dtype, batch).
    """
    dev = torch.device(device)
    G = StyleGAN2(resolution, channel_max=channel_max, channel_multiplier=channel_multiplier, seed=0).to(dev)
    vgg = vgg.to(dev)
    rows: list[EmbedBenchRow] = []
    for dtype_name in dtypes:
        autocast = {"fp32": None, "bf16": torch.bfloat16}[dtype_name]
        for batch in batch_sizes:
            with torch.no_grad():
                x = G.sample(batch, seed=1)[0].clamp(-1, 1)
            w0 = G.mean_w(1000, 0)[None, None].expand(batch, G.num_ws, -1).clone()
            n0 = G.random_noise(batch, [0] * batch)

            def w_steps(k: int) -> None:
                optimize_w(G, x, w_init=w0, noise=n0, vgg=vgg, steps=k, autocast_dtype=autocast)

            def n_steps(k: int) -> None:
                optimize_noise(G, x, w=w0, noise_init=n0, steps=k, autocast_dtype=autocast)

            # A call also prepares targets and renders once more for the final loss; the
            # difference between a k-step and a 0-step call is the cost of k steps alone.
            def per_step(run: Callable[[int], None]) -> float:
                t_k = _median_seconds(lambda: run(steps_per_timing), dev, warmup=warmup, repeats=repeats)
                t_0 = _median_seconds(lambda: run(0), dev, warmup=1, repeats=repeats)
                return max(t_k - t_0, 1e-9) / steps_per_timing

            t_w, t_n = per_step(w_steps), per_step(n_steps)
            row = EmbedBenchRow(
                resolution=resolution, channel_max=channel_max, batch=batch, dtype=dtype_name,
                device=str(dev), w_step_s=t_w, n_step_s=t_n, w_steps_per_s=1 / t_w, n_steps_per_s=1 / t_n,
                images_per_s_w=batch / t_w,
                images_per_hour_paper=3600 * batch / (PAPER_STEPS_W * t_w + PAPER_STEPS_N * t_n),
                repeats=repeats,
            )
            rows.append(row)
            if progress is not None:
                progress(f"res {resolution} batch {batch} {dtype_name}: {row.w_steps_per_s:.2f} W-steps/s, "
                         f"{row.images_per_hour_paper:.1f} images/h (paper schedule)")
    return rows


def cpu_has_native_bf16() -> bool | None:
    """Whether the CPU has bf16 arithmetic (AVX512-BF16 or AMX); None when it cannot be told.
    Without it, CPU bf16 autocast is emulated and much slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def environment() -> dict[str, Any]:
    """Where the numbers were taken."""
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
                           "cpu_native_bf16": cpu_has_native_bf16()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def rows_to_markdown(rows: Sequence[EmbedBenchRow]) -> str:
    """Markdown table with the speed-up of each row over batch 1 of the same dtype/resolution."""
    base = {(r.resolution, r.dtype): r for r in rows if r.batch == 1}
    lines = [
        "| res | ch max | dtype | batch | W step (s) | noise step (s) | W steps/s | images/s (W) | images/h, 5000+3000 | vs batch 1 |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b1 = base.get((r.resolution, r.dtype))
        ratio = f"{r.images_per_hour_paper / b1.images_per_hour_paper:.2f}x" if b1 else "-"
        lines.append(f"| {r.resolution} | {r.channel_max} | {r.dtype} | {r.batch} | {r.w_step_s:.4f} | "
                     f"{r.n_step_s:.4f} | {r.w_steps_per_s:.2f} | {r.images_per_s_w:.2f} | "
                     f"{r.images_per_hour_paper:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[EmbedBenchRow], json_path: str, md_path: str) -> None:
    """Write the rows and the environment as JSON, and the Markdown table."""
    with open(json_path, "w") as f:
        json.dump({"environment": environment(), "rows": [asdict(r) for r in rows]}, f, indent=2)
    with open(md_path, "w") as f:
        f.write(rows_to_markdown(rows))


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


def sample_photos(resolution: int, names: Sequence[str] = ("astronaut", "coffee", "chelsea")) -> tuple[list[str], torch.Tensor]:
    """scikit-image's bundled photos, centre-cropped square and resized: ``[B, 3, R, R]`` in [-1, 1]."""
    import numpy as np
    import skimage.data
    from PIL import Image

    arrays = []
    for name in names:
        im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)
        arrays.append(np.asarray(im, dtype=np.float32) / 127.5 - 1)
    return list(names), torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def bench_ladder(G: StyleGAN2, images: torch.Tensor, names: Sequence[str], *, steps_w: int, steps_n: int,
                 seed: int = 0, early_stop: Any = None) -> list[LadderRow]:
    """The PSNR ladder of Alg. 2 (W+ stage, then noise stage) on a batch of images."""
    from i2score.applications import reconstruct

    res = reconstruct(images.to(G.device), G, steps_w=steps_w, steps_n=steps_n, seed=seed, early_stop=early_stop)
    return [LadderRow(image=n, early_stop=early_stop is not None, psnr_w=m["psnr_w"], psnr_wn=m["psnr_wn"],
                      ssim=m["ssim"], lpips=m["lpips"], steps=m["steps"], seconds=m["seconds"])
            for n, m in zip(names, res.metrics)]


def ladder_to_markdown(rows: Sequence[LadderRow]) -> str:
    lines = ["| image | early stop | PSNR W+ (dB) | PSNR W+ then noise (dB) | gain (dB) | SSIM | LPIPS | steps | s/image |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lp = "-" if r.lpips is None else f"{r.lpips:.3f}"
        lines.append(f"| {r.image} | {'on' if r.early_stop else 'off'} | {r.psnr_w:.2f} | {r.psnr_wn:.2f} | "
                     f"{r.psnr_wn - r.psnr_w:.2f} | {r.ssim:.3f} | {lp} | {r.steps} | {r.seconds:.1f} |")
    return "\n".join(lines) + "\n"
