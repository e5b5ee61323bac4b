"""`i2s bench` commands run end to end and report measured, positive numbers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from i2score.cli.app import app


def test_bench_embed_writes_json_and_markdown(tmp_path):
    result = CliRunner().invoke(app, ["bench", "embed", "--resolution", "8", "--channel-max", "8",
                                      "--batch-sizes", "1,2", "--dtype", "fp32,bf16", "--repeats", "1",
                                      "--steps-per-timing", "1", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench-embed-8-cpu.json").read_text())
    rows = data["rows"]
    assert [(r["batch"], r["dtype"]) for r in rows] == [(1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")]
    assert all(r["w_steps_per_s"] > 0 and r["images_per_hour_paper"] > 0 for r in rows)
    assert "| 8 |" in (tmp_path / "bench-embed-8-cpu.md").read_text()


def test_bench_embed_rejects_unknown_dtype(tmp_path):
    result = CliRunner().invoke(app, ["bench", "embed", "--dtype", "fp8", "--out-dir", str(tmp_path)])
    assert result.exit_code != 0 and "fp8" in result.output


def test_bench_ladder_on_a_random_generator():
    result = CliRunner().invoke(app, ["bench", "ladder", "--model", "random:16:16", "--steps-w", "3",
                                      "--steps-n", "3", "--no-early-stop"])
    assert result.exit_code == 0, result.output
    assert "| astronaut | off |" in result.output and "| chelsea | off |" in result.output


# -- reference loop, ratios, engine options ----------------------------------------------------

def test_images_per_hour_and_ratios_come_from_the_measured_times():
    from i2score.bench.embed import add_reference_ratios, images_per_hour, make_row, rows_to_markdown

    common: dict[str, Any] = {"resolution": 64, "channel_max": 128, "dtype": "fp32", "device": "cpu", "repeats": 3}
    ref = make_row(batch=1, w_step_s=0.1, n_step_s=0.05, loop="reference", kernels="fast", **common)
    # 3600 / (5000·0.1 + 3000·0.05) = 3600 / 650
    assert ref.images_per_hour_paper == pytest.approx(3600 / 650)
    assert images_per_hour(8, 0.4, 0.1) == pytest.approx(3600 * 8 / (5000 * 0.4 + 3000 * 0.1))
    # Batch 8 at 0.4 s + 0.1 s per step: 8·3600/2300 images/h, 650·8/2300 = 2.26x the reference.
    fast = make_row(batch=8, w_step_s=0.4, n_step_s=0.1, channels_last=True, **common)
    slow = make_row(batch=16, w_step_s=3.2, n_step_s=1.2, **common)  # 16·3600/19600: 0.53x
    out = add_reference_ratios([fast, slow], [ref])
    assert [r.speedup_vs_reference for r in out] == pytest.approx([1.0, 650 * 8 / 2300, 650 * 16 / 19600])
    md = rows_to_markdown([fast, slow], [ref])
    lines = md.strip().splitlines()
    assert len(lines) == 5 and "vs reference" in lines[0] and "images/h (5000 W + 3000 noise)" in lines[0]
    assert lines[2].startswith("| reference | 64 | 128 | 1 | fp32 | fast | no | no | 0.1000 | 0.0500 |")
    assert lines[3].startswith("| batched | 64 | 128 | 8 | fp32 | invariant | yes | no | 0.4000 | 0.1000 |")
    assert lines[3].endswith(f"| {8 * 3600 / 2300:.1f} | 2.26x |") and lines[4].endswith("| 0.53x |")
    # Without a reference the ratio column says so instead of inventing a baseline.
    assert rows_to_markdown([fast]).strip().endswith("| - |")


def test_reference_loop_is_the_same_objective_as_the_engine(small_G, vgg, target_images):
    """Its first logged loss (before any update) equals the engine's loss at the start point."""
    from i2score.bench.embed import reference_stage
    from i2score.method.blocks import optimize_noise, optimize_w
    from i2score.method.objective import embedding_target

    x = target_images[:1]
    w0 = small_G.mean_w(1000, 0)[None, None].expand(1, small_G.num_ws, -1).clone()
    n0 = small_G.random_noise(1, [0])
    ref_w, _ = reference_stage(small_G, vgg, x, w_init=w0, noise=n0, stage="w", steps=1)
    _, res_w = optimize_w(small_G, [embedding_target(x)], w_ini=w0, n_ini=n0, vgg=vgg, steps=0)
    assert ref_w == pytest.approx(float(res_w.loss[0]), rel=1e-4)
    ref_n, _ = reference_stage(small_G, vgg, x, w_init=w0, noise=n0, stage="noise", steps=1)
    _, res_n = optimize_noise(small_G, M=None, w=w0, n_ini=n0, x=x, steps=0)
    assert ref_n == pytest.approx(float(res_n.loss[0]), rel=1e-4)
    later, _ = reference_stage(small_G, vgg, x, w_init=w0, noise=n0, stage="w", steps=6)
    assert later < ref_w  # it optimises
    with pytest.raises(ValueError):
        reference_stage(small_G, vgg, target_images[:2], w_init=w0, noise=n0, stage="w", steps=1)


