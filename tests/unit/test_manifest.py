"""Manifests: formats, the bad-input corpus, path resolution, loading, the CLI, speed."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from i2score.data import storage
from i2score.data.manifest import (
    REASON_DESCRIPTIONS,
    Manifest,
    ManifestError,
    Reason,
    RowError,
    check_id,
    load_row,
    row_json_schema,
    validate_manifest,
)
from i2score.runs.ops import CATALOG, OPS

COLUMNS = ["id", "image", "mask", "op", "ref", "params"]
REPO = Path(__file__).resolve().parents[2]


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def photo(w: int = 60, h: int = 40, seed: int = 0) -> bytes:
    return encode(Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)))


def mask(w: int = 60, h: int = 40) -> bytes:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : h // 2, w // 4 : w // 2] = 255
    return encode(Image.fromarray(m))


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def csv_bytes(rows: list[list[str]], header: list[str] = COLUMNS) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def put(url: str, data: bytes) -> str:
    storage.write_bytes(url, data)
    return url


# ------------------------------------------------------------------------------------------------
# The bad-input corpus: one manifest, every kind of bad row next to good ones.
# ------------------------------------------------------------------------------------------------

P2 = json.dumps({"k": 2, "seed": 3})

# (id, image, mask, op, ref, params) -> expected reason (None = valid)
CORPUS: list[tuple[list[str], str | None]] = [
    (["ok_rec", "../data/good.png", "", "reconstruct", "", ""], None),
    (["ok_inpaint", "../data/good.png", "../data/mask.png", "inpaint", "", P2], None),
    (["ok_inpaint_2x", "../data/good.png", "../data/mask_2x.png", "inpaint", "", ""], None),
    (["ok_cross", "../data/good.png", "../data/mask.png", "crossover", "sub/good2.jpg", '{"blur_sigma": 0}'], None),
    (["ok_morph", "../data/good.png", "", "morph", "sub/good2.jpg", '{"t": 0.3}'], None),
    (["ok_expr", "../data/good.png", "", "expression_transfer", "", '{"a": "ok_rec", "b": "ok_morph"}'], None),
    (["dup", "../data/good.png", "", "reconstruct", "", ""], "duplicate_id"),
    (["DUP", "../data/good.png", "", "reconstruct", "", ""], "duplicate_id"),
    (["", "../data/good.png", "", "reconstruct", "", ""], "empty_id"),
    (["../evil", "../data/good.png", "", "reconstruct", "", ""], "path_traversal"),
    (["a/../../b", "../data/good.png", "", "reconstruct", "", ""], "path_traversal"),
    (["/etc/passwd", "../data/good.png", "", "reconstruct", "", ""], "path_traversal"),
    (["..\\win", "../data/good.png", "", "reconstruct", "", ""], "path_traversal"),
    ([".hidden", "../data/good.png", "", "reconstruct", "", ""], "invalid_id"),
    (["has space", "../data/good.png", "", "reconstruct", "", ""], "invalid_id"),
    (["op_bad", "../data/good.png", "", "teleport", "", ""], "unknown_op"),
    (["op_empty", "../data/good.png", "", "", "", ""], "unknown_op"),
    (["scheme", "ftp://example.com/x.png", "", "reconstruct", "", ""], "unsupported_scheme"),
    (["scheme_data", "data:image/png;base64,AAAA", "", "reconstruct", "", ""], "unsupported_scheme"),
    (["no_image", "", "", "reconstruct", "", ""], "missing_image"),
    (["no_mask", "../data/good.png", "", "inpaint", "", ""], "missing_mask"),
    (["no_ref", "../data/good.png", "", "morph", "", ""], "missing_ref"),
    (["extra_ref", "../data/good.png", "", "reconstruct", "sub/good2.jpg", ""], "unexpected_input"),
    (["params_key", "../data/good.png", "../data/mask.png", "inpaint", "", '{"kk": 1}'], "invalid_params"),
    (["params_json", "../data/good.png", "../data/mask.png", "inpaint", "", "{k: 1"], "invalid_params"),
    (["params_range", "../data/good.png", "", "morph", "sub/good2.jpg", '{"t": 1.5}'], "invalid_params"),
    (["params_type", "../data/good.png", "../data/mask.png", "inpaint", "", '{"k": "2"}'], "invalid_params"),
    (["params_ref", "../data/good.png", "", "expression_transfer", "", '{"a": "ok_rec", "b": "trunc"}'],
     "invalid_params"),
    (["missing", "../data/nope.png", "", "reconstruct", "", ""], "missing_file"),
    (["folder", "<FOLDER>", "", "reconstruct", "", ""], "not_a_regular_file"),
    (["empty", "../data/empty.png", "", "reconstruct", "", ""], "empty_file"),
    (["trunc", "../data/truncated.png", "", "reconstruct", "", ""], "truncated_image"),
    (["garbage", "../data/garbage.png", "", "reconstruct", "", ""], "undecodable_image"),
    (["bomb", "../data/bomb.png", "", "reconstruct", "", ""], "decompression_bomb"),
    (["mask_size", "../data/good.png", "../data/mask_square.png", "inpaint", "", ""], "mask_size_mismatch"),
    (["mask_soft", "../data/good.png", "../data/mask_ramp.png", "inpaint", "", ""], "non_binary_mask"),
    (["mask_trunc", "../data/good.png", "../data/truncated.png", "inpaint", "", ""], "truncated_image"),
    (["ref_missing", "../data/good.png", "", "morph", "sub/none.jpg", ""], "missing_file"),
]
# "dup" and "DUP" collide case-insensitively; a CSV row with too many fields is malformed.
MALFORMED = ["too_many", "../data/good.png", "", "reconstruct", "", "", "surplus"]


def build_corpus(root: str, folder: Path) -> str:
    """Files under ``root/data`` and ``root/jobs/sub``, the manifest at ``root/jobs/m.csv``."""
    good = photo()
    put(storage.join(root, "data/good.png"), good)
    put(storage.join(root, "jobs/sub/good2.jpg"),
        encode(Image.open(io.BytesIO(photo(50, 50, seed=1))).convert("RGB"), "JPEG"))
    put(storage.join(root, "data/mask.png"), mask())
    put(storage.join(root, "data/mask_2x.png"), mask(120, 80))
    put(storage.join(root, "data/mask_square.png"), mask(60, 60))
    ramp = np.tile(np.linspace(0, 255, 60), (40, 1)).astype(np.uint8)
    put(storage.join(root, "data/mask_ramp.png"), encode(Image.fromarray(ramp)))
    put(storage.join(root, "data/empty.png"), b"")
    put(storage.join(root, "data/truncated.png"), good[: len(good) // 2])
    put(storage.join(root, "data/garbage.png"), b"GIF89? definitely not an image\n" * 4)
    put(storage.join(root, "data/bomb.png"), png_header_only(100_000, 100_000))
    unreadable = folder / "a_folder"  # a local folder named as an image (any store's manifest)
    unreadable.mkdir(exist_ok=True)
    rows = [[str(unreadable) if v == "<FOLDER>" else v for v in fields] for fields, _ in CORPUS]
    rows.insert(5, MALFORMED)
    return put(storage.join(root, "jobs/m.csv"), csv_bytes(rows))


def expected_reasons() -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    rownum = 0
    for i, (_, reason) in enumerate(CORPUS):
        if i == 5:
            rownum += 1
            out[rownum] = "malformed_row"
        rownum += 1
        out[rownum] = reason
    return out


def test_bad_input_corpus(storage_root, tmp_path):
    url = build_corpus(storage_root, tmp_path)
    kinds = {r for _, r in CORPUS if r} | {"malformed_row"}
    assert len(kinds) >= 15, kinds

    result = validate_manifest(url, CATALOG, kind="edit", check_files=True, resolution=32)
    expected = expected_reasons()
    got = {r.row: r.reason_code for r in result.rejected}
    assert got == {row: reason for row, reason in expected.items() if reason}, [
        (r.row, r.id, r.reason_code, r.message) for r in result.rejected]
    assert {r.row for r in result.rows} == {row for row, reason in expected.items() if reason is None}
    assert result.n_total == len(expected)
    assert all(r.message and r.reason_code in REASON_DESCRIPTIONS for r in result.rejected)
    by_id = {r.id: r for r in result.rejected}
    assert by_id["mask_trunc"].field == "mask" and by_id["ref_missing"].field == "ref"
    assert "ok_rec" not in by_id and by_id["params_ref"].reason_code == "invalid_params"

    # Good rows in the same manifest load, with paths resolved against the manifest's folder.
    for row in result.rows:
        assert row.image == storage.join(storage_root, "data/good.png")
        loaded = load_row(row, resolution=32)
        assert loaded.image.shape == (3, 32, 32)
        assert loaded.image.min() >= -1 and loaded.image.max() <= 1
        assert (loaded.mask is None) == (OPS[row.op].mask == "unused")
        if loaded.mask is not None:
            assert loaded.mask.shape == (1, 32, 32) and 0 < loaded.mask.sum() < 32 * 32
        if row.ref is not None:
            assert row.ref == storage.join(storage_root, "jobs/sub/good2.jpg")
            assert loaded.ref is not None and loaded.ref.shape == (3, 32, 32)
    params = {r.id: r.params for r in result.rows}
    assert params["ok_inpaint"] == {"k": 2, "seed": 3} and params["ok_morph"] == {"t": 0.3}
    assert OPS["inpaint"].resolve_params(params["ok_inpaint_2x"]) == {"k": 1, "seed": 0}

    # Schema checks alone reject the schema rows and pass the file rows.
    schema_only = validate_manifest(url, CATALOG, kind="edit")
    file_reasons = {"missing_file", "unreadable_file", "not_a_regular_file", "empty_file", "truncated_image",
                    "undecodable_image", "decompression_bomb", "mask_size_mismatch", "non_binary_mask"}
    assert {r.reason_code for r in schema_only.rejected}.isdisjoint(file_reasons)
    # ... and loading such a row raises the same code through RowError.
    rows = {r.id: r for r in schema_only.rows}
    for rid in ("missing", "trunc", "bomb", "mask_soft", "empty", "folder"):
        with pytest.raises(RowError) as info:
            load_row(rows[rid], resolution=32)
        assert info.value.reason_code == got[rows[rid].row]


def test_missing_required_column_rejects_every_row(tmp_path):
    url = put(str(tmp_path / "m.csv"), csv_bytes([["a", "x.png"], ["b", "y.png"]], ["id", "image"]))
    result = validate_manifest(url, CATALOG, kind="inpaint")
    assert not result.rows
    assert [(r.row, r.id, r.reason_code) for r in result.rejected] == [
        (1, "a", "missing_column"), (2, "b", "missing_column")]
    assert "mask" in result.rejected[0].message
    edit = validate_manifest(url, CATALOG, kind="edit")
    assert {r.reason_code for r in edit.rejected} == {"missing_column"}
    assert validate_manifest(url, CATALOG, kind="reconstruct").ok


def test_kind_defaults_and_restrictions(tmp_path):
    put(str(tmp_path / "a.png"), photo())
    put(str(tmp_path / "m.png"), mask())
    url = put(str(tmp_path / "m.csv"), csv_bytes(
        [["a", "a.png", "m.png", "", "", '{"k": 3}'], ["b", "a.png", "m.png", "crossover", "a.png", ""]]))
    result = validate_manifest(url, CATALOG, kind="inpaint", check_files=True)
    assert [r.op for r in result.rows] == ["inpaint"]
    assert result.rows[0].params == {"k": 3}
    assert [r.reason_code for r in result.rejected] == ["unknown_op"]
    with pytest.raises(ValueError):
        validate_manifest(url, CATALOG, kind="bogus")


def test_id_rules():
    for good in ["a", "A-b_c.d", "0", "x" * 128, "img.0001.png", "-dash", "_under"]:
        assert check_id(good) is None, good
    for bad, reason in [("../x", "path_traversal"), ("a/b", "path_traversal"), ("a\\b", "path_traversal"),
                        ("a\x00b", "path_traversal"), ("..", "path_traversal"), ("C:evil", "path_traversal"),
                        ("/abs", "path_traversal"), (".x", "invalid_id"), ("x" * 129, "invalid_id"),
                        ("é", "invalid_id"), ("a b", "invalid_id"), ("a*b", "invalid_id"), ("", "empty_id")]:
        found = check_id(bad)
        assert found is not None and found[0] == reason, bad


# ------------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------------

PARITY_ROWS = [
    ["a", "img/a.png", "", "reconstruct", "", ""],
    ["b", "img/a.png", "img/m.png", "inpaint", "", '{"k": 4}'],
    ["c", "img/a.png", "", "morph", "img/a.png", '{"t": 1}'],
    ["../d", "img/a.png", "", "reconstruct", "", ""],
    ["e", "img/a.png", "", "style_mix", "", ""],
    ["f", "ftp://x/y.png", "", "reconstruct", "", ""],
    ["g", "img/missing.png", "", "reconstruct", "", ""],
    ["a", "img/a.png", "", "reconstruct", "", ""],
]


def _as_objects(rows: list[list[str]]) -> list[dict]:
    return [{k: (json.loads(v) if k == "params" and v else v or None) for k, v in zip(COLUMNS, r, strict=True)}
            for r in rows]


def test_csv_parquet_jsonl_parity(tmp_path):
    put(str(tmp_path / "img/a.png"), photo())
    put(str(tmp_path / "img/m.png"), mask())
    urls = [put(str(tmp_path / "m.csv"), csv_bytes(PARITY_ROWS)),
            put(str(tmp_path / "m.tsv"), csv_bytes(PARITY_ROWS).replace(b",", b"\t")),
            put(str(tmp_path / "m.csv.gz"), gzip.compress(csv_bytes(PARITY_ROWS)))]
    table = pa.Table.from_pylist([dict(zip(COLUMNS, r, strict=True)) for r in PARITY_ROWS])
    buf = io.BytesIO()
    pq.write_table(table, buf)
    urls.append(put(str(tmp_path / "m.parquet"), buf.getvalue()))
    lines = "\n".join(json.dumps(o) for o in _as_objects(PARITY_ROWS)) + "\n"
    urls.append(put(str(tmp_path / "m.jsonl"), lines.encode()))

    results = [validate_manifest(u, CATALOG, kind="edit", check_files=True) for u in urls]
    first = results[0]
    assert [r.id for r in first.rows] == ["b", "c"]
    assert [(r.id, r.reason_code) for r in first.rejected] == [
        ("a", "duplicate_id"), ("../d", "path_traversal"), ("e", "missing_ref"),
        ("f", "unsupported_scheme"), ("g", "missing_file"), ("a", "duplicate_id")]
    for res in results[1:]:
        assert res.rows == first.rows, res.manifest_url
        assert [(r.row, r.id, r.reason_code, r.message) for r in res.rejected] == [
            (r.row, r.id, r.reason_code, r.message) for r in first.rejected], res.manifest_url


def test_parquet_native_types(tmp_path):
    """Integer ids and params as a struct column (absent keys come back as null)."""
    table = pa.table({
        "id": pa.array([1, 2], pa.int64()),
        "image": ["a.png", "a.png"],
        "mask": ["m.png", "m.png"],
        "op": ["inpaint", "inpaint"],
        "params": pa.array([{"k": 2, "seed": None}, {"k": None, "seed": 5}]),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    url = put(str(tmp_path / "m.parquet"), buf.getvalue())
    result = validate_manifest(url, CATALOG, kind="edit")
    assert [(r.id, r.params) for r in result.rows] == [("1", {"k": 2}), ("2", {"seed": 5})]


def test_jsonl_specifics(tmp_path):
    lines = [
        json.dumps({"id": "a", "image": "x.png", "note": "kept"}),
        "not json",
        "[1, 2]",
        json.dumps({"id": "nul\x00", "image": "x.png"}),
        json.dumps({"id": "b", "image": 7}),
        json.dumps({"id": True, "image": "x.png"}),
        "",
    ]
    url = put(str(tmp_path / "m.ndjson"), "\n".join(lines).encode())
    result = validate_manifest(url, CATALOG)
    assert [(r.id, r.extra) for r in result.rows] == [("a", {"note": "kept"})]
    assert [(r.row, r.reason_code) for r in result.rejected] == [
        (2, "malformed_row"), (3, "malformed_row"), (4, "path_traversal"), (5, "malformed_row"),
        (6, "malformed_row")]


def test_whole_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="extension"):
        validate_manifest(put(str(tmp_path / "m.txt"), b"id,image\n"), CATALOG)
    with pytest.raises(FileNotFoundError):
        validate_manifest(str(tmp_path / "absent.csv"), CATALOG)
    with pytest.raises(ManifestError, match="Parquet"):
        validate_manifest(put(str(tmp_path / "bad.parquet"), b"PAR1 nope"), CATALOG)
    with pytest.raises(ManifestError, match="duplicate column"):
        validate_manifest(put(str(tmp_path / "dup.csv"), b"id,image,ID\na,b,c\n"), CATALOG)
    empty = validate_manifest(put(str(tmp_path / "empty.csv"), b""), CATALOG)
    assert empty.n_total == 0 and empty.ok


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest_url, value, expected", [
    ("s3://b/jobs/m.csv", "img/a.png", "s3://b/jobs/img/a.png"),
    ("s3://b/jobs/m.csv", "../x/./a.png", "s3://b/x/a.png"),
    ("s3://b/m.csv", "a.png", "s3://b/a.png"),
    ("s3://b/jobs/m.csv", "gs://other/a.png", "gs://other/a.png"),
    ("file:///data/jobs/m.csv", "a.png", "file:///data/jobs/a.png"),
    ("https://host/jobs/m.csv?sig=1", "img/a.png", "https://host/jobs/img/a.png"),
    ("memory://root/m.jsonl", "a.png", "memory://root/a.png"),
    ("/data/jobs/m.csv", "../a.png", "/data/a.png"),
    ("/data/jobs/m.csv", "/abs/a.png", "/abs/a.png"),
    ("/data/jobs/m.csv", "img//a.png", "/data/jobs/img/a.png"),
])
def test_relative_paths_resolve_against_the_manifest(manifest_url, value, expected):
    m = Manifest.from_bytes(csv_bytes([["a", value]], ["id", "image"]), manifest_url, "csv")
    result = validate_manifest(m, CATALOG, kind="reconstruct")
    assert [r.image for r in result.rows] == [expected]


def test_relative_manifest_path_and_storage_root(storage_root, tmp_path, monkeypatch):
    put(storage.join(storage_root, "set1/imgs/a.png"), photo())
    url = put(storage.join(storage_root, "set1/m.jsonl"),
              json.dumps({"id": "a", "image": "imgs/a.png"}).encode())
    result = validate_manifest(url, CATALOG, check_files=True)
    assert [r.image for r in result.rows] == [storage.join(storage_root, "set1/imgs/a.png")]
    if not storage.is_remote(storage_root):  # a relative manifest path is made absolute
        monkeypatch.chdir(storage_root)
        rel = validate_manifest("set1/m.jsonl", CATALOG, check_files=True)
        assert rel.rows[0].image == os.path.join(storage_root, "set1/imgs/a.png")


# ------------------------------------------------------------------------------------------------
# Schema file, CLI, speed
# ------------------------------------------------------------------------------------------------


def test_schema_file_matches_the_ops_table():
    on_disk = json.loads((REPO / "manifests" / "schema.json").read_text())
    assert on_disk == row_json_schema(CATALOG), "regenerate: python -m i2score.runs.ops > manifests/schema.json"
    assert set(on_disk["properties"]["op"]["enum"]) == set(OPS)
    readme = (REPO / "manifests" / "README.md").read_text()
    for code in Reason:
        assert f"`{code.value}`" in readme, code
    for op in OPS:
        assert f"`{op}`" in readme, op
    jsonschema = pytest.importorskip("jsonschema")
    v = jsonschema.Draft202012Validator(on_disk)
    assert v.is_valid({"id": "a", "image": "x.png", "op": "inpaint", "mask": "m.png", "params": {"k": 2}})
    assert not v.is_valid({"id": "a", "image": "x.png", "op": "inpaint", "mask": "m.png", "params": {"k": 99}})
    assert not v.is_valid({"id": "a", "image": "x.png", "op": "inpaint"})
    assert not v.is_valid({"id": "../a", "image": "x.png"})
    assert not v.is_valid({"id": "a", "image": "ftp://h/x.png"})


def test_cli_validate(tmp_path):
    import typer
    from typer.testing import CliRunner

    from i2score.cli.validate import validate_cmd

    app = typer.Typer()
    app.command("validate")(validate_cmd)
    app.command("other")(lambda: None)  # keep "validate" a sub-command, as in i2s
    put(str(tmp_path / "a.png"), photo())
    good = put(str(tmp_path / "good.csv"), csv_bytes([["a", "a.png"]], ["id", "image"]))
    bad = put(str(tmp_path / "bad.csv"), csv_bytes([["a", "a.png"], ["../b", "a.png"], ["c", "no.png"]],
                                                   ["id", "image"]))
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", good])
    assert ok.exit_code == 0, ok.output
    assert "1 valid" in ok.output
    res = runner.invoke(app, ["validate", bad, "--kind", "reconstruct", "--resolution", "32"])
    assert res.exit_code == 1, res.output
    assert "path_traversal" in res.output and "missing_file" in res.output
    res = runner.invoke(app, ["validate", bad, "--no-check-files"])
    assert res.exit_code == 1 and "missing_file" not in res.output
    assert runner.invoke(app, ["validate", str(tmp_path / "none.csv")]).exit_code == 2


def test_validation_is_fast(tmp_path):
    from i2score.bench.manifest import bench_validate

    out = bench_validate(100, str(tmp_path))
    assert out["rows"] == 100 and out["rejected"] == 2 and out["valid"] == 98  # a duplicate: both rows
    assert out["wall_s"] < 1.0, out
    t0 = time.perf_counter()
    out = bench_validate(5000, str(tmp_path))
    assert time.perf_counter() - t0 < 5.0 and out["rows_per_s"] > 2000, out
    assert 45 <= out["rejected"] <= 70


@pytest.mark.parametrize("name, kind, rows", [("reconstruct.csv", "reconstruct", 19), ("inpaint.csv", "inpaint", 32),
                                              ("edit.csv", "edit", 12)])
def test_cli_validate_infers_the_kind_of_the_demo_manifests(name, kind, rows):
    import typer
    from typer.testing import CliRunner

    from i2score.cli.validate import validate_cmd

    app = typer.Typer()
    app.command("validate")(validate_cmd)
    app.command("other")(lambda: None)  # keep "validate" a sub-command, as in i2s
    res = CliRunner().invoke(app, ["validate", str(REPO / "manifests" / "demo" / name), "--no-check-files"],
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    assert f"kind {kind} (from the columns" in res.output
    assert f"{rows} rows, {rows} valid, 0 rejected" in res.output
    # --kind still decides when given: the edit rows are not reconstructions.
    forced = CliRunner().invoke(app, ["validate", str(REPO / "manifests" / "demo" / name), "--no-check-files",
                                      "--kind", "reconstruct"], terminal_width=200)
    assert "from the columns" not in forced.output
    assert (forced.exit_code == 0) == (kind == "reconstruct"), forced.output


def test_infer_kind_from_jsonl_and_parquet_columns(tmp_path):
    from i2score.runs.ops import infer_kind

    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "image": "a.png", "op": "morph", "ref": "b.png"}) + "\n")
    assert infer_kind(Manifest.read(str(jsonl)).columns) == "edit"
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "image": ["a.png"], "mask": ["m.png"]}), parquet)
    assert infer_kind(Manifest.read(str(parquet)).columns) == "inpaint"
    pq.write_table(pa.table({"ID": ["a"], "Image": ["a.png"]}), parquet)
    assert infer_kind(Manifest.read(str(parquet)).columns) == "reconstruct"
    # An op column wins over a mask column: an edit manifest names masks per op.
    assert infer_kind([" Op ", "mask", "id", "image"]) == "edit"
