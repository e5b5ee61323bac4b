"""A report's links from a web UI: the Prefect report artifact of a flow on a local root (absolute
``file://`` links, the worst outputs and the histograms inline), and on an S3 root presigned URLs
(SeaweedFS) that a plain HTTP client opens, put in unredacted (the rest of the text redacted)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import fsspec
import pytest
from PIL import Image

from i2score.data import storage

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a loopback test server
        return response.read()


def test_public_url_of_an_s3_object_is_a_presigned_url_that_opens(s3_server, s3_root):
    url = storage.join(s3_root, "outputs", "x.png")
    storage.write_bytes(url, b"\x89PNG-not-really")
    signed = storage.public_url(url, expires_s=3600)
    parts = urllib.parse.urlsplit(signed)
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert signed.startswith(s3_server.endpoint_url + "/") and parts.path.endswith("/outputs/x.png")
    assert query["X-Amz-Expires"] == "3600" and query["X-Amz-Signature"]
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"  # SigV4, not botocore's legacy default
    assert _get(signed) == b"\x89PNG-not-really"
    # 7 days by default, the SigV4 limit.
    assert "X-Amz-Expires=604800" in storage.public_url(url)


def test_ui_markdown_of_a_run_on_s3_links_presigned_urls(s3_server, s3_root):
    from i2score.runs.report import ui_report_markdown
    from tests.unit.test_pre_layout import FIXTURE

    run_id = "edit-4560c0ecf354"
    fs = fsspec.filesystem("file")
    for path in fs.find(str(FIXTURE / "root" / "runs" / run_id)):
        rel = path.split(f"/runs/{run_id}/", 1)[1]
        with open(path, "rb") as f:
            storage.write_bytes(storage.join(s3_root, "runs", run_id, rel), f.read())
    md = ui_report_markdown(s3_root, run_id, expires_s=600)
    links = [u for u in re.findall(r"\]\(([^)]+)\)", md) if not u.startswith("data:")]
    assert links and all(u.startswith(s3_server.endpoint_url + "/") and "X-Amz-Signature=" in u for u in links)
    assert "***" not in "".join(links)  # redaction ran before the links went in
    output = next(u for u in links if "/outputs/crossover-default.png?" in u)
    assert _get(output)[:4] == b"\x89PNG"


@pytest.mark.usefixtures("prefect_api")
def test_the_flows_report_artifact_links_file_urls_and_inlines_the_worst(tmp_path):
    from prefect import get_client

    from i2score.flows.reconstruct import reconstruct

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        shutil.copy(DEMO / "images" / f"heldout-0{i}.png", data / f"p{i}.png")
    (data / "m.csv").write_text("id,image\n" + "".join(f"p{i},p{i}.png\n" for i in range(3)) + "gone,gone.png\n")
    root = tmp_path / "store"
    result = reconstruct(str(data / "m.csv"), root=str(root), schedule="2+2", init="mean", device="cpu")
    assert (result["outputs"], result["failed"]) == (3, 1)
    with get_client(sync_client=True) as client:
        # Raw filter: the pinned fastapi rejects the client's null filters (see test_flow_states).
        response = client.request("POST", "/artifacts/filter", json={
            "artifacts": {"key": {"any_": [f"{result['run_id']}-report"]}}, "limit": 5, "offset": 0,
            "sort": "ID_DESC"})
    md = response.json()[0]["data"]
    run = root / "runs" / result["run_id"]
    links = re.findall(r"\]\(([^)]+)\)", md)
    inline = [u for u in links if u.startswith("data:image/png;base64,")]
    assert len(inline) == 2 and all(u.startswith(f"file://{run}/") for u in links if u not in inline)
    assert f"file://{run}/outputs/p0.png" in links and f"file://{run}/report.html" in links
    with Image.open(io.BytesIO(base64.b64decode(inline[0].split(",", 1)[1]))) as strip:
        assert strip.size == (3 * 66 - 2, 64)  # the 3 outputs, worst first
    assert "| 4 | gone | missing_file |" in md
