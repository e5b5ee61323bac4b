"""Redaction at the writers (records, tables, NPZ metadata, log records) and the worker's way back
to input URLs that carry credentials (:mod:`i2score.runs.secret_urls`)."""

from __future__ import annotations

import hashlib
import io
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from i2score.data import storage
from i2score.data.latents import Latents
from i2score.data.manifest import validate_manifest
from i2score.data.redact import install_log_redaction, redact_table, redact_tree, remember_url_secrets
from i2score.runs import secret_urls
from i2score.runs.ops import CATALOG
from i2score.runs.plan import spec_row
from i2score.runs.records import write_json

TOKEN = "tok/Unit-7Hq2+Zr9"
SIGNED = f"s3://bucket/in/a.png?X-Amz-Signature=sig-Unit-4Kd8Lm2&token={TOKEN}"


def test_redact_tree_changes_strings_not_structure():
    key = "ab" * 32
    rec = {"key": key, "url": "https://u:hunter2-Pw-99@h/x.png", "n": 3, "items": [{"key": key}]}
    out = redact_tree(rec)
    assert out == {"key": key, "url": "https://***@h/x.png", "n": 3, "items": [{"key": key}]}


def test_url_secrets_are_removed_in_every_spelling():
    remember_url_secrets("https://h/x.png?X-Amz-Credential=AKIAUNITTEST0001%2F2024%2Fs3&token=" + "Zq%2F7-unit-token")
    text = json.dumps({"message": 'failed: token "Zq/7-unit-token" AKIAUNITTEST0001/2024/s3 Zq%2F7-unit-token'})
    assert "Zq" not in storage.redact(text) and "AKIAUNITTEST0001" not in storage.redact(text)


def test_redact_table_reaches_nested_strings_and_keeps_other_columns():
    table = pa.table({"urls": pa.array([["https://u:pw-Table-123@h/a.png"]], pa.list_(pa.string())),
                      "s": pa.array([{"u": "http://h/x?sig=abcdef123"}]),
                      "w": pa.array([[1.5, 2.5]], pa.list_(pa.float32()))})
    out = redact_table(table)
    assert out.schema == table.schema
    assert out.to_pylist() == [{"urls": ["https://***@h/a.png"], "s": {"u": "http://h/x?sig=***"}, "w": [1.5, 2.5]}]
    back = pq.read_table(io.BytesIO(storage.parquet_bytes(table)))
    assert "pw-Table-123" not in str(back.to_pylist())


def test_npz_metadata_and_json_records_are_redacted(tmp_path):
    lat = Latents(torch.zeros(1, 2, 4), [torch.zeros(1, 1, 2, 2)], {"source": "https://u:pw-Npz-4567@h/a.png"})
    with np.load(io.BytesIO(lat.to_npz_bytes())) as z:
        assert json.loads(str(z["meta"])) == {"source": "https://***@h/a.png"}
    write_json(str(tmp_path / "r.json"), {"image": SIGNED})
    assert "sig-Unit-4Kd8Lm2" not in (tmp_path / "r.json").read_text()


def test_log_records_are_redacted_with_their_tracebacks(caplog):
    install_log_redaction()
    caplog.set_level(logging.INFO)
    log = logging.getLogger("i2score.test_redaction")
    try:
        raise OSError("GET https://u:pw-Log-98765@h/x.png failed")
    except OSError:
        log.exception("reading %s", "https://h/y.png?token=tok-Log-1234")
    assert "pw-Log-98765" not in caplog.text and "tok-Log-1234" not in caplog.text
    assert "https://***@h/x.png" in caplog.text and "token=***" in caplog.text
    log.info("plain %s", "s3://bucket/ok.png")  # records without credentials keep their arguments
    assert caplog.records[-1].args == ("s3://bucket/ok.png",)


def _planned_spec(manifest: str, tmp_path) -> dict:
    rows = validate_manifest(manifest, CATALOG, kind="reconstruct").rows
    data = (tmp_path / "m.csv").read_bytes()
    return {"config": {"manifest": storage.redact(manifest)}, "manifest_sha256": hashlib.sha256(data).hexdigest(),
            "items": [{"row": spec_row(r), "key": "k"} for r in rows]}


def test_worker_reads_urls_with_credentials_from_the_manifest(tmp_path):
    manifest, text = str(tmp_path / "m.csv"), f"id,image\na,{SIGNED}\nb,plain.png\n"
    (tmp_path / "m.csv").write_text(text)
    spec = json.loads(json.dumps(redact_tree(_planned_spec(manifest, tmp_path))))  # as written
    assert spec["items"][0]["row"]["secret_urls"] == ["image"] and "secret_urls" not in spec["items"][1]["row"]
    assert TOKEN not in json.dumps(spec)
    (tmp_path / "m.csv").write_text(text.replace("plain.png", "other.png"))
    with pytest.raises(secret_urls.ManifestChangedError, match="changed since the run was planned"):
        secret_urls.restore_urls(spec, manifest)
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ValueError, match="pass its real URL"):  # a presigned manifest's URL, redacted
        secret_urls.restore_urls({**spec, "config": {"manifest": "s3://b/m.csv?token=***"}}, None)
    with pytest.raises(ValueError, match="is not the run's"):
        secret_urls.restore_urls(spec, str(tmp_path / "other.csv"))
    restored = secret_urls.restore_urls(spec, manifest)
    assert [it["row"]["image"] for it in restored["items"]] == [SIGNED, str(tmp_path / "plain.png")]
    assert "secret_urls" not in restored["items"][0]["row"] and TOKEN not in json.dumps(spec)


def test_specs_without_credentials_never_read_the_manifest(tmp_path):
    manifest = str(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("id,image\nb,plain.png\n")
    spec = _planned_spec(manifest, tmp_path)
    (tmp_path / "m.csv").unlink()
    assert secret_urls.restore_urls(spec, None) is spec
