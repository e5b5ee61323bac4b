"""Credentials never reach anything a run writes: a reconstruct flow over inputs (and a manifest)
behind an HTTP server on 127.0.0.1 that checks them, with credential environment variables and a
storage-option secret set; then every file under the root, the run's Prefect artifacts, flow-run
parameters and logs are scanned for the secrets."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import urllib.parse
import zipfile
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from i2score.data import storage

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"

USER, PASSWORD = "alice", "pw-Zx81-hunter2-Qv6"
SIGNATURE = "f3a9c0ffee1234deadbeef5678abcdef"
CREDENTIAL = "AKIAZZTESTCRED42XY/20240101/us-east-1/s3/aws4_request"
TOKEN = "tok-9Qw7-Lm3x-Rt5y"
ENV_SECRET = "env-secret-Hq2W9xLp4"
FSSPEC_SECRET = "fsspec-secret-Vb7Nc3Kd"
OPTION_SECRET = "opt-secret-Jm5Tz8Rq"
#: What must appear nowhere (the credential also in its percent-encoded spelling).
SECRETS = (PASSWORD, SIGNATURE, CREDENTIAL, urllib.parse.quote(CREDENTIAL, safe=""), "AKIAZZTESTCRED42XY", TOKEN,
           ENV_SECRET, FSSPEC_SECRET, OPTION_SECRET)
#: The header the storage option sets (the server requires it on every request).
OPTION_HEADER = "api_key"


class _CredentialServer(ThreadingHTTPServer):
    served: Path
    fetched: Counter[str]


class _Handler(BaseHTTPRequestHandler):
    """Serves ``served/<path>``: ``/basic/...`` only with basic auth ``USER:PASSWORD``,
    ``/signed/...`` only with the signed query; every request needs the option header."""

    server: _CredentialServer

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        allowed = self.headers.get(OPTION_HEADER) == OPTION_SECRET and (
            (parts.path.startswith("/basic/") and self.headers.get("Authorization") == basic)
            or (parts.path.startswith("/signed/") and query == {"X-Amz-Signature": SIGNATURE,
                                                               "X-Amz-Credential": CREDENTIAL, "token": TOKEN}))
        if not allowed:
            self.send_error(403)
            return
        file = self.server.served / parts.path.lstrip("/")
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        self.server.fetched[parts.path] += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # the default writes every request line (with its query) to stderr


@pytest.fixture()
def credential_server(tmp_path: Path) -> Iterator[_CredentialServer]:
    served = tmp_path / "served"
    for folder in ("basic", "signed"):
        (served / folder).mkdir(parents=True)
    server = _CredentialServer(("127.0.0.1", 0), _Handler)
    server.served, server.fetched = served, Counter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def loopback_url(server: _CredentialServer, path: str, *, basic_auth: bool = False, signed: bool = False) -> str:
    """The URL of ``path`` on the test server (127.0.0.1), with its credentials. Every URL of
    these tests is made here (where an input policy for loopback addresses would be allowed)."""
    host, port = str(server.server_address[0]), server.server_address[1]
    userinfo = f"{USER}:{PASSWORD}@" if basic_auth else ""
    query = "?" + urllib.parse.urlencode({"X-Amz-Signature": SIGNATURE, "X-Amz-Credential": CREDENTIAL,
                                          "token": TOKEN}) if signed else ""
    return f"http://{userinfo}{host}:{port}/{path.lstrip('/')}{query}"


def _texts_of(path: Path) -> list[str]:
    """What a file says: its bytes, and for Parquet and NPZ their decoded contents too
    (compressed columns and archive members hide text from a plain byte scan)."""
    data = path.read_bytes()
    texts = [data.decode("latin-1")]
    if path.suffix == ".parquet":
        pf = pq.ParquetFile(io.BytesIO(data))
        texts += [json.dumps(pf.read().to_pylist(), default=str), str(pf.schema_arrow.metadata)]
    elif path.suffix == ".npz":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            texts += [z.read(name).decode("latin-1") for name in z.namelist()]
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            texts += [str(arrays[k]) for k in arrays.files if arrays[k].dtype.kind == "U"]
    return texts


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.usefixtures("prefect_api")
def test_inputs_with_credentials_run_and_no_secret_is_written(credential_server, tmp_path, monkeypatch, caplog):
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from pydantic import SecretStr

    from i2score.flows.reconstruct import reconstruct

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("FSSPEC_S3_SECRET", FSSPEC_SECRET)
    storage.set_storage_options({"http": {"client_kwargs": {"headers": {OPTION_HEADER: OPTION_SECRET}}}})
    served = credential_server.served
    for i, folder in ((0, "basic"), (1, "signed")):
        (served / folder / f"p{i}.png").write_bytes((DEMO / "images" / f"heldout-0{i}.png").read_bytes())
    local = tmp_path / "p2.png"
    local.write_bytes((DEMO / "images" / "heldout-02.png").read_bytes())
    inputs = {"p0": loopback_url(credential_server, "basic/p0.png", basic_auth=True),
              "p1": loopback_url(credential_server, "signed/p1.png", signed=True),
              "p2": str(local),
              # Rejected by planning (404): its error message names the URL with the password.
              "gone": loopback_url(credential_server, "basic/gone.png", basic_auth=True)}
    (served / "signed" / "manifest.csv").write_text(
        "id,image\n" + "".join(f"{k},{v}\n" for k, v in inputs.items()))
    manifest = loopback_url(credential_server, "signed/manifest.csv", signed=True)
    root = tmp_path / "store"
    caplog.set_level(logging.INFO)
    try:
        # The test server is a loopback host outside the manifest's folder: allowed by name.
        allowed = [loopback_url(credential_server, "/"), str(tmp_path)]
        result = reconstruct(SecretStr(manifest), root=str(root), schedule="2+2", init="mean", batch_size=2,
                             device="cpu", allowed_inputs=allowed)
    finally:
        storage.set_storage_options(None)

    # The worker read the inputs with their credentials: planning hashed each once, the batches
    # read them again (from the real URLs they got through the manifest, not from their specs).
    summary = json.loads(storage.read_bytes(result["summary"]))
    assert (summary["rows"]["outputs"], summary["rows"]["failed"]) == (3, 1)
    assert credential_server.fetched["/basic/p0.png"] >= 2 and credential_server.fetched["/signed/p1.png"] >= 2
    assert summary["errors_by_reason"] == {"missing_file": 1}

    # No secret in any file under the root; the redacted URLs are there, so a person can tell
    # which input a record is about.
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".npz" for p in files) and any(p.parts[-2] == "plan" for p in files)
    written = {str(p.relative_to(root)): "\n".join(_texts_of(p)) for p in files}
    assert {name: _leaks(text) for name, text in written.items() if _leaks(text)} == {}
    host, port = credential_server.server_address[:2]
    basic_shown = f"http://***@{host}:{port}/basic/p0.png"
    signed_shown = f"http://{host}:{port}/signed/p1.png?X-Amz-Signature=***&X-Amz-Credential=***&token=***"
    plan_files = "".join(t for n, t in written.items() if n.startswith(f"runs/{result['run_id']}/plan"))
    for shown in (basic_shown, signed_shown):
        assert shown in plan_files
        assert shown in written[f"runs/{result['run_id']}/manifest.parquet"]
    assert f"http://{host}:{port}/signed/manifest.csv?X-Amz-Signature=***" in written[
        f"runs/{result['run_id']}/plan.json"]
    assert "http://***@" in written[f"runs/{result['run_id']}/errors.parquet"]

    # Nor in what Prefect stores: artifacts, flow-run parameters (the manifest as a SecretStr),
    # logs (sent to the API by its handler; flushed first) and what this process logged.
    APILogHandler().flush()
    # Raw filter requests: the client's helpers send nulls for unset filters, which this
    # server's request models reject, and an empty task-run filter would drop flow artifacts.
    with get_client(sync_client=True) as client:
        def read(path: str, **body: object) -> list[dict]:
            return client.request("POST", path, json=body).json()  # type: ignore[arg-type]

        artifacts = read("/artifacts/filter", limit=200, offset=0)
        flow_runs = read("/flow_runs/filter", limit=200, offset=0)
        logs = [lg for offset in range(0, 2000, 200) for lg in read("/logs/filter", limit=200, offset=offset)]
    assert any(result["run_id"] in json.dumps(a) for a in artifacts)
    assert [a["key"] for a in artifacts if _leaks(json.dumps(a))] == []
    assert [r["name"] for r in flow_runs if _leaks(json.dumps(r))] == []
    # The top-level flow and the run-batches sub-flow got the manifest; Prefect stored neither.
    assert sum(r["parameters"].get("manifest") == "**********" for r in flow_runs) >= 2
    assert [lg["message"] for lg in logs if _leaks(lg["message"])] == []
    assert any(result["run_id"] in lg["message"] for lg in logs)
    assert _leaks(caplog.text) == []
    assert [r.getMessage() for r in caplog.records if _leaks(r.getMessage())] == []
