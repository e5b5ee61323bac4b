"""Embedding and inpainting quality on the sample data (``i2s bench quality``).

Reconstruction: PSNR / SSIM / LPIPS after the W+ stage and after the noise stage, on the
held-out portraits and on the real photos. Inpainting: PSNR and LPIPS inside the hole against
OpenCV's Telea inpainting (``cv2.inpaint``) on the same holes; both results keep the known
pixels, so the comparison is about the fill only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from i2score.features import load_lpips, load_vgg16
from i2score.generator.network import StyleGAN2
from i2score.method.applications import inpaint, reconstruct
from i2score.method.metrics import psnr, ssim


def _load_rgb(path: Path) -> Tensor:
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1)


def _load_mask(path: Path) -> Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("L")) >= 128).float()[None]


def telea_inpaint(images: Tensor, holes: Tensor, radius: int = 3) -> Tensor:
    """OpenCV Telea inpainting of ``[B, 3, R, R]`` in [-1, 1] with holes ``[B, 1, R, R]`` (1 = missing).

    Runs on the 8-bit images, as OpenCV requires; returns ``[B, 3, R, R]`` in [-1, 1].
    """
    try:
        import cv2
    except ImportError as e:
        raise RuntimeError("the Telea baseline needs OpenCV: pip install opencv-python-headless") from e
    out = []
    for img, hole in zip(images, holes, strict=True):
        u8 = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        m = (hole[0] > 0.5).byte().cpu().numpy() * 255
        filled = cv2.inpaint(np.ascontiguousarray(u8), m, radius, cv2.INPAINT_TELEA)
        out.append(torch.from_numpy(filled).permute(2, 0, 1).float() / 127.5 - 1.0)
    return torch.stack(out)


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "mean": statistics.fmean(values), "min": min(values),
            "max": max(values)}


def quality_report(G: StyleGAN2, data: str | Path, *, n_images: int = 16, steps_w: int = 5000,
                   steps_n: int = 3000, inpaint_steps_w: int = 1000, inpaint_steps_n: int = 1000,
                   photos: bool = True, inpainting: bool = True, seed: int = 0,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the quality table on ``data`` (the layout of :mod:`i2score.demo.sample_data`).

    Returns ``{"reconstruct": {"heldout": ..., "photos": ...}, "inpaint": {"rect": ..., "free": ...},
    "settings": ...}``, each with per-image rows and median/mean/min/max summaries.
    """
    root = Path(data)
    vgg = load_vgg16(device=G.device)
    lp = load_lpips(device=G.device)
    ids = [f"heldout-{i:02d}" for i in range(n_images)]
    heldout = torch.stack([_load_rgb(root / "images" / f"{n}.png") for n in ids]).to(G.device)
    report: dict[str, Any] = {"settings": {
        "model": G.source, "sha256": G.weights_sha256, "n_images": n_images, "steps_w": steps_w,
        "steps_n": steps_n, "inpaint_steps_w": inpaint_steps_w, "inpaint_steps_n": inpaint_steps_n,
        "seed": seed, "threads": torch.get_num_threads(), "device": str(G.device)}}

    def recon(x: Tensor, names: list[str]) -> dict[str, Any]:
        t0 = time.perf_counter()
        r = reconstruct(x, G, steps_w=steps_w, steps_n=steps_n, seed=seed, vgg=vgg, lpips=False)
        with torch.no_grad():
            rows: list[dict[str, Any]] = []
            lp_w, lp_n = lp(r.images_w.clamp(-1, 1), x), lp(r.images.clamp(-1, 1), x)
            ss_w, ss_n = ssim(r.images_w, x), ssim(r.images, x)
            for b, name in enumerate(names):
                rows.append({"id": name, "psnr_w": r.metrics[b]["psnr_w"], "psnr_wn": r.metrics[b]["psnr_wn"],
                             "ssim_w": float(ss_w[b]), "ssim_wn": float(ss_n[b]),
                             "lpips_w": float(lp_w[b]), "lpips_wn": float(lp_n[b])})
        keys = ["psnr_w", "psnr_wn", "ssim_w", "ssim_wn", "lpips_w", "lpips_wn"]
        out: dict[str, Any] = {"rows": rows, "seconds": time.perf_counter() - t0,
               **{k: _summary([row[k] for row in rows]) for k in keys},
               "noise_gain_db": _summary([row["psnr_wn"] - row["psnr_w"] for row in rows])}
        log(f"reconstruct {len(names)} images: W+ {out['psnr_w']['median']:.2f} dB -> "
            f"W+ and noise {out['psnr_wn']['median']:.2f} dB (medians), {out['seconds']:.0f} s")
        return out

    report["reconstruct"] = {"heldout": recon(heldout, ids)}
    if photos:
        from i2score.demo.sample_data import PHOTOS

        px = torch.stack([_load_rgb(root / "photos" / f"{p}.png") for p in PHOTOS]).to(G.device)
        report["reconstruct"]["photos"] = recon(px, list(PHOTOS))

    report["inpaint"] = {}
    for kind in ("rect", "free") if inpainting else ():
        t0 = time.perf_counter()
        holes = torch.stack([_load_mask(root / "masks" / f"hole-{kind}-{i:02d}.png")
                             for i in range(n_images)]).to(G.device)
        res = inpaint(heldout, holes, G, k=1, seed=seed, steps_w=inpaint_steps_w, steps_n=inpaint_steps_n, vgg=vgg)
        telea = telea_inpaint(heldout.cpu(), holes.cpu()).to(G.device)
        ours = res.composites
        with torch.no_grad():
            lp_ours, lp_telea = lp(ours.clamp(-1, 1), heldout), lp(telea.clamp(-1, 1), heldout)
        ps_ours, ps_telea = psnr(ours, heldout, holes), psnr(telea, heldout, holes)
        rows = [{"id": ids[b], "hole_fraction": float(holes[b].mean()), "psnr_hole": float(ps_ours[b]),
                 "psnr_hole_telea": float(ps_telea[b]), "lpips": float(lp_ours[b]),
                 "lpips_telea": float(lp_telea[b]), "psnr_known": res.metrics[b]["psnr_known"]}
                for b in range(n_images)]
        keys = ["psnr_hole", "psnr_hole_telea", "lpips", "lpips_telea", "psnr_known", "hole_fraction"]
        out = {"rows": rows, "seconds": time.perf_counter() - t0,
               **{k: _summary([row[k] for row in rows]) for k in keys},
               "lpips_wins": sum(row["lpips"] < row["lpips_telea"] for row in rows)}
        report["inpaint"][kind] = out
        log(f"inpaint {kind}: hole PSNR {out['psnr_hole']['median']:.2f} vs Telea "
            f"{out['psnr_hole_telea']['median']:.2f} dB, LPIPS {out['lpips']['median']:.4f} vs "
            f"{out['lpips_telea']['median']:.4f} (medians), {out['seconds']:.0f} s")
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The report as the README's markdown tables (medians, with min for PSNR)."""
    lines = ["| images | PSNR W+ | PSNR W+ & noise | noise gain | SSIM W+ | SSIM W+ & noise | LPIPS W+ "
             "| LPIPS W+ & noise |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["reconstruct"].items():
        lines.append(f"| {name} ({len(r['rows'])}) | {r['psnr_w']['median']:.2f} (min {r['psnr_w']['min']:.2f}) | "
                     f"{r['psnr_wn']['median']:.2f} (min {r['psnr_wn']['min']:.2f}) | "
                     f"+{r['noise_gain_db']['median']:.2f} (min +{r['noise_gain_db']['min']:.2f}) | "
                     f"{r['ssim_w']['median']:.3f} | {r['ssim_wn']['median']:.3f} | "
                     f"{r['lpips_w']['median']:.4f} | {r['lpips_wn']['median']:.4f} |")
    if not report["inpaint"]:
        return "\n".join(lines)
    lines += ["", "| holes | hole PSNR ours | hole PSNR Telea | LPIPS ours | LPIPS Telea | ours better (LPIPS) "
                  "| PSNR outside enlarged hole |",
              "|---|---|---|---|---|---|---|"]
    for kind, r in report["inpaint"].items():
        lines.append(f"| {kind} ({len(r['rows'])}, {100 * r['hole_fraction']['median']:.0f} % of the image) | "
                     f"{r['psnr_hole']['median']:.2f} | {r['psnr_hole_telea']['median']:.2f} | "
                     f"{r['lpips']['median']:.4f} | {r['lpips_telea']['median']:.4f} | "
                     f"{r['lpips_wins']}/{len(r['rows'])} | {r['psnr_known']['median']:.2f} |")
    return "\n".join(lines)
