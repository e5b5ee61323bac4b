"""Perceptual path length: seeded, and larger for a generator whose W moves the image faster."""

from __future__ import annotations

import copy

import torch

from i2score.bench.generator import perceptual_path_length
from i2score.features import load_lpips


def test_path_length_is_seeded_and_grows_with_the_speed_of_w(small_G, vgg) -> None:
    lpips = load_lpips()
    a = perceptual_path_length(small_G, lpips, n=12, batch=5, seed=1)
    assert a == perceptual_path_length(small_G, lpips, n=12, batch=6, seed=1)  # batch-independent
    assert a["n"] == 12 and a["ppl"] > 0
    # Doubling the last mapping layer's output (bias included) doubles every step in W (the
    # images change too, so the figure grows by less than the 4x of a purely quadratic LPIPS).
    fast = copy.deepcopy(small_G)
    with torch.no_grad():
        fast.mapping.fcs[-1].weight.mul_(2)
        fast.mapping.fcs[-1].bias.mul_(2)
    b = perceptual_path_length(fast, lpips, n=12, batch=5, seed=1)
    assert b["ppl"] > 1.4 * a["ppl"], (a, b)


def test_bench_generator_cli_compares_models(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from i2score.cli.app import app

    out = tmp_path / "gen"
    result = CliRunner().invoke(app, ["bench", "generator", "--model", "demo-faces-64", "--n-samples", "8",
                                      "--n-reference", "8", "--n-ppl", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["kid"] > 0 and row["ppl"] > 0 and row["n_samples"] == 8
    assert "| demo-faces-64 |" in out.with_suffix(".md").read_text()
