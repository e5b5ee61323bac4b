"""``i2s bench frontier``: embedding quality against time, for every way i2score can embed.

Each *method* is a way to embed (where the W+ search starts, whether images stop when they
converge, how the loop is run); each of its *points* is a step budget. Every point is one cold run
of :func:`~i2score.method.applications.reconstruct` over the image sets, in batches, timed by the
wall clock, and measured against the targets (PSNR, LPIPS, SSIM: median and worst over the
images). The methods:

* ``paper-loop``: Algorithm 2 from the mean latent, one image at a time with the ordinary kernels
  and a loss read every step, as published reimplementations run it (on ``loop_images`` images:
  it is the slow baseline of the time axis);
* ``paper``: the same algorithm batched by the engine;
* ``encoder``: the encoder's code alone (no optimisation): timed as encode + render;
* ``hybrid``: an encoder start, then both stages, every image running all steps;
* ``hybrid+converge``: the same, each image leaving its batch when its loss stops improving
  (the ``fast`` schedule is one of its points).

All points run in one process, one after the other, so their times are comparable on a shared
machine; the table reports ratios to the reference point (``paper`` at ``reference``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from i2score.bench.embed import reference_stage
from i2score.encoders import Encoder
from i2score.features import LPIPS, VGG16Features
from i2score.generator.network import StyleGAN2
from i2score.kernels import batch_invariant
from i2score.method.applications import encode_images, reconstruct
from i2score.method.blocks import EarlyStop
from i2score.method.metrics import psnr, ssim
from i2score.runs.config import SCHEDULES, Schedule

METHODS = ("paper-loop", "paper", "encoder", "hybrid", "hybrid+converge")


@dataclass
class FrontierPoint:
    """One (method, step budget, image set) measurement.

    Attributes:
        method: see :data:`METHODS`.
        schedule: the steps as ``W+N`` (or ``fast``).
        images: ``portraits`` or ``photos``; ``n``: how many.
        psnr_*, lpips_*, ssim_*: over the images (dB; LPIPS lower is better).
        steps_median: optimisation steps an image ran (converge-stopping makes it fewer).
        seconds_per_image: wall time of the point's runs / ``n``; ``images_per_hour`` its inverse.
    """

    method: str
    schedule: str
    images: str
    n: int
    psnr_median: float
    psnr_worst: float
    lpips_median: float | None
    lpips_worst: float | None
    ssim_median: float
    ssim_worst: float
    steps_median: float
    seconds_per_image: float
    images_per_hour: float


def _summary(method: str, schedule: str, images: str, metrics: Sequence[dict[str, Any]],
             seconds: float) -> FrontierPoint:
    p = [m["psnr"] for m in metrics]
    lp = [m["lpips"] for m in metrics if m["lpips"] is not None]
    ss = [m["ssim"] for m in metrics]
    per_image = seconds / len(metrics)
    return FrontierPoint(method, schedule, images, len(metrics), statistics.median(p), min(p),
                         statistics.median(lp) if lp else None, max(lp) if lp else None, statistics.median(ss),
                         min(ss), statistics.median([m["steps"] for m in metrics]), per_image, 3600 / per_image)


def _quality(G: StyleGAN2, lpips: LPIPS | None, w: Tensor, noise: Sequence[Tensor], x: Tensor) -> list[dict[str, Any]]:
    """PSNR / SSIM / LPIPS of ``G(w, noise)`` against ``x`` (``[B, 3, R, R]`` in [-1, 1])."""
    with torch.no_grad(), batch_invariant(G.device):
        out = G.synthesize(w, noise)
        ps, ss = psnr(out, x).cpu(), ssim(out, x).cpu()
        lp = lpips(out.clamp(-1, 1), x).cpu() if lpips is not None else None
    return [{"psnr": float(ps[b]), "ssim": float(ss[b]), "lpips": None if lp is None else float(lp[b]), "steps": 0}
            for b in range(x.shape[0])]


def _batches(x: Tensor, size: int) -> list[Tensor]:
    return [x[i:i + size] for i in range(0, x.shape[0], size)]


def run_point(method: str, schedule: Schedule, x: Tensor, G: StyleGAN2, *, vgg: VGG16Features, lpips: LPIPS | None,
              encoder: Encoder | None, batch: int, seed: int = 0) -> tuple[list[dict[str, Any]], float]:
    """Embed ``x`` (``[N, 3, R, R]`` in [-1, 1]) with ``method`` at ``schedule``'s steps; returns
    per-image metrics (``psnr``, ``ssim``, ``lpips``, ``steps``) and the wall time of the
    embedding (metrics excluded where the method allows: the loop and the encoder)."""
    metrics: list[dict[str, Any]] = []
    seconds = 0.0
    if method == "paper-loop":
        w0 = G.mean_w(10000, seed)[None, None].expand(1, G.num_ws, -1).clone()
        for b in range(x.shape[0]):
            xi, n0 = x[b:b + 1], G.random_noise(1, [seed])
            t0 = time.perf_counter()
            _, (w,) = reference_stage(G, vgg, xi, w_init=w0, noise=n0, stage="w", steps=schedule.steps_w)
            _, maps = reference_stage(G, vgg, xi, w_init=w, noise=n0, stage="noise", steps=schedule.steps_n)
            seconds += time.perf_counter() - t0
            metrics += [{**m, "steps": schedule.steps_w + schedule.steps_n} for m in _quality(G, lpips, w, maps, xi)]
        return metrics, seconds
    if method == "encoder":
        if encoder is None:
            raise ValueError("the encoder method needs an encoder")
        for xb in _batches(x, batch):
            noise = G.random_noise(xb.shape[0], [seed] * xb.shape[0])
            t0 = time.perf_counter()
            w = encode_images(encoder, xb, G, seed=seed)
            with torch.no_grad(), batch_invariant(G.device):
                G.synthesize(w, noise)
            seconds += time.perf_counter() - t0
            metrics += _quality(G, lpips, w, noise, xb)
        return metrics, seconds
    if method not in ("paper", "hybrid", "hybrid+converge"):
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    init = "mean" if method == "paper" else "encoder"
    early_stop = (schedule.early_stop() or EarlyStop()) if method == "hybrid+converge" else None
    for xb in _batches(x, batch):
        t0 = time.perf_counter()
        res = reconstruct(xb, G, steps_w=schedule.steps_w, steps_n=schedule.steps_n, seed=seed, init=init,
                          encoder=encoder, lr_w=schedule.lr_w, lr_n=schedule.lr_n, vgg=vgg, lpips=lpips or False,
                          early_stop=early_stop)
        seconds += time.perf_counter() - t0
        metrics += [{"psnr": m["psnr_wn"], "ssim": m["ssim"], "lpips": m["lpips"], "steps": m["steps"]}
                    for m in res.metrics]
    return metrics, seconds


def default_points(reference: str) -> dict[str, list[str]]:
    """The step budgets of each method: the reference (``W+N``) and cheaper points."""
    ref = Schedule.parse(reference)
    short = f"{max(1, ref.steps_w // 10)}+{max(1, ref.steps_n // 10)}"
    return {"paper-loop": [reference], "paper": [short, reference], "encoder": ["encoder"],
            "hybrid": ["fast"], "hybrid+converge": ["25+100", "fast", "100+1000"]}


def _schedule_for(method: str, spec: str) -> Schedule:
    sched = Schedule.parse(spec)
    if method == "hybrid" and spec in SCHEDULES:  # the same steps and rates, no stopping
        sched = Schedule(spec, sched.steps_w, sched.steps_n, 0, 0, 0, 0, lr_w=sched.lr_w, lr_n=sched.lr_n)
    if method == "hybrid+converge" and spec not in SCHEDULES:  # the fast schedule's rates and stopping rule
        fast = SCHEDULES["fast"]
        sched = Schedule(spec, sched.steps_w, sched.steps_n, 0, 0, 0, 0, lr_w=fast.lr_w, lr_n=fast.lr_n,
                         converge=True, patience=fast.patience, min_delta_db=fast.min_delta_db,
                         check_every=fast.check_every)
    return sched


def bench_frontier(G: StyleGAN2, image_sets: dict[str, Tensor], *, vgg: VGG16Features, lpips: LPIPS | None,
                   encoder: Encoder | None, points: dict[str, list[str]], batch: int = 8, loop_images: int = 2,
                   seed: int = 0, log: Any = None) -> list[FrontierPoint]:
    """Every (method, point, image set), measured in this process one after the other.

    Args:
        image_sets: name -> ``[N, 3, R, R]`` in [-1, 1] on G's device.
        points: method -> step budgets (:meth:`Schedule.parse` specs; see :func:`default_points`).
        loop_images: images of each set the per-image loop embeds (it is the slowest method).
    """
    out: list[FrontierPoint] = []
    for method, specs in points.items():
        for spec in specs:
            sched = _schedule_for(method, spec)
            for name, x in image_sets.items():
                xs = x[:loop_images] if method == "paper-loop" else x
                metrics, seconds = run_point(method, sched, xs, G, vgg=vgg, lpips=lpips, encoder=encoder,
                                             batch=batch, seed=seed)
                point = _summary(method, spec, name, metrics, seconds)
                out.append(point)
                if log is not None:
                    log(f"{method:16s} {spec:10s} {name:9s} PSNR {point.psnr_median:6.2f} dB (worst "
                        f"{point.psnr_worst:6.2f})  {point.seconds_per_image:8.3f} s/image")
    return out


def targets(points: Sequence[FrontierPoint], reference: str, images: str = "portraits") -> dict[str, Any]:
    """The issue's targets, computed from the points: ``fast`` against the reference (PSNR gap,
    LPIPS, time ratio) and the encoder alone (median PSNR, images/s)."""
    def find(method: str, spec: str) -> FrontierPoint | None:
        return next((p for p in points if p.method == method and p.schedule == spec and p.images == images), None)

    ref, fast, enc = find("paper", reference), find("hybrid+converge", "fast"), find("encoder", "encoder")
    out: dict[str, Any] = {"images": images, "reference": reference}
    if ref and fast:
        out["fast"] = {"psnr_gap_db": fast.psnr_median - ref.psnr_median, "lpips": fast.lpips_median,
                       "lpips_reference": ref.lpips_median,
                       "time_ratio": fast.seconds_per_image / ref.seconds_per_image,
                       "met": bool(fast.psnr_median >= ref.psnr_median - 0.5
                                   and (fast.lpips_median or 0) <= (ref.lpips_median or 0) + 1e-9
                                   and fast.seconds_per_image <= ref.seconds_per_image / 10)}
    if enc:
        out["encoder"] = {"psnr_median": enc.psnr_median, "images_per_second": 1 / enc.seconds_per_image,
                          "met": bool(enc.psnr_median >= 24 and 1 / enc.seconds_per_image >= 50)}
    return out


def to_markdown(points: Sequence[FrontierPoint], reference: str) -> str:
    """The frontier table; ``time`` is each point's seconds per image over the reference's."""
    ref = {p.images: p.seconds_per_image for p in points if p.method == "paper" and p.schedule == reference}
    lines = ["| images | method | steps | n | PSNR median | PSNR worst | LPIPS median | LPIPS worst | SSIM median "
             "| steps/image | s/image | images/hour | time vs paper " + reference + " |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lp = "-" if p.lpips_median is None else f"{p.lpips_median:.4f}"
        lw = "-" if p.lpips_worst is None else f"{p.lpips_worst:.4f}"
        ratio = f"{p.seconds_per_image / ref[p.images]:.3f}" if p.images in ref else "-"
        lines.append(f"| {p.images} | {p.method} | {p.schedule} | {p.n} | {p.psnr_median:.2f} | {p.psnr_worst:.2f} "
                     f"| {lp} | {lw} | {p.ssim_median:.4f} | {p.steps_median:.0f} | {p.seconds_per_image:.3f} "
                     f"| {p.images_per_hour:,.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def plot(points: Sequence[FrontierPoint], path: str) -> None:
    """PSNR (median) against seconds per image (log), one curve per method, one panel per image set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(p.images for p in points))
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        for method in METHODS:
            ps = sorted((p for p in points if p.images == name and p.method == method),
                        key=lambda p: p.seconds_per_image)
            if not ps:
                continue
            ax.plot([p.seconds_per_image for p in ps], [p.psnr_median for p in ps], marker="o", label=method)
            for p in ps:
                ax.annotate(p.schedule, (p.seconds_per_image, p.psnr_median), textcoords="offset points",
                            xytext=(4, -10), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image (log)")
        ax.set_ylabel("median PSNR (dB)")
        ax.set_title(f"{name} ({ps[0].n if ps else '?'} images)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(points: Sequence[FrontierPoint], reference: str, env: dict[str, Any]) -> dict[str, Any]:
    return {"reference": reference, "environment": env, "points": [asdict(p) for p in points],
            "targets": {name: targets(points, reference, name) for name in dict.fromkeys(p.images for p in points)}}
