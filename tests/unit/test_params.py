"""Parameters are checked up front against the op registry and the generator (issue 17, part 5),
degenerate outputs never count as a success (part 6), and ``i2s validate`` can list and write
every rejection (part 7)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from i2score.data.manifest import GeneratorLimits, Param, validate_manifest
from i2score.generator.checkpoints import load_generator
from i2score.generator.registry import DEFAULT_MODEL
from i2score.runs.ops import AUGMENTATIONS, CATALOG, OPS, ROW_SEED_MAX, DrawContext, generator_limits

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"


@pytest.fixture(scope="module")
def demo_limits() -> GeneratorLimits:
    return generator_limits(load_generator(DEFAULT_MODEL, device="cpu"), DEFAULT_MODEL)


def _edit_manifest(path: Path, rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    """An edit manifest (schema checks only: the files need not exist) with a ``base`` row that
    id parameters can name, then one row per ``(id, op, params)``."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", "op", "image", "mask", "ref", "params"])
    w.writerow(["base", "reconstruct", "base.png", "", "", ""])
    for rid, op, params in rows:
        spec = OPS[op]
        full = {k: "base" for k, p in spec.params.items() if p.type == "id"} | params
        w.writerow([rid, op, f"{rid}.png", "m.png" if spec.mask == "required" else "",
                    "r.png" if spec.ref == "required" else "", json.dumps(full)])
    path.write_text(out.getvalue())
    return str(path)


def _out_of_range(p: Param, limits: GeneratorLimits) -> list[Any]:
    """Values just outside ``p``'s range, and values of the wrong kind."""
    lo, hi = p.bounds(limits)
    assert lo is not None and hi is not None
    step = 1 if p.type == "int" else 0.5
    bad: list[Any] = [lo - step, hi + step, "1", True]
    if p.type == "int":
        bad.append(lo + 0.5)
    else:
        bad += [1e308, -1e308]
    return bad


def _numeric_params() -> list[tuple[str, str]]:
    return [(op.name, k) for op in OPS.values() for k, p in op.params.items() if p.type in ("int", "float")]


@pytest.mark.parametrize(("op", "name"), _numeric_params())
def test_every_numeric_parameter_of_every_op_is_bounded(op: str, name: str, demo_limits: GeneratorLimits) -> None:
    # A new op's numbers need a range too: an unbounded one would reach its runner unchecked.
    p = OPS[op].params[name]
    lo, hi = p.bounds(demo_limits)
    assert lo is not None and hi is not None and lo <= hi, (op, name, lo, hi)
    assert p.doc, f"{op}.{name} needs a doc that says what its range means"
    if p.default is not None:
        assert p.check(name, p.default, demo_limits) == p.default  # defaults stay as they were


def test_out_of_range_parameters_are_rejected_up_front_naming_the_field_and_range(tmp_path, demo_limits):
    rows, expected = [], {}
    for op, name in _numeric_params():
        p = OPS[op].params[name]
        lo, hi = p.bounds(demo_limits)
        for j, value in enumerate(_out_of_range(p, demo_limits)):
            rid = f"{op}-{name}-bad{j}"
            rows.append((rid, op, {name: value}))
            expected[rid] = (name, value)
        for j, value in enumerate((lo, hi)):  # the bounds themselves are allowed
            rows.append((f"{op}-{name}-ok{j}", op, {name: value}))
    for spec in OPS.values():
        for name, p in spec.params.items():
            if p.choices is not None:
                rows.append((f"{spec.name}-{name}-badchoice", spec.name, {name: "not-a-choice"}))
                expected[f"{spec.name}-{name}-badchoice"] = (name, "not-a-choice")
    url = _edit_manifest(tmp_path / "m.csv", rows)
    result = validate_manifest(url, CATALOG.for_generator(demo_limits), kind="edit")
    rejected = {r.id: r for r in result.rejected}
    assert set(rejected) == set(expected), set(rejected) ^ set(expected)
    for rid, (name, value) in expected.items():
        r = rejected[rid]
        assert repr(value) in r.message or str(value) in r.message, r.message
        p = next(op.params[name] for op in OPS.values() if rid.startswith(f"{op.name}-{name}-"))
        assert r.reason_code == "invalid_params" and r.field == "params", r
        assert f"params.{name}" in r.message, r.message
        if p.choices is None:
            assert p.range_text(demo_limits) in r.message, r.message
        else:
            assert all(c in r.message for c in p.choices), r.message
    assert len(result.rows) == len(rows) + 1 - len(expected)