def test_reference_and_batched_loops_give_the_same_kind_of_rows(vgg):
    from dataclasses import fields

    from i2score.bench.embed import EmbedBenchRow, bench_embed, bench_reference
    from i2score.generator.network import StyleGAN2

    G = StyleGAN2(8, channel_max=8, n_mapping=1, seed=0)
    timing: dict[str, Any] = {"repeats": 1, "warmup": 0, "steps_per_timing": 1}
    ref = bench_reference(G, vgg, model="tiny", **timing)
    rows = bench_embed(batch_sizes=[2, "auto"], vgg=vgg, G=G, model="tiny", kernels=("invariant", "fast"),
                       channels_last=(False, True), max_batch=3, **timing)
    assert isinstance(ref, EmbedBenchRow) and all(isinstance(r, EmbedBenchRow) for r in rows)
    assert (ref.loop, ref.batch, ref.dtype, ref.kernels) == ("reference", 1, "fp32", "fast")
    # "auto" on CPU is max_batch (no guessing); every combination of the options is measured.
    assert [(r.kernels, r.channels_last, r.batch) for r in rows] == [
        (k, cl, b) for k in ("invariant", "fast") for cl in (False, True) for b in (2, 3)]
    for r in [ref, *rows]:
        assert {f.name for f in fields(r)} == {f.name for f in fields(ref)}
        assert r.w_step_s > 0 and r.n_step_s > 0 and r.images_per_hour_paper > 0 and r.model == "tiny"
        assert r.images_per_hour_paper == pytest.approx(3600 * r.batch / (5000 * r.w_step_s + 3000 * r.n_step_s))


def test_bench_embed_cli_with_reference_auto_batch_and_engine_options(tmp_path):
    result = CliRunner().invoke(app, ["bench", "embed", "--resolution", "8", "--channel-max", "8",
                                      "--batch-sizes", "2,auto", "--max-batch", "3", "--kernels", "invariant,fast",
                                      "--channels-last", "--repeats", "1", "--steps-per-timing", "1",
                                      "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench-embed-8-cpu.json").read_text())
    env = data["environment"]
    assert env["torch"] and env["device_name"] and env["cpu_threads"] >= 1
    assert [r["loop"] for r in data["reference"]] == ["reference"] and data["reference"][0]["speedup_vs_reference"] == 1
    assert len(data["rows"]) == 8 and {r["batch"] for r in data["rows"]} == {2, 3}
    assert all(r["speedup_vs_reference"] > 0 for r in data["rows"])
    md = (tmp_path / "bench-embed-8-cpu.md").read_text()
    assert md.count("| reference |") == 1 and md.count("| batched |") == 8


def test_bench_embed_cli_rejects_bad_batch_and_kernel_names(tmp_path):
    bad_batch = CliRunner().invoke(app, ["bench", "embed", "--batch-sizes", "1,big", "--out-dir", str(tmp_path)])
    assert bad_batch.exit_code != 0 and "auto" in bad_batch.output
    bad_kernels = CliRunner().invoke(app, ["bench", "embed", "--kernels", "turbo", "--out-dir", str(tmp_path)])
    assert bad_kernels.exit_code != 0 and "turbo" in bad_kernels.output
