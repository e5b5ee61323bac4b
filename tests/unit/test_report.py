"""The report reads what each op's psnr column means from the op registry."""

from __future__ import annotations

import json
import shutil
from typing import Any

import fsspec
import pytest
import typer

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


# ----------------------------------------------------------------------------------------------
# report.html, worst-first order, whole captions, histograms, the UI's Markdown (issue 16)
# ----------------------------------------------------------------------------------------------

LONG_ID = "hole-free-00-a-very-long-output-identifier-that-a-sheet-would-have-cut-0123456789"


def _summary(**extra: Any) -> dict[str, Any]:
    return {"kind": "inpaint", "run_id": "inpaint-0123456789ab", "manifest": "/data/m.csv", "run_url": "/r/runs/x",
            "generator": {"id": "demo-faces-64", "resolution": 64, "sha256": "e7" * 32},
            "schedule": {"name": "demo", "steps_w": 80, "steps_n": 80, "edit_steps_w": 80, "edit_steps_n": 80},
            "init": "mean", "engine": {"precision": "fp32", "bit_reproducible": True}, "device": "auto",
            "workers": {"host:1/cpu": 3}, "seed": 7, "started_at": "2026-12-03T04:00:00+00:00",
            "finished_at": "2026-12-03T04:01:30+00:00", "wall_seconds": 90.0,
            "rows": {"outputs": 3, "failed": 1}, "batches_run": 2, "embedded": 3, "embedding_steps": 480,
            "cache_hits": 5, "edit_steps": 320, "errors_by_reason": {"undecodable": 1},
            "files": {"sheet": "/r/runs/x/sheet.png", "metrics_plot": "/r/runs/x/metrics.png"},
            "metrics": {"psnr": {"n": 3, "min": 21.0, "p10": 21.0, "median": 30.0, "p90": 35.0, "max": 35.0},
                        "lpips": None, "ssim": None}, **extra}


def _outs() -> list[dict[str, Any]]:
    # Inpainting's declared metric is psnr_known, higher is better: worst = lowest.
    return [{"id": "mid", "op": "inpaint", "psnr": 30.0, "output_url": "/r/runs/x/outputs/mid.png"},
            {"id": "best", "op": "inpaint", "psnr": 35.0, "output_url": "/r/runs/x/outputs/best.png"},
            {"id": LONG_ID, "op": "inpaint", "psnr": 21.0, "output_url": f"/r/runs/x/outputs/{LONG_ID}.png"},
            {"id": "a-morph", "op": "morph", "psnr": None, "output_url": "/r/runs/x/outputs/a-morph.png"}]


ERRORS = [{"row": 4, "id": "broken", "reason_code": "undecodable", "message": "cannot decode image <b>"}]


def test_html_report_has_the_config_whole_ids_the_worst_first_and_failed_rows():
    from i2score.runs.report import config_lines, report_html

    html = report_html(_summary(), _outs(), ERRORS)
    # Every configuration line of report.md is in the page, its `code` spans as <code>.
    for label, _ in config_lines(_summary()):
        assert f"<th>{label}</th>" in html
    for text in ("<code>demo-faces-64</code> (64 px, sha256 <code>e7e7e7e7e7e7…</code>)",
                 "<code>demo</code> (embedding 80 + 80 steps, edits 80 + 80)", "<code>auto</code> (ran on cpu)",
                 "<th>dates</th><td>2026-12-03 04:00:00 to 04:01:30 UTC (90 s)</td>",
                 "3 outputs, 1 failed rows, 5 cache hits", "<th>seed</th><td>7</td>"):
        assert text in html, text
    # The long id is whole (the old sheet cut ids to 14 characters), in the cards and the table.
    assert html.count(f">{LONG_ID}<") == 2
    # Worst first by the op's declared metric; outputs without one after, by id.
    order = [html.index(f">{i}<") for i in (LONG_ID, "mid", "best", "a-morph")]
    assert order == sorted(order)
    # The failed rows, with their reason code and its meaning, escaped.
    assert '<td class="reason">undecodable</td>' in html and "cannot decode image &lt;b&gt;" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html  # offline, no JS
    assert 'src="metrics.png"' in html and 'href="sheet.png"' in html