def test_seed_bounds(tmp_path):
    url = _edit_manifest(tmp_path / "m.csv", [("top", "inpaint", {"seed": 2**63 - 1}),
                                              ("over", "inpaint", {"seed": 2**63}),
                                              ("negative", "inpaint", {"seed": -1})])
    result = validate_manifest(url, CATALOG, kind="edit")
    assert {r.id: r.params.get("seed") for r in result.rows} == {"base": None, "top": 2**63 - 1}
    assert ROW_SEED_MAX == 2**63 - 1
    msgs = {r.id: r.message for r in result.rejected}
    assert set(msgs) == {"over", "negative"}
    assert all("params.seed must be in [0, 9223372036854775807]" in m for m in msgs.values()), msgs


def test_layers_are_bounded_by_the_generator(tmp_path, demo_limits):
    G = load_generator(DEFAULT_MODEL, device="cpu")
    last = len(G.layer_names) - 1
    url = _edit_manifest(tmp_path / "m.csv", [
        ("layer-99", "attribute_transfer", {"layer": 99}),
        ("layer-past", "attribute_transfer", {"layer": last + 1}),
        ("layer-last", "attribute_transfer", {"layer": last}),
        ("k-all", "style_mix", {"k": G.num_ws}),
        ("k-past", "style_mix", {"k": G.num_ws + 1}),
        ("strength-huge", "expression_transfer", {"strength": 1e308}),
    ])
    result = validate_manifest(url, CATALOG.for_generator(demo_limits), kind="edit")
    assert {r.id for r in result.rows} == {"base", "layer-last", "k-all"}
    msgs = {r.id: r.message for r in result.rejected}
    assert f"[0, {last}]" in msgs["layer-99"] and f"{len(G.layer_names)} synthesis layers" in msgs["layer-99"]
    assert DEFAULT_MODEL in msgs["layer-99"] and f"conv0..conv{last}" in msgs["layer-99"], msgs["layer-99"]
    assert msgs["layer-past"] == msgs["layer-99"].replace("99", str(last + 1))
    assert f"has {G.num_ws} W+ rows" in msgs["k-past"], msgs["k-past"]
    assert "params.strength must be in [-4, 4], got 1e+308" in msgs["strength-huge"]
    # Without the generator's limits only the fixed bounds apply (a run always passes them).
    assert {r.id for r in validate_manifest(url, CATALOG, kind="edit").rejected} == {"strength-huge"}


@pytest.mark.parametrize("num_ws", [2, 4, 6, 8, 10, 14, 18])
def test_augmentation_draws_fit_their_declared_params(num_ws: int) -> None:
    limits = GeneratorLimits("g", num_ws, tuple(f"conv{i}" for i in range(num_ws - 1)))
    rng = np.random.default_rng(0)
    for op in AUGMENTATIONS.values():
        assert set(op.batch_params) <= set(op.params), op.name
        for _ in range(50):
            drawn = op.draw(rng, DrawContext(num_ws=num_ws, jitter_sigma=0.1))
            assert set(drawn) == set(op.params), (op.name, drawn)
            for k, v in drawn.items():
                assert op.params[k].check(k, v, limits) == v, (op.name, k, v)


def test_plan_augmentations_checks_the_jitter_against_its_declaration():
    from i2score.runs.augment import plan_augmentations

    for bad in (-0.1, math.inf, 5.0):
        with pytest.raises(ValueError, match=r"jitter_sigma must be .*\[0, 2\]"):
            plan_augmentations(["a", "b"], 1, ("jitter",), num_ws=10, jitter_sigma=bad)
    assert plan_augmentations(["a", "b"], 1, ("jitter",), num_ws=10, jitter_sigma=2.0)[0].params["sigma"] == 2.0


# ------------------------------------------------------------------------------------------------
# Degenerate outputs
# ------------------------------------------------------------------------------------------------


def test_check_output_image():
    from i2score.runs.outputs import MIN_OUTPUT_STD, DegenerateOutputError, check_output_image

    good = torch.linspace(-0.8, 0.8, 3 * 8 * 8).reshape(3, 8, 8)
    check_output_image(good)
    check_output_image(good[None])
    check_output_image(torch.where(good > 0, 1.0, -1.0))  # two levels: harsh, but an image
    one_nan = good.clone()
    one_nan[0, 0, 0] = math.nan
    nearly_flat = torch.full((3, 8, 8), 0.3) + 0.5 * MIN_OUTPUT_STD * torch.randn(3, 8, 8,
                                                                                   generator=torch.Generator().manual_seed(0))
    for bad, words in ((one_nan, "not finite"), (good * math.inf, "not finite"),
                       (torch.full((3, 8, 8), -1.0), "flat colour"), (nearly_flat, "flat colour"),
                       (torch.full((3, 8, 8), 1e30), "flat colour")):  # saturated: white once clipped
        with pytest.raises(DegenerateOutputError, match=words):
            check_output_image(bad)


def _copy_demo(tmp_path: Path, n: int) -> None:
    for i in range(n):
        shutil.copy(DEMO / "images" / f"heldout-{i:02d}.png", tmp_path / f"p{i}.png")


