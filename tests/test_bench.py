"""`i2s bench` commands run end to end and report measured, positive numbers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from i2score.cli import app


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
