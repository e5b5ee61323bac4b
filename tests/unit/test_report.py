"""The report reads what each op's psnr column means from the op registry."""

from __future__ import annotations

from typing import Any

from i2score.runs.ops import OPS
from i2score.runs.report import psnr_meanings, report_markdown


def test_the_report_names_each_ops_psnr_metric_from_the_registry():
    outs: list[dict[str, Any]] = [{"id": "c", "op": "crossover", "psnr": 31.0, "output_url": "/r/outputs/c.png"},
                                  {"id": "i", "op": "inpaint", "psnr": 35.0, "output_url": "/r/outputs/i.png"},
                                  {"id": "m", "op": "morph", "psnr": None, "output_url": "/r/outputs/m.png"},
                                  {"id": "n", "op": "reconstruct", "psnr": None, "output_url": "/r/outputs/n.png"}]
    meanings = psnr_meanings(outs)
    # Ops without a psnr value (morph has no metric, an edit manifest's reconstruct rows only
    # render) are not explained.
    assert [(op, key) for op, _, key in meanings] == [("crossover", "psnr_base_region"), ("inpaint", "psnr_known")]
    assert all(what == getattr(OPS[op].metric, "what", None) for op, what, _ in meanings)
    summary = {"kind": "edit", "run_id": "edit-x", "manifest": "m.csv", "run_url": "/r",
               "generator": {"id": "demo", "resolution": 64, "sha256": "ab" * 32},
               "schedule": {"name": "demo", "steps_w": 1, "steps_n": 1, "edit_steps_w": 1, "edit_steps_n": 1},
               "rows": {"outputs": 4, "failed": 0}, "batches_run": 1, "embedded": 0, "embedding_steps": 0,
               "cache_hits": 2, "edit_steps": 0, "files": {"sheet": None},
               "metrics": {"psnr": {"n": 2, "min": 31.0, "p10": 31.0, "median": 33.0, "p90": 35.0, "max": 35.0}}}
    md = report_markdown(summary, outs, [])
    assert "crossover: PSNR outside the blurred mask band" in md and "`psnr_known`" in md and "morph:" not in md