def _run(config) -> dict[str, Any]:
    from i2score.runs.execute import run_batch
    from i2score.runs.plan import plan_run
    from i2score.runs.report import finish_run

    plan = plan_run(config)
    for phase in plan.phases:
        for b in phase:
            run_batch(config.root, plan.run_id, b)
    return finish_run(config.root, plan.run_id, plan.attempt)


def test_degenerate_outputs_are_errors_and_good_rows_are_written(tmp_path, monkeypatch):
    from i2score.runs import execute
    from i2score.runs.config import JobConfig
    from i2score.runs.ops import OpOutput
    from i2score.runs.outputs import read_table

    _copy_demo(tmp_path, 3)
    root = str(tmp_path / "root")
    (tmp_path / "r.csv").write_text("id,image\np0,p0.png\np1,p1.png\np2,p2.png\n")
    real_render = execute.render

    def broken_render(G, w, noise):  # a generator that renders NaN for p0 and black for p1
        images = real_render(G, w, noise).clone()
        images[0] = math.nan
        images[1] = -1.0
        return images

    monkeypatch.setattr(execute, "render", broken_render)
    summary = _run(JobConfig("reconstruct", str(tmp_path / "r.csv"), root, None, "2+2", 8, "cpu", 0, None))
    errors = read_table(summary["files"]["errors"]).to_pylist()
    assert {(e["id"], e["reason_code"]) for e in errors} == {("p0", "degenerate_output"), ("p1", "degenerate_output")}
    assert "not finite" in next(e["message"] for e in errors if e["id"] == "p0")
    assert "flat colour" in next(e["message"] for e in errors if e["id"] == "p1")
    assert summary["errors_by_reason"] == {"degenerate_output": 2} and summary["rows"]["outputs"] == 1
    assert read_table(summary["files"]["manifest"]).column("id").to_pylist() == ["p2"]
    assert sorted(p.name for p in (Path(summary["run_url"]) / "outputs").iterdir()) == ["p2.png"]
    monkeypatch.setattr(execute, "render", real_render)

    # An edit (from the cached embeddings) whose runner returns NaN for one row.
    morph = OPS["morph"]

    def nan_first(b):
        out = morph.run(b)
        out.images[0] = math.nan
        return OpOutput(out.images, out.metrics, out.suffixes, out.cache_keys)

    from dataclasses import replace

    monkeypatch.setitem(OPS, "morph", replace(morph, run=nan_first))
    (tmp_path / "e.csv").write_text("id,op,image,ref,params\n"
                                    'm0,morph,p0.png,p1.png,"{""t"": 0.5}"\nm1,morph,p1.png,p2.png,"{""t"": 0.5}"\n')
    summary = _run(JobConfig("edit", str(tmp_path / "e.csv"), root, None, "2+2", 8, "cpu", 0, None))
    errors = read_table(summary["files"]["errors"]).to_pylist()
    assert [(e["id"], e["reason_code"]) for e in errors] == [("m0", "degenerate_output")]
    assert summary["errors_by_reason"] == {"degenerate_output": 1}
    assert read_table(summary["files"]["manifest"]).column("id").to_pylist() == ["m1"]


def test_a_run_rejects_bad_params_before_running_and_runs_the_rest(tmp_path):
    from i2score.runs.config import JobConfig
    from i2score.runs.outputs import read_table

    _copy_demo(tmp_path, 2)
    shutil.copy(DEMO / "masks" / "hole-rect-00.png", tmp_path / "hole.png")
    (tmp_path / "e.csv").write_text(
        "id,op,image,ref,mask,params\n"
        f'top-seed,inpaint,p0.png,,hole.png,"{{""seed"": {2**63 - 1}, ""k"": 1}}"\n'
        f'big-seed,inpaint,p0.png,,hole.png,"{{""seed"": {2**63}}}"\n'
        'layer-99,attribute_transfer,p0.png,p1.png,hole.png,"{""layer"": 99}"\n'
        'neutral,reconstruct,p1.png,,,\n'
        'huge,expression_transfer,p0.png,,,"{""a"": ""neutral"", ""b"": ""neutral"", ""strength"": 1e308}"\n')
    summary = _run(JobConfig("edit", str(tmp_path / "e.csv"), str(tmp_path / "root"), None, "2+2", 8, "cpu", 0,
                             None))
    errors = {e["id"]: e for e in read_table(summary["files"]["errors"]).to_pylist()}
    assert set(errors) == {"big-seed", "layer-99", "huge"}
    assert all(e["reason_code"] == "invalid_params" for e in errors.values())
    assert "[0, 8] (generator demo-faces-64-v2 has 9 synthesis layers" in errors["layer-99"]["message"]
    assert sorted(read_table(summary["files"]["manifest"]).column("id").to_pylist()) == ["neutral", "top-seed-k0"]


