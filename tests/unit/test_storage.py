"""Storage: round trips on a local folder, bulk reads, retries of connection errors, credential
redaction, options. The same round trips on S3 and the fault-injected retries are in
``tests/integration/test_storage_s3.py``."""

from __future__ import annotations

import errno
import json
import logging
import socket
from typing import Any, Protocol, runtime_checkable

import fsspec
import pytest

from i2score.data import retries, storage

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzzSECRET"
KEY_ID = "AKIAI2SCOREEXAMPLE01"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKENxyz"


@runtime_checkable
class StorageFailure(Protocol):
    """What storage adds to the builtin exceptions it raises (see i2score.data.retries)."""

    url: str
    attempts: int
    transient: bool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# Main path: a local folder (and SeaweedFS in the integration tests)
# ----------------------------------------------------------------------------------------------


def test_round_trip(storage_root):
    a = storage.join(storage_root, "cache", "latents", "ab", "abc.npz")
    b = storage.join(storage_root + "/", "/cache/", "index", "part-1.parquet")
    c = storage.join(storage_root, "runs", "r1", "report.html")
    assert storage.basename(a) == "abc.npz"
    assert not storage.exists(a)
    assert storage.list_files(storage.join(storage_root, "cache")) == []

    storage.write_bytes(a, b"\x00latent" * 100)
    storage.write_bytes(b, b"PAR1")
    storage.write_bytes(c, b"<html/>")
    assert storage.read_bytes(a) == b"\x00latent" * 100
    assert storage.exists(a) and storage.exists(b)

    storage.write_bytes(a, b"second")  # overwrite: one object, new content
    assert storage.read_bytes(a) == b"second"

    assert storage.list_files(storage.join(storage_root, "cache")) == sorted([a, b])
    assert storage.list_files(storage_root, suffix=".npz") == [a]
    assert storage.list_files(storage_root) == sorted([a, b, c])
    assert storage.list_files(storage.join(storage_root, "nothing-here")) == []

    storage.delete(a)
    storage.delete(a)  # idempotent
    assert not storage.exists(a)
    assert storage.list_files(storage_root) == sorted([b, c])
    with pytest.raises(FileNotFoundError) as info:
        storage.read_bytes(a)
    assert isinstance(info.value, StorageFailure)
    assert info.value.attempts == 1 and not info.value.transient
    assert storage.is_remote(storage_root) == storage_root.startswith("s3://")


def test_read_many_reports_missing_key(storage_root):
    urls = [storage.join(storage_root, f"img/{i:03d}.png") for i in range(12)]
    for i, u in enumerate(urls):
        storage.write_bytes(u, f"image {i}".encode())
    missing = storage.join(storage_root, "img/missing.png")
    got = storage.read_many([*urls[:6], missing, *urls[6:], urls[0]], max_workers=4)
    assert list(got) == [*urls[:6], missing, *urls[6:]]  # input order, duplicates once
    assert all(got[u] == f"image {i}".encode() for i, u in enumerate(urls))
    assert isinstance(got[missing], FileNotFoundError)
    assert storage.read_many([]) == {}


def test_local_file_urls_and_hidden_temp_files(tmp_path):
    root = f"file://{tmp_path}"
    url = storage.join(root, "x", "y.bin")
    storage.write_bytes(url, b"abc")
    (tmp_path / "x" / ".z.bin.tmp-0123456789abcdef0123456789abcdef").write_bytes(b"partial")
    assert storage.list_files(root) == [url]
    assert storage.read_bytes(url) == b"abc"
    assert storage.list_files(str(tmp_path)) == [str(tmp_path / "x" / "y.bin")]


# ----------------------------------------------------------------------------------------------
# Retries of connection errors (the fault-injected S3 ones are integration tests)
# ----------------------------------------------------------------------------------------------


def _ours(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "i2score.data.storage"]


def _assert_clean(text: str) -> None:
    for secret in (SECRET, KEY_ID, TOKEN):
        assert secret not in text


def test_connection_errors_are_retried_and_redacted(monkeypatch, caplog):
    """Connection refused is retried; keys in the options and a password in an http URL
    never reach the error or the log."""
    monkeypatch.setattr(retries, "RETRY_BACKOFF_S", 0.01)
    port = free_port()  # nothing listens there
    opts: dict[str, Any] = {"endpoint_url": f"http://127.0.0.1:{port}", "key": KEY_ID, "secret": SECRET,
                            "token": TOKEN}
    with caplog.at_level(logging.WARNING, logger="i2score.data.storage"):
        with pytest.raises(ConnectionError) as info:
            storage.read_bytes("s3://bucket/key.bin", attempts=2, **opts)
        assert isinstance(info.value, StorageFailure)
        assert info.value.attempts == 2 and info.value.transient
        assert len(_ours(caplog)) == 1
        caplog.clear()
        url = f"http://admin:{SECRET}@127.0.0.1:{port}/data/x.bin"
        with pytest.raises(OSError) as http_info:
            storage.read_bytes(url, attempts=2)
        assert isinstance(http_info.value, StorageFailure)
        assert "http://***@127.0.0.1" in str(http_info.value) and http_info.value.url == storage.safe_url(url)
    _assert_clean(str(http_info.value) + caplog.text)
    assert "admin" not in str(http_info.value) + caplog.text