def test_markdown_report_has_the_same_config_lines_and_order():
    from i2score.runs.report import config_lines

    md = report_markdown(_summary(), _outs(), ERRORS)
    for label, text in config_lines(_summary()):
        assert f"- {label}: {text}" in md
    order = [md.index(f"[{i}](outputs/") for i in (LONG_ID, "mid", "best", "a-morph")]
    assert order == sorted(order)
    assert "![metric histograms](metrics.png)" in md and "| 4 | broken | undecodable |" in md


def test_worst_first_reads_the_direction_from_the_op_declaration(monkeypatch):
    from dataclasses import replace

    from i2score.runs.report import worst_first

    assert [o["id"] for o in worst_first(_outs())] == [LONG_ID, "mid", "best", "a-morph"]
    metric = OPS["inpaint"].metric
    assert metric is not None
    # A metric declared lower-is-better (an LPIPS-like one) puts the highest value first.
    monkeypatch.setitem(OPS, "inpaint", replace(OPS["inpaint"], metric=replace(metric, higher_is_better=False)))
    assert [o["id"] for o in worst_first(_outs())] == ["best", "mid", LONG_ID, "a-morph"]


def test_wrapped_captions_keep_every_character_and_fit_the_width():
    from i2score.runs.contact_sheet import wrap_text

    def measure(t: str) -> float:
        return 6.0 * len(t)

    lines = wrap_text(f"{LONG_ID}\n21.0 dB psnr_known", 128, measure)
    assert all(measure(line) <= 128 for line in lines)
    # Breaks at separators or anywhere: nothing is lost; at a space, the space is the break.
    assert len(lines) > 3 and "".join(lines[:-1]) == LONG_ID and lines[-1] == "21.0 dB psnr_known"
    assert wrap_text("21.0 dB psnr_known", 60, measure) == ["21.0 dB", "psnr_known"]
    assert wrap_text("x" * 50, 60, measure) == ["x" * 10] * 5


def test_contact_sheet_rows_grow_with_their_captions():
    import numpy as np

    from i2score.runs.contact_sheet import Cell, contact_sheet

    tile = np.full((32, 32, 3), 128, np.uint8)
    short = contact_sheet([[Cell(tile, "a")]], scale=2)
    long = contact_sheet([[Cell(tile, LONG_ID)]], scale=2)
    assert long.width == short.width and long.height > short.height + 40  # several more caption lines


def test_metric_histograms_are_a_png_with_one_panel_per_metric_the_run_has():
    import io

    import matplotlib
    from PIL import Image

    from i2score.runs.report import metrics_plot_png

    backend = matplotlib.get_backend()
    assert metrics_plot_png([{"id": "m", "op": "morph", "psnr": None}]) is None
    one = metrics_plot_png(_outs())
    assert matplotlib.get_backend() == backend  # the process's backend is left alone
    three = metrics_plot_png([{**o, "lpips": 0.2 + i / 10, "ssim": 0.9 - i / 10} for i, o in enumerate(_outs())])
    assert one is not None and three is not None
    with Image.open(io.BytesIO(one)) as a, Image.open(io.BytesIO(three)) as b:
        assert a.format == b.format == "PNG"
        a.load()
        b.load()
        assert b.width > 2.5 * a.width and a.height == b.height  # 3 panels side by side vs 1


@pytest.fixture()
def old_runs(tmp_path):
    """Runs finished by an older version (tests/fixtures/pre_layout), copied, inputs in memory."""
    from tests.unit.test_pre_layout import BASE, FIXTURE

    fs = fsspec.filesystem("memory")
    for p in (FIXTURE / "inputs").rglob("*"):
        if p.is_file():
            fs.pipe(f"{BASE}/{p.relative_to(FIXTURE / 'inputs').as_posix()}", p.read_bytes())
    root = tmp_path / "root"
    shutil.copytree(FIXTURE / "root" / "runs", root / "runs")
    yield root
    fs.rm(BASE, recursive=True)