# ------------------------------------------------------------------------------------------------
# i2s validate --all / --output
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def cli():
    import typer
    from typer.testing import CliRunner

    from i2score.cli.validate import validate_cmd

    app = typer.Typer()
    app.command("validate")(validate_cmd)
    app.command("other")(lambda: None)  # keep "validate" a sub-command, as in i2s
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["validate", *args])


def _many_bad(tmp_path: Path, n: int) -> str:
    rows = [(f"bad{i:03d}", "attribute_transfer", {"layer": 50 + i}) for i in range(n)]
    return _edit_manifest(tmp_path / "many.csv", rows)


def test_validate_lists_every_rejection_with_all(tmp_path, cli):
    url = _many_bad(tmp_path, 60)
    short = cli(url, "--kind", "edit", "--no-check-files")
    assert short.exit_code == 1, short.output
    assert "... and 10 more rejected rows" in short.output and "bad059" not in short.output
    full = cli(url, "--kind", "edit", "--no-check-files", "--all")
    assert full.exit_code == 1, full.output
    assert all(f"bad{i:03d}" in full.output for i in range(60)) and "more rejected rows" not in full.output
    assert "synthesis layers" in full.output  # checked against the default model's layers


@pytest.mark.parametrize("ext", ["csv", "parquet", "jsonl"])
def test_validate_writes_every_rejection(tmp_path, cli, ext):
    url = _many_bad(tmp_path, 60)
    target = tmp_path / f"rejections.{ext}"
    res = cli(url, "--kind", "edit", "--no-check-files", "--output", str(target))
    assert res.exit_code == 1, res.output
    if ext == "csv":
        with target.open(newline="") as f:
            got = list(csv.DictReader(f))
    elif ext == "jsonl":
        got = [json.loads(line) for line in target.read_text().splitlines()]
    else:
        got = pq.read_table(target).to_pylist()
    assert len(got) == 60 and list(got[0]) == ["row", "id", "reason", "field", "message", "url"]
    first = got[0]
    assert str(first["row"]) == "2" and first["id"] == "bad000" and first["reason"] == "invalid_params"
    assert first["field"] == "params" and "params.layer must be in [0, 8]" in first["message"]
    assert [g["id"] for g in got] == [f"bad{i:03d}" for i in range(60)]


def test_validate_output_needs_a_known_format_and_a_readable_model(tmp_path, cli):
    url = _many_bad(tmp_path, 1)
    assert cli(url, "--kind", "edit", "--output", str(tmp_path / "r.xlsx")).exit_code == 2
    assert not (tmp_path / "r.xlsx").exists()
    res = cli(url, "--kind", "edit", "--model", str(tmp_path / "no-such-model.pt"))
    assert res.exit_code == 2 and "cannot load model" in res.output
    ok = _edit_manifest(tmp_path / "ok.csv", [])
    res = cli(ok, "--kind", "edit", "--no-check-files", "--output", str(tmp_path / "none.csv"))
    assert res.exit_code == 0 and (tmp_path / "none.csv").read_text() == "row,id,reason,field,message,url\n"


def test_run_reason_codes_are_documented():
    from i2score.data.manifest import REASON_DESCRIPTIONS
    from i2score.runs.records import DEGENERATE_OUTPUT, RUN_REASON_DESCRIPTIONS

    repo = Path(__file__).resolve().parents[2]
    docs = (repo / "manifests" / "README.md").read_text(), (repo / "README.md").read_text()
    assert DEGENERATE_OUTPUT in RUN_REASON_DESCRIPTIONS and not set(RUN_REASON_DESCRIPTIONS) & set(REASON_DESCRIPTIONS)
    for code, what in RUN_REASON_DESCRIPTIONS.items():
        assert what and all(f"`{code}`" in doc for doc in docs), code


def test_a_default_the_generator_cannot_take_must_be_given(tmp_path):
    # A 16 px generator has 6 W+ rows and layers conv0..conv4: style_mix's default k = 8 does not fit.
    small = GeneratorLimits("tiny-16", 6, tuple(f"conv{i}" for i in range(5)))
    url = _edit_manifest(tmp_path / "m.csv", [("mix-default", "style_mix", {}), ("mix-6", "style_mix", {"k": 6}),
                                              ("attr-default", "attribute_transfer", {})])
    result = validate_manifest(url, CATALOG.for_generator(small), kind="edit")
    assert {r.id: r.params for r in result.rows} == {"base": {}, "mix-6": {"k": 6}, "attr-default": {}}
    (r,) = result.rejected
    assert r.id == "mix-default" and r.reason_code == "invalid_params"
    assert r.message == ("params.k is not given and its default does not fit: params.k must be in [0, 6] "
                         "(generator tiny-16 has 6 W+ rows), got 8")
