"""``i2s bench frontier``'s measurement code on a small generator (the numbers are the bench's;
here only that every point is measured and reported consistently)."""

from __future__ import annotations

import json

import pytest
import torch

from i2score.bench.frontier import bench_frontier, plot, targets, to_json, to_markdown
from i2score.encoders import EncoderConfig
from i2score.encoders.build import build_encoder


def test_every_method_gives_a_measured_point(small_G, vgg, target_images, tmp_path):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="e4e", backbone="small", n_styles=small_G.num_ws, w_dim=small_G.w_dim,
                                      input_size=64), small_G.mean_w(100, 0)).eval().requires_grad_(False)
    points = {"paper-loop": ["3+3"], "paper": ["1+1", "3+3"], "encoder": ["encoder"], "hybrid": ["2+2"],
              "hybrid+converge": ["2+2"]}
    rows = bench_frontier(small_G, {"portraits": target_images[:3], "photos": target_images[3:]}, vgg=vgg,
                          lpips=None, encoder=enc, points=points, batch=2, loop_images=1)
    assert [(r.method, r.schedule, r.images) for r in rows] == [
        (m, s, name) for m, specs in points.items() for s in specs for name in ("portraits", "photos")]
    loop = rows[0]
    assert loop.n == 1 and loop.steps_median == 6
    assert all(r.seconds_per_image > 0 and r.images_per_hour == pytest.approx(3600 / r.seconds_per_image)
               for r in rows)
    paper3 = next(r for r in rows if r.method == "paper" and r.schedule == "3+3" and r.images == "portraits")
    paper1 = next(r for r in rows if r.method == "paper" and r.schedule == "1+1" and r.images == "portraits")
    assert paper3.psnr_median > paper1.psnr_median  # more steps, closer to the targets
    t = targets(rows, "3+3")
    assert "encoder" in t and t["encoder"]["images_per_second"] > 0
    table = to_markdown(rows, "3+3")
    assert table.count("\n") == 2 + len(rows) and "| 1.000 |" in table  # the reference's own ratio
    report = to_json(rows, "3+3", {"device": "cpu"})
    assert json.loads(json.dumps(report))["points"][0]["method"] == "paper-loop"
    plot(rows, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
