"""`i2s bench editability` end to end on the bundled demo model, tiny (2 pairs, schedule 2+2):
every output file, the JSON's fields, and computed numbers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from i2score.bench.editability import EDITS, METHODS
from i2score.cli.app import app
from i2score.runs.ops import AUGMENT_OPS


@pytest.mark.slow
def test_bench_editability_cli_tiny(tmp_path):
    out = tmp_path / "eb"
    result = CliRunner().invoke(app, ["bench", "editability", "--n-pairs", "2", "--schedule", "2+2/1+1",
                                      "--settings", "mean-w-only", "--define",
                                      'k2={"embed": {"init": "mean", "steps_n": 0}, "ops": {"style_mix": {"k": 2}}}',
                                      "--n-reference", "4", "--n-samples", "2",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    for suffix in (".json", ".md", "-curve.png", "-mean-w-only.png"):
        assert (tmp_path / f"eb{suffix}").stat().st_size > 0, suffix
    report = json.loads((tmp_path / "eb.json").read_text())
    assert report["command"].startswith("i2s bench editability --model demo-faces-64-v2 --n-pairs 2 --schedule 2+2/1+1")
    assert "Inception" in report["kid_note"] and report["model"] == "demo-faces-64-v2"
    r = report["settings"]["mean-w-only"]
    assert r["embed"] == {"steps_w": 2, "steps_n": 0, "lr_w": 0.01, "lr_n": 5.0, "init": "mean"}
    assert set(r["edits"]) == {f"{e}/{m}" for e, m in METHODS} and set(r["augment"]) == set(AUGMENT_OPS)
    for row in r["edits"].values():
        if row["edit"] in EDITS:
            # An edit of a 2-step embedding is far from the truth, and so is the unedited reconstruction.
            assert 0 < row["lpips"] < 1 and 5 < row["psnr"] < 40 and row["change_outside"] > 0
            assert r["no_edit"][row["edit"]]["lpips"] > 0
    assert r["reconstruction"]["psnr"] > 5 and r["summary"]["kid_edits"] > report["kid_fixed"]["heldout"]["kid"]
    assert "| mean-w-only | hair | attribute_transfer |" in result.output and "| mean-w-only | hair | crossover |" in \
        result.output
    assert set(r["summary"]["lpips_by_method"]) == {"expression_transfer", "attribute_transfer", "crossover",
                                                    "style_mix"}
    # The defined setting shares the embedding and differs in the style mix alone.
    k2 = report["settings"]["k2"]
    assert k2["reconstruction"] == r["reconstruction"] and k2["edits"]["hair/attribute_transfer"] == \
        r["edits"]["hair/attribute_transfer"]
    assert k2["edits"]["hair/crossover"] == r["edits"]["hair/crossover"]
    assert k2["edits"]["background/style_mix"]["lpips"] != r["edits"]["background/style_mix"]["lpips"]
    assert '--define \'k2={"embed"' in report["command"]
