"""Every edit on the sample data, with a contact sheet and measured numbers per application
(``i2s bench edits``).

The held-out portraits are embedded once (the latents every edit starts from, as the cache
would provide them); then each application runs on the sample data's masks and partners and
writes ``<out>/<application>.png`` plus one JSON report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from i2score.bench.quality import _load_mask, _load_rgb, _summary, telea_inpaint
from i2score.data.latents import Latents
from i2score.features import load_lpips, load_vgg16
from i2score.generator.network import StyleGAN2
from i2score.method.applications import (
    attribute_transfer,
    crossover,
    expression_transfer,
    inpaint,
    local_style_transfer,
    morph,
    reconstruct,
    scribble_edit,
    style_mix,
)
from i2score.method.masks import dilate
from i2score.runs.contact_sheet import Cell, contact_sheet


def seam_gradient_energy(images: Tensor, mask: Tensor, width: int = 2) -> Tensor:
    """Mean squared finite-difference gradient in a band of ``width`` px around the mask edge.

    ``images [B, 3, R, R]``, ``mask [B, 1, R, R]`` binary. Returns ``[B]``. A visible seam
    (a step between the two sources) has high gradient energy there.
    """
    band = (dilate(mask, width) - (1 - dilate(1 - mask, width))).clamp(0, 1)
    gx = torch.zeros_like(images)
    gy = torch.zeros_like(images)
    gx[..., :, 1:] = images[..., :, 1:] - images[..., :, :-1]
    gy[..., 1:, :] = images[..., 1:, :] - images[..., :-1, :]
    energy = (gx.square() + gy.square()).sum(dim=1, keepdim=True)
    return (energy * band).flatten(1).sum(1) / band.flatten(1).sum(1).clamp_min(1)


def edits_report(G: StyleGAN2, data: str | Path, out: str | Path, *, embed_steps_w: int = 1000,
                 embed_steps_n: int = 1000, steps_w: int = 1000, steps_n: int = 1000,
                 inpaint_steps_w: int = 1000, inpaint_steps_n: int = 1000, seed: int = 0,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every application on the sample data in ``data``; sheets and ``edits.json`` go to ``out``."""
    root, out_dir = Path(data), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    vgg, lp = load_vgg16(device=G.device), load_lpips(device=G.device)
    # 16 held-out portraits, then the expression pair (one person, neutral and smiling) at 16, 17.
    names = [f"heldout-{i:02d}" for i in range(16)] + ["expression-neutral", "expression-smile"]
    x = torch.stack([_load_rgb(root / "images" / f"{n}.png") for n in names]).to(G.device)
    mask = lambda name: _load_mask(root / "masks" / f"{name}.png").to(G.device)[None]  # noqa: E731
    report: dict[str, Any] = {"settings": {"model": G.source, "sha256": G.weights_sha256, "seed": seed,
                                           "embed_steps": [embed_steps_w, embed_steps_n],
                                           "edit_steps": [steps_w, steps_n]}}
    t0 = time.perf_counter()
    rec = reconstruct(x, G, steps_w=embed_steps_w, steps_n=embed_steps_n, seed=seed, vgg=vgg, lpips=False)
    lat: Latents = rec.latents
    renders = rec.images
    report["embed"] = {"seconds": time.perf_counter() - t0,
                       "psnr_wn": _summary([m["psnr_wn"] for m in rec.metrics])}
    log(f"embedded {len(names)} images in {report['embed']['seconds']:.0f} s "
        f"(median PSNR {report['embed']['psnr_wn']['median']:.2f} dB)")

    def timed(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t = time.perf_counter()
        result = fn()
        result["seconds"] = time.perf_counter() - t
        report[name] = result
        log(f"{name}: {', '.join(f'{k}={v:.3f}' for k, v in result.items() if isinstance(v, float))}")

    # -- crossover: half of 0 onto 1, the face of 3 onto 2 -----------------------------------
    def run_crossover() -> dict[str, Any]:
        pairs = [(0, 1, mask("half-left")), (3, 2, mask("region-face-03"))]
        img = torch.stack([x[a] for a, _, _ in pairs])
        base = torch.stack([x[b] for _, b, _ in pairs])
        m = torch.cat([p[2] for p in pairs])
        res = crossover(img, base, m, lat[[b for _, b, _ in pairs]], G, steps_w=steps_w, steps_n=steps_n, vgg=vgg)
        naive = m * img + (1 - m) * base
        seam_ours, seam_naive = seam_gradient_energy(res.images, m), seam_gradient_energy(naive, m)
        rows = [[Cell(img[i], "image"), Cell(base[i], "base"), Cell(m[i], "mask"), Cell(naive[i], "copy-paste"),
                 Cell(res.images[i], f"crossover\n{res.metrics[i]['psnr_image_region']:.1f}/"
                                     f"{res.metrics[i]['psnr_base_region']:.1f} dB")] for i in range(len(pairs))]
        contact_sheet(rows, scale=3, title="crossover (Alg. 3)").save(out_dir / "crossover.png")
        return {"rows": [{**res.metrics[i], "seam_energy": float(seam_ours[i]),
                          "seam_energy_copy_paste": float(seam_naive[i])} for i in range(len(pairs))],
                "psnr_image_region_min": min(r["psnr_image_region"] for r in res.metrics),
                "psnr_base_region_min": min(r["psnr_base_region"] for r in res.metrics),
                "seam_ratio_max": float((seam_ours / seam_naive.clamp_min(1e-12)).max())}

    # -- inpainting: 3 solutions for two free-form holes, against Telea ----------------------
    def run_inpaint() -> dict[str, Any]:
        holes = torch.cat([mask("hole-free-00"), mask("hole-free-01")])
        res = inpaint(x[:2], holes, G, k=3, seed=seed, steps_w=inpaint_steps_w, steps_n=inpaint_steps_n, vgg=vgg)
        telea = telea_inpaint(x[:2].cpu(), holes.cpu()).to(G.device)
        rows = []
        for i in range(2):
            sols = res.composites[3 * i:3 * i + 3]
            lps = lp(sols.clamp(-1, 1), x[i:i + 1].expand(3, -1, -1, -1))
            lpt = float(lp(telea[i:i + 1].clamp(-1, 1), x[i:i + 1])[0])
            rows.append([Cell(x[i] * (1 - holes[i]) + holes[i] * 0.5, "input"), Cell(holes[i], "hole")]
                        + [Cell(sols[j], f"solution {j}\nLPIPS {float(lps[j]):.3f}") for j in range(3)]
                        + [Cell(telea[i], f"Telea\nLPIPS {lpt:.3f}"), Cell(x[i], "original")])
        contact_sheet(rows, scale=3, title="inpainting (Alg. 4), k = 3").save(out_dir / "inpaint.png")
        hole = holes.repeat_interleave(3, dim=0)
        spread = [float((res.images[3 * i] - res.images[3 * i + 1]).abs().mul(hole[3 * i]).sum()
                        / hole[3 * i].sum().clamp_min(1) / 3) for i in range(2)]
        return {"psnr_known_min": min(m["psnr_known"] for m in res.metrics),
                "solution_spread_in_hole_min": min(spread)}

    # -- scribbles ---------------------------------------------------------------------------
    def run_scribble() -> dict[str, Any]:
        idx = [0, 1, 2, 3]
        scr = torch.stack([_load_rgb(root / "scribbles" / f"heldout-{i:02d}.png") for i in idx]).to(G.device)
        m = torch.cat([mask(f"scribble-{i:02d}") for i in idx])
        res = scribble_edit(lat[idx], scr, m, G, steps_w=steps_w, steps_n=steps_n, vgg=vgg)
        rows = [[Cell(renders[i], "embedded"), Cell(scr[k], "scribbled"), Cell(m[k], "mask"),
                 Cell(res.images[k], f"edit\nout {res.metrics[k]['psnr_outside']:.1f} dB")] for k, i in enumerate(idx)]
        contact_sheet(rows, scale=3, title="scribble edit (Alg. 5)").save(out_dir / "scribble.png")
        return {"psnr_outside_min": min(r["psnr_outside"] for r in res.metrics),
                "change_inside_min": min(r["change_inside"] for r in res.metrics)}

    # -- local style transfer: backgrounds ---------------------------------------------------
    def run_style() -> dict[str, Any]:
        pairs = [(4, 5), (6, 7)]
        c = [a for a, _ in pairs]
        m = torch.cat([mask(f"region-background-{a:02d}") for a in c])
        sty = torch.stack([x[b] for _, b in pairs])
        sm = torch.cat([mask(f"region-background-{b:02d}") for _, b in pairs])
        res = local_style_transfer(lat[c], x[c], sty, m, G, style_mask=sm, steps_w=steps_w, steps_n=steps_n,
                                   vgg=vgg)
        rows = [[Cell(x[a], "content"), Cell(sty[k], "style"), Cell(m[k], "region"),
                 Cell(res.images[k], f"result\nout {res.metrics[k]['psnr_outside']:.1f} dB")]
                for k, (a, _) in enumerate(pairs)]
        contact_sheet(rows, scale=3, title="local style transfer (Alg. 6)").save(out_dir / "style_transfer.png")
        return {"psnr_outside_min": min(r["psnr_outside"] for r in res.metrics),
                "change_inside_min": min(r["change_inside"] for r in res.metrics)}

    # -- attribute transfer: eyes and mouths, three modes ------------------------------------
    def run_attribute() -> dict[str, Any]:
        pairs = [(6, 7, "region-eyes-06"), (8, 9, "region-mouth-08")]
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        m = torch.cat([mask(p[2]) for p in pairs])
        channels = torch.arange(G.cfg.channels(G.cfg.conv_resolution(4))) % 2 == 0
        outs = {mode: attribute_transfer(lat[a], lat[b], m, G, mode=mode, channels=channels).images
                for mode in ("copy", "average", "channels")}
        rows = [[Cell(renders[a[k]], "image"), Cell(renders[b[k]], "donor"), Cell(m[k], "mask")]
                + [Cell(outs[mode][k], mode) for mode in outs] for k in range(len(pairs))]
        contact_sheet(rows, scale=3, title="attribute transfer (Sec. 7.6), layer conv4").save(
            out_dir / "attribute_transfer.png")
        far = 1 - dilate(m, 8)
        leak = max(float((outs[mode] - renders[a]).abs().mul(far).max()) for mode in outs)
        return {"max_change_far_outside": leak}

    # -- global edits ------------------------------------------------------------------------
    def run_global() -> dict[str, Any]:
        ts = [0.0, 0.25, 0.5, 0.75, 1.0]
        # A strip from one reconstruction to the other: interpolated maps keep its ends exact
        # (checked below); the default resampled maps are the midpoints' choice, not the ends'.
        m = [morph(lat[10], lat[11], t, G, noise_policy="interpolate").images[0] for t in ts]
        ks = [0, 2, 4, 6, 8, G.num_ws]
        s = [style_mix(lat[12], lat[13], k, G).images[0] for k in ks]
        e = expression_transfer(lat[[0, 1, 2, 3]], lat[16], lat[17], 1.0, G).images
        rows = [[Cell(img, f"t={t}") for img, t in zip(m, ts, strict=True)],
                [Cell(img, f"k={k}") for img, k in zip(s, ks, strict=True)],
                [Cell(renders[16], "a (neutral)"), Cell(renders[17], "b (smile)")]
                + [Cell(renders[i], f"{i}") for i in range(2)]
                + [Cell(e[i], f"{i} + (b - a)") for i in range(4)]]
        contact_sheet(rows, scale=3, title="morph (10 -> 11), style mixing (12 content, 13 style), "
                                            "expression transfer (a, b: one person)").save(out_dir / "global_edits.png")
        return {"morph_endpoint_error": float(max((m[0] - renders[10]).abs().max(), (m[-1] - renders[11]).abs().max()))}

    timed("crossover", run_crossover)
    timed("inpaint", run_inpaint)
    timed("scribble", run_scribble)
    timed("style_transfer", run_style)
    timed("attribute_transfer", run_attribute)
    timed("global_edits", run_global)
    return report
