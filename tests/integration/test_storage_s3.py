"""Storage on object stores: the local round trips again on a real S3 server (SeaweedFS), and
retries against fault-injected S3 (moto behind a small proxy)."""

from __future__ import annotations

import collections
import errno
import http.client
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fsspec
import pytest

from i2score.data import retries, storage
from tests.unit.test_storage import (
    KEY_ID,
    SECRET,
    TOKEN,
    StorageFailure,
    _assert_clean,
    _ours,
    free_port,
    test_read_many_reports_missing_key,
    test_round_trip,
)

__all__ = ["test_read_many_reports_missing_key", "test_round_trip"]


@pytest.fixture()
def storage_root(s3_root):
    """The round trips of the unit tests, on SeaweedFS."""
    return s3_root


def test_plain_fsspec_reaches_seaweedfs_through_env(s3_server, s3_root):
    """The session env (FSSPEC_S3_*) is enough for fsspec/s3fs; explicit options agree."""
    url = storage.join(s3_root, "env.txt")
    storage.write_bytes(url, b"via env")
    with fsspec.open(url, "rb") as f:
        assert f.read() == b"via env"
    assert storage.read_bytes(url, **s3_server.storage_options) == b"via env"
    assert storage.storage_options_for(url)["endpoint_url"] == s3_server.endpoint_url


