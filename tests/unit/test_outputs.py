"""Run outputs: images, manifest.parquet and errors.parquet on local and S3 storage."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

import i2score
from i2score.data import storage
from i2score.data.images import decode_image, to_tensor
from i2score.data.manifest import Manifest, Rejection, validate_manifest
from i2score.runs.ops import CATALOG
from i2score.runs.outputs import (
    ERRORS_SCHEMA,
    OUTPUT_SCHEMA,
    OutputRecord,
    RunOutputs,
    code_version,
    new_run_id,
    read_table,
)

SECRET = "s3cr3t-Pa55word-xyz"
SIGNATURE = "f00dfeedf00dfeedf00dfeed"


def test_round_trip(storage_root):
    run_id = new_run_id()
    out = RunOutputs(storage_root, run_id)
    assert out.run_url == storage.join(storage_root, "runs", run_id)
    image = torch.rand(3, 16, 16) * 2 - 1
    url = out.write_image("img-1", image, suffix="_k0")
    assert url == storage.join(storage_root, "runs", run_id, "outputs", "img-1_k0.png")
    back = to_tensor(decode_image(storage.read_bytes(url)))
    assert (back - image).abs().max() <= 1 / 127.5 + 1e-6

    created = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    records: list[OutputRecord | dict[str, Any]] = [
        OutputRecord(id="img-1_k0", op="inpaint", output_url=url, source_ids=["img-1"],
                     source_urls=[storage.join(storage_root, "in/img-1.png")], cache_keys=["ab" * 32],
                     params={"seed": 0, "k": 1}, generator_id="demo-64", generator_sha256="cd" * 32,
                     psnr=31.5, lpips=0.12, created_at=created),
        {"id": "img-2", "op": "reconstruct", "source_ids": ["img-2"], "metrics": {"ssim": 0.9}},
    ]
    murl = out.write_manifest(records)
    assert murl == storage.join(out.run_url, "manifest.parquet")
    table = read_table(murl)
    assert table.schema.equals(OUTPUT_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert rows[0]["params"] == '{"k":1,"seed":0}'
    assert rows[0]["psnr"] == 31.5 and rows[0]["ssim"] is None and rows[1]["ssim"] == 0.9
    assert rows[0]["created_at"] == created and rows[1]["created_at"].tzinfo is not None
    assert rows[0]["code_version"].startswith(i2score.__version__)
    assert rows[1]["params"] is None and rows[1]["cache_keys"] == []
    assert rows[0]["output_url"] == url and rows[0]["source_ids"] == ["img-1"]

    rejections = [Rejection(3, "../x", "path_traversal", "id '../x' would escape", "id"),
                  Rejection(4, None, "empty_id", "id is empty", "id")]
    eurl = out.write_errors(rejections, source=storage.join(storage_root, "m.csv"))
    errors = read_table(eurl)
    assert errors.schema.equals(ERRORS_SCHEMA, check_metadata=False)
    assert errors.to_pylist()[0] == {"id": "../x", "row": 3, "reason_code": "path_traversal",
                                     "message": "id '../x' would escape", "field": "id", "url": None,
                                     "source": storage.join(storage_root, "m.csv")}
    listed = storage.list_files(out.run_url)
    assert sorted(listed) == sorted([url, murl, eurl])  # nothing half-written left behind


def test_validation_errors_round_trip(storage_root):
    data = b"id,image\na,a.png\n../b,a.png\nc,ftp://h/x.png\n"
    m = Manifest.from_bytes(data, storage.join(storage_root, "m.csv"))
    result = validate_manifest(m, CATALOG, kind="reconstruct")
    out = RunOutputs(storage_root, "run-1")
    table = read_table(out.write_errors(result.rejected, source=result.manifest_url))
    assert table.equals(result.to_arrow())
    assert table.column("reason_code").to_pylist() == ["path_traversal", "unsupported_scheme"]
    out.write_manifest([])  # an empty run still gets a typed manifest
    assert read_table(out.manifest_url).schema.equals(OUTPUT_SCHEMA, check_metadata=False)


def test_no_credentials_written(tmp_path):
    out = RunOutputs(str(tmp_path), "run-creds")
    leaky = f"https://user:{SECRET}@example.com/x.png?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=AKIAABCDEFGHIJKLMNOP"
    out.write_manifest([OutputRecord(id="a", op="reconstruct", output_url=leaky, source_urls=[leaky],
                                     generator_id=f"s3://AKIAABCDEFGHIJKLMNOP:{SECRET}@bucket/g.pt")])
    out.write_errors([Rejection(1, "a", "unreadable_file", f"cannot read {leaky}", "image", leaky)],
                     source=leaky)
    for url in (out.manifest_url, out.errors_url):
        raw = storage.read_bytes(url)
        table = pq.read_table(io.BytesIO(raw))
        text = str(table.to_pylist())
        for secret in (SECRET, SIGNATURE, "AKIAABCDEFGHIJKLMNOP"):
            assert secret not in text and secret.encode() not in raw, (url, secret)
    assert "example.com/x.png" in str(read_table(out.manifest_url).to_pylist())


def test_ids_cannot_escape_the_run(tmp_path):
    with pytest.raises(ValueError):
        RunOutputs(str(tmp_path), "../other")
    out = RunOutputs(str(tmp_path), "r1")
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            out.image_url(bad)
    with pytest.raises(ValueError):
        out.image_url("ok", suffix="/../../x")
    with pytest.raises(ValueError):
        out.manifest_table([{"id": "a/b", "op": "reconstruct"}])
    with pytest.raises(ValueError, match="unknown"):
        out.manifest_table([{"id": "a", "op": "reconstruct", "psnr_db": 3.0}])


def test_code_version_and_run_ids():
    assert code_version().startswith(i2score.__version__)
    a, b = new_run_id(), new_run_id()
    assert a != b and len(a) == len(b) == 25
