"""A report's links from a UI on an S3 root: presigned URLs (SeaweedFS) that a plain HTTP client
opens, put into the Prefect report artifact's Markdown unredacted (the rest of it redacted)."""

from __future__ import annotations

import re
import urllib.parse
import urllib.request

import fsspec

from i2score.data import storage


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