class FaultProxy:
    """HTTP proxy in front of a moto server. ``fail(method, path, status, code, times)`` makes
    the next ``times`` matching requests fail (``status`` 0: hang ``delay`` seconds first, then
    forward); ``hits`` counts requests per (method, path)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hits: collections.Counter[tuple[str, str]] = collections.Counter()
        self.rules: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` (botocore PUTs)

            def log_message(self, *args):  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                with proxy.lock:
                    proxy.hits[(self.command, path)] += 1
                    rule = next(
                        (
                            r
                            for r in proxy.rules
                            if r["times"] > 0 and r["method"] == self.command and r["path"] == path
                        ),
                        None,
                    )
                    if rule:
                        rule["times"] -= 1
                if rule and rule["delay"]:
                    time.sleep(rule["delay"])
                if rule and rule["status"]:
                    xml = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{rule['code']}</Code>"
                        f"<Message>injected {rule['code']}</Message></Error>"
                    ).encode()
                    self.send_response(rule["status"])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                skip = ("connection", "transfer-encoding", "content-length", "date", "server")
                try:
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in skip:
                            self.send_header(k, v)
                    self.send_header("Content-Length", resp.getheader("Content-Length") or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except OSError:  # the client gave up (injected delay past its read timeout)
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, method, path, status=503, code="ServiceUnavailable", times=1, delay=0.0):
        with self.lock:
            self.rules.append(
                {"method": method, "path": path, "status": status, "code": code, "times": times, "delay": delay}
            )

    def reset(self) -> None:
        with self.lock:
            self.rules.clear()
            self.hits.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def moto_proxy():
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    proxy = FaultProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()
        moto.stop()


@pytest.fixture()
def faulty_s3(moto_proxy, monkeypatch):
    """(proxy, options, bucket): a fresh bucket on moto reached through the fault proxy, with
    credentials in the options (to prove they never leak) and fast backoff."""
    import s3fs

    monkeypatch.setattr(retries, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setattr(retries, "RETRY_BACKOFF_MAX_S", 0.05)
    opts = {
        "endpoint_url": f"http://127.0.0.1:{moto_proxy.port}",
        "key": KEY_ID,
        "secret": SECRET,
        "token": TOKEN,
        "config_kwargs": {"connect_timeout": 2, "read_timeout": 2},
    }
    bucket = f"b{time.monotonic_ns()}"
    s3fs.S3FileSystem(skip_instance_cache=True, **storage.storage_options_for("s3://x", **opts)).mkdir(bucket)
    moto_proxy.reset()
    return moto_proxy, opts, bucket


def test_read_and_write_retry_transient_5xx(faulty_s3, caplog):
    proxy, opts, bucket = faulty_s3
    url = f"s3://{bucket}/obj.bin"
    proxy.fail("PUT", f"/{bucket}/obj.bin", status=500, code="InternalError", times=2)
    with caplog.at_level(logging.WARNING, logger="i2score.data.storage"):
        storage.write_bytes(url, b"payload", **opts)
    assert proxy.hits[("PUT", f"/{bucket}/obj.bin")] == 3
    assert len(_ours(caplog)) == 2 and "attempt 1/5" in _ours(caplog)[0].getMessage()

    proxy.fail("GET", f"/{bucket}/obj.bin", status=503, code="ServiceUnavailable", times=2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="i2score.data.storage"):
        assert storage.read_bytes(url, **opts) == b"payload"
    assert proxy.hits[("GET", f"/{bucket}/obj.bin")] == 3
    assert [r.levelno for r in _ours(caplog)] == [logging.WARNING] * 2
    assert url in caplog.text
    _assert_clean(caplog.text)


def test_slowdown_and_timeout_are_retried(faulty_s3):
    proxy, opts, bucket = faulty_s3
    url = f"s3://{bucket}/slow.bin"
    storage.write_bytes(url, b"slow", **opts)
    proxy.fail("GET", f"/{bucket}/slow.bin", status=503, code="SlowDown", times=3)
    assert storage.read_bytes(url, **opts) == b"slow"
    proxy.fail("GET", f"/{bucket}/slow.bin", status=0, delay=1.0, times=1)
    fast_timeout = {**opts, "config_kwargs": {"read_timeout": 0.3}}
    assert storage.read_bytes(url, **fast_timeout) == b"slow"
    assert proxy.hits[("GET", f"/{bucket}/slow.bin")] == 6


def test_not_found_and_forbidden_are_not_retried(faulty_s3, caplog):
    proxy, opts, bucket = faulty_s3
    with caplog.at_level(logging.WARNING, logger="i2score.data.storage"), pytest.raises(FileNotFoundError) as info:
        storage.read_bytes(f"s3://{bucket}/missing.bin", **opts)
    assert proxy.hits[("GET", f"/{bucket}/missing.bin")] == 1
    assert isinstance(info.value, StorageFailure)
    assert info.value.attempts == 1 and not _ours(caplog)
    _assert_clean(str(info.value))

    storage.write_bytes(f"s3://{bucket}/locked.bin", b"x", **opts)
    proxy.fail("GET", f"/{bucket}/locked.bin", status=403, code="AccessDenied", times=5)
    with pytest.raises(PermissionError):
        storage.read_bytes(f"s3://{bucket}/locked.bin", **opts)
    assert proxy.hits[("GET", f"/{bucket}/locked.bin")] == 1


def test_gives_up_after_attempts_with_clean_error(faulty_s3, caplog):
    proxy, opts, bucket = faulty_s3
    url = f"s3://{bucket}/down.bin"
    storage.write_bytes(url, b"down", **opts)
    proxy.fail("GET", f"/{bucket}/down.bin", status=503, code="ServiceUnavailable", times=99)
    with caplog.at_level(logging.WARNING, logger="i2score.data.storage"), pytest.raises(OSError) as info:
        storage.read_bytes(url, attempts=3, **opts)
    assert proxy.hits[("GET", f"/{bucket}/down.bin")] == 3
    exc = info.value
    assert isinstance(exc, StorageFailure)
    assert exc.attempts == 3 and exc.transient and exc.errno == errno.EBUSY
    assert exc.__cause__ is None and exc.__suppress_context__
    assert "after 3 attempts" in str(exc) and url in str(exc)
    assert len(_ours(caplog)) == 2
    _assert_clean(str(exc) + repr(exc) + caplog.text)

    got = storage.read_many([url], attempts=2, **opts)  # errors come back, not raised
    err = got[url]
    assert isinstance(err, OSError) and isinstance(err, StorageFailure) and err.attempts == 2


def test_env_options_reach_the_server_at_run_time(faulty_s3, monkeypatch):
    """FSSPEC_S3_* set after import, and I2S_STORAGE_OPTIONS, are honoured without kwargs."""
    proxy, opts, bucket = faulty_s3
    url = f"s3://{bucket}/env.bin"
    storage.write_bytes(url, b"env", **opts)
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", opts["endpoint_url"])
    monkeypatch.setenv("FSSPEC_S3_KEY", KEY_ID)
    monkeypatch.setenv("FSSPEC_S3_SECRET", SECRET)
    assert storage.read_bytes(url) == b"env"
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://127.0.0.1:1")  # wrong...
    monkeypatch.setenv("I2S_STORAGE_OPTIONS", json.dumps({"s3": {"endpoint_url": opts["endpoint_url"]}}))
    assert storage.read_bytes(url) == b"env"  # ...but I2S_STORAGE_OPTIONS wins
    monkeypatch.setenv(storage.ENV_ATTEMPTS, "2")
    proxy.fail("GET", f"/{bucket}/env.bin", times=5)
    with pytest.raises(OSError) as info:
        storage.read_bytes(url)
    assert isinstance(info.value, StorageFailure)
    assert info.value.attempts == 2