# ----------------------------------------------------------------------------------------------
# Units: redaction, classification, options
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"S3FileSystem(key='{KEY_ID}', secret='{SECRET}', token='{TOKEN}')",
        f"{{'key': '{KEY_ID}', 'secret': '{SECRET}'}}",
        f'{{"aws_secret_access_key": "{SECRET}", "aws_session_token": "{TOKEN}"}}',
        f"AWS_SECRET_ACCESS_KEY={SECRET} AWS_ACCESS_KEY_ID={KEY_ID}",
        f"export FSSPEC_S3_SECRET={SECRET}",
        f"https://user:{SECRET}@example.com/bucket/key",
        (
            f"https://b.s3.amazonaws.com/k?X-Amz-Credential={KEY_ID}%2F20240101&X-Amz-Signature={SECRET}"
            f"&X-Amz-Security-Token={TOKEN}"
        ),
        f"Authorization: AWS4-HMAC-SHA256 Credential={KEY_ID}/20240101/us-east-1/s3, Signature={SECRET}",
        f"password={SECRET}",
    ],
)
def test_redact(text):
    out = storage.redact(text)
    _assert_clean(out)
    assert "***" in out


def test_redact_keeps_ordinary_text_and_urls():
    text = "read s3://bucket/cache/latents/ab/abcdef.npz failed: [Errno 2] No such key: monkey=3"
    assert storage.redact(text) == text
    assert storage.safe_url("s3://bucket/a/b.npz") == "s3://bucket/a/b.npz"
    assert storage.safe_url("https://u:p@h/x?sig=abc&a=1") == "https://***@h/x?sig=***&a=1"


def test_known_secret_values_are_redacted_anywhere():
    storage.storage_options_for("s3://b/k", secret="Zq8-unusual-secret-value", endpoint_url="http://h")
    assert storage.redact("oops Zq8-unusual-secret-value leaked") == "oops *** leaked"


def test_is_transient_classification():
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    def client_error(code, status):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    def wrapped(code, status, err_no=errno.EIO):
        exc = OSError(err_no, "wrapped")
        exc.__cause__ = client_error(code, status)
        return exc

    transient = [
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        client_error("ThrottlingException", 400),
        client_error("Whatever", 502),
        wrapped("ServiceUnavailable", 503, errno.EBUSY),
        wrapped("Unknown", 504),
        OSError(errno.EBUSY, "busy"),
        TimeoutError("t"),
        ConnectionResetError(),
        EndpointConnectionError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
    ]
    permanent = [
        FileNotFoundError("x"),
        PermissionError("x"),
        client_error("NoSuchKey", 404),
        client_error("AccessDenied", 403),
        wrapped("InvalidRequest", 400),
        OSError(errno.EIO, "plain"),
        ValueError("bad"),
    ]
    assert [storage.is_transient(e) for e in transient] == [True] * len(transient)
    assert [storage.is_transient(e) for e in permanent] == [False] * len(permanent)


def test_storage_options_precedence(monkeypatch):
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": "http://conf", "anon": False, "a": 1})
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", "http://fsspec-env")
    monkeypatch.setenv("FSSPEC_S3_B", "2")
    monkeypatch.setenv("I2S_STORAGE_OPTIONS", json.dumps({"s3": {"anon": True, "client_kwargs": {"x": 1}}}))
    storage.set_storage_options({"s3": {"endpoint_url": "http://configured", "c": 3}})
    try:
        opts = storage.storage_options_for("s3://b/k", client_kwargs={"y": 2})
        assert opts["endpoint_url"] == "http://configured"
        assert (opts["anon"], opts["a"], opts["b"], opts["c"]) == (True, 1, 2, 3)
        assert opts["client_kwargs"] == {"x": 1, "y": 2}
        assert opts["config_kwargs"] == {"retries": {"total_max_attempts": 1}}
        assert storage.storage_options_for("s3://b/k", endpoint_url="http://explicit")["endpoint_url"] == (
            "http://explicit"
        )
        assert storage.storage_options_for("/local/path") == {}
    finally:
        storage.set_storage_options(None)
    monkeypatch.setenv("I2S_STORAGE_OPTIONS", "[1]")
    with pytest.raises(ValueError, match="keyed by protocol"):
        storage.storage_options_for("s3://b/k")