def test_rerender_writes_the_report_of_an_older_run_from_its_records(old_runs, capsys):
    from PIL import Image

    from i2score.cli.report import report_cmd
    from i2score.runs.report import rerender_report

    run = old_runs / "runs" / "reconstruct-fd2d1131b717"
    assert not (run / "metrics.png").exists()
    summary = rerender_report(str(run))
    assert summary["files"]["metrics_plot"].endswith("metrics.png")
    with Image.open(run / "metrics.png") as im:
        assert im.format == "PNG" and im.width > 3 * im.height  # psnr, lpips and ssim panels
    with Image.open(run / "sheet.png") as im:
        assert im.format == "PNG"
    html = (run / "report.html").read_text()
    assert "<th>generator</th>" in html and "<code>cpu</code>" in html  # the plan's device for an old summary
    psnr = {o["id"]: o["psnr"] for p in (run / "batches").glob("reconstruct-*.json")
            for o in json.loads(p.read_text())["outputs"]}
    assert len(psnr) == 4 and len(set(psnr.values())) == 4
    worst = min(psnr, key=lambda k: psnr[k])
    assert html.index(f'<span class="id">{worst}</span>') < min(
        html.index(f'<span class="id">{i}</span>') for i in psnr if i != worst)
    assert json.loads((run / "summary.json").read_text())["files"]["metrics_plot"] == str(run / "metrics.png")
    # The CLI: 0 and the files; 2 and one line for a folder that is not a finished run.
    report_cmd(str(run))
    assert "report.html" in capsys.readouterr().out
    with pytest.raises(typer.Exit) as exc:
        report_cmd(str(old_runs / "runs" / "nope"))
    assert exc.value.exit_code == 2 and "not finished" in capsys.readouterr().err


def test_ui_markdown_links_are_absolute_file_urls_with_an_inline_strip_of_the_worst(old_runs):
    import base64
    import io
    import re

    from PIL import Image

    from i2score.runs.report import ui_report_markdown

    run = old_runs / "runs" / "edit-4560c0ecf354"
    md = ui_report_markdown(str(old_runs), "edit-4560c0ecf354", thumbnails=8, thumb_px=64)
    links = re.findall(r"\]\(([^)]+)\)", md)
    data = [u for u in links if u.startswith("data:")]
    files = [u for u in links if not u.startswith("data:")]
    # Inline: the strip of the worst outputs and the histograms; the rest: absolute file:// URLs.
    assert len(data) == 2 and files and all(u.startswith(f"file://{run}/") for u in files)
    assert f"file://{run}/outputs/crossover-default.png" in files
    assert sum(len(u) for u in data) < 48_000  # modest: the Prefect API stores it
    strip, plot = (Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))) for u in data)
    assert strip.format == plot.format == "PNG" and strip.size == (8 * 66 - 2, 64) and plot.width > 200
    # An http(s) page does not show file:// images: the sheet is a link there, not an image.
    assert "![contact sheet" not in md and f"[contact sheet, worst first (sheet.png)](file://{run}/sheet.png)" in md
    # The strip's names are the worst first, the same order as the outputs' list.
    names = md.split("left to right: ", 1)[1].split("\n", 1)[0]
    first = re.search(r"## Outputs, worst first\n\n- \[([^]]+)\]", md)
    assert first is not None and names.split(" ", 1)[0].rstrip(",") == first[1]


def test_public_url_of_local_files_is_an_absolute_file_url(tmp_path, monkeypatch):
    from i2score.data import storage

    (tmp_path / "a b").mkdir()
    monkeypatch.chdir(tmp_path)
    assert storage.public_url("a b/x.png") == f"file://{tmp_path}/a%20b/x.png"
    assert storage.public_url(f"file://{tmp_path}/y.png") == f"file://{tmp_path}/y.png"
    assert storage.public_url("https://example.org/x.png") == "https://example.org/x.png"
    with pytest.raises(ValueError, match="memory:// cannot make a URL"):
        storage.public_url("memory://b/x.png")
    with pytest.raises(ValueError, match="expires_s must be in"):
        storage.public_url("a b/x.png", expires_s=8 * 24 * 3600)


def test_w_closeness_is_a_config_line_only_when_set():
    from i2score.runs.report import config_lines

    assert "W-closeness" not in dict(config_lines(_summary()))
    sched = {"name": "demo", "steps_w": 80, "steps_n": 80, "edit_steps_w": 80, "edit_steps_n": 80,
             "w_offset_weight": 0.001, "pnorm_weight": 0.0}
    assert dict(config_lines(_summary(schedule=sched)))["W-closeness"].startswith("`offset=0.001`")
