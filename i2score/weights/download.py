"""i2score's one downloader: a URL to a local file, atomically and verified.

:func:`download_file` copies any fsspec URL (``https://``, ``s3://``, ``memory://``,
``file://``) to a local path through a hidden temporary file in the destination folder, checks
its sha256 (the full digest, or the prefix that torch hub file names carry) and only then renames
it into place, so a reader never sees a partial or unverified file. Plain ``http(s)`` uses the
standard library when aiohttp (fsspec's HTTP backend) is not installed.

Every transfer is bounded by connect/read timeouts, DNS included, so an offline machine fails
within seconds instead of hanging; the timeout is not a limit on the whole transfer, so a slow
but live download of a large file still completes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ChecksumMismatchError", "DownloadError", "download_file", "sha256_file"]

_CHUNK = 1 << 20
_SHA256_OR_PREFIX = re.compile(r"^[0-9a-f]{8,64}$")


class ChecksumMismatchError(RuntimeError):
    """A file's sha256 differs from the expected one (``expected`` may be a prefix)."""

    def __init__(self, path: Path | str, expected: str, actual: str, note: str = "") -> None:
        msg = f"sha256 mismatch for {path}: expected {expected}, got {actual}"
        super().__init__(f"{msg}; {note}" if note else msg)
        self.path = Path(path)
        self.expected = expected
        self.actual = actual


class DownloadError(OSError):
    """A transfer failed with an error its transport does not report as an ``OSError``
    (an HTTP status or a broken body from aiohttp, a missing fsspec backend, ...); the
    original is the ``__cause__``."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so checkpoints never sit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: str | os.PathLike[str], *, sha256: str | None = None, timeout: float = 30.0,
                  storage_options: Mapping[str, Any] | None = None) -> Path:
    """Copy ``url`` to ``dest`` (parent folders are created) and return ``dest`` as a ``Path``.

    The data goes to a uniquely named hidden file next to ``dest`` (so concurrent downloads do
    not clobber each other) and is renamed to ``dest`` only once complete and verified; on any
    failure nothing is left behind and an existing ``dest`` is untouched.

    Args:
        url: any fsspec URL.
        dest: local file to create or replace.
        sha256: expected hex digest: all 64 digits, or a prefix of at least 8 (as in torch hub
            file names, ``vgg16-397923af.pth``). ``None`` = do not verify.
        timeout: seconds allowed for DNS, for connecting and for each read.
        storage_options: extra fsspec options for the remote filesystem (e.g.
            ``{"endpoint_url": ...}`` for S3-compatible stores).

    Raises:
        ChecksumMismatchError: the downloaded file's sha256 does not match (it was discarded).
        OSError: the transfer failed (unreachable, timed out, HTTP error, short body, missing
            file); other transport errors come wrapped in :class:`DownloadError`.
        ValueError: ``sha256`` is not 8 to 64 hex digits.
    """
    expected = None if sha256 is None else sha256.strip().lower()
    if expected is not None and not _SHA256_OR_PREFIX.match(expected):
        raise ValueError(f"sha256 must be 8 to 64 hex digits, got {sha256!r}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique temp name in the same directory: os.replace is then atomic, concurrent
    # downloads do not clobber each other, and a crash leaves nothing that looks finished.
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        try:
            _transfer(url, tmp, timeout=timeout, storage_options=storage_options)
        except OSError:
            raise
        except Exception as exc:  # one failure type for callers; the cause stays chained
            raise DownloadError(f"{type(exc).__name__}: {exc}") from exc
        if expected is not None:
            actual = sha256_file(tmp)
            if not actual.startswith(expected):
                raise ChecksumMismatchError(url, expected, actual, "the downloaded file was discarded")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------------------------
# Transports


def _aiohttp_available() -> bool:
    try:
        import aiohttp  # noqa: F401 - imported only to see whether it is installed
    except ImportError:
        return False
    return True


def _transfer(url: str, dest: Path, *, timeout: float, storage_options: Mapping[str, Any] | None) -> None:
    protocol = urllib.parse.urlsplit(url).scheme.lower()
    # fsspec's HTTP filesystem is built on aiohttp, which is not a dependency of i2score; the
    # standard library covers plain http(s) with the same timeout guarantees.
    if protocol in ("http", "https") and not storage_options and not _aiohttp_available():
        _transfer_urllib(url, dest, timeout=timeout)
    else:
        _transfer_fsspec(url, dest, protocol, timeout=timeout, storage_options=storage_options)


def _transfer_fsspec(url: str, dest: Path, protocol: str, *, timeout: float,
                     storage_options: Mapping[str, Any] | None) -> None:
    import fsspec

    options: dict[str, Any] = dict(storage_options or {})
    if protocol in ("http", "https"):
        import aiohttp

        client_kwargs = dict(options.get("client_kwargs") or {})
        # aiohttp's default has no socket-level limits, only a 5-minute total; `connect`
        # also covers DNS, `sock_read` each read, and no total so large files can finish.
        client_kwargs.setdefault("timeout", aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout))
        options["client_kwargs"] = client_kwargs
    elif protocol in ("s3", "s3a"):
        config_kwargs = dict(options.get("config_kwargs") or {})
        config_kwargs.setdefault("connect_timeout", timeout)
        config_kwargs.setdefault("read_timeout", timeout)
        options["config_kwargs"] = config_kwargs
    fs, path = fsspec.core.url_to_fs(url, **options)
    fs.get_file(path, str(dest))
    if not dest.is_file():  # some filesystems silently "get" a directory
        raise FileNotFoundError(f"{url} is not a file")


def _transfer_urllib(url: str, dest: Path, *, timeout: float) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and not _uses_proxy(parts.scheme, parts.hostname):
        _resolve_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout)
    request = urllib.request.Request(url, headers={"User-Agent": "i2score"})
    # urlopen's timeout applies to the connect and to every socket read.
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)
        expected_len = response.headers.get("Content-Length")
    # http.client returns a short body silently when the peer closes early.
    if expected_len is not None and expected_len.isdigit():
        got = dest.stat().st_size
        if got != int(expected_len):
            raise OSError(f"truncated download: got {got} of {expected_len} bytes")


def _uses_proxy(scheme: str, host: str) -> bool:
    # Behind a proxy the proxy resolves the name; a local lookup may legitimately fail.
    return scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)


def _resolve_host(host: str, port: int, timeout: float) -> None:
    """Resolve ``host`` within ``timeout`` seconds.

    urlopen's timeout does not cover getaddrinfo, which can block for a long time when the
    resolver is unreachable. The lookup runs in a daemon thread so that a stuck resolver can
    be abandoned without keeping the interpreter alive.
    """
    outcome: dict[str, BaseException] = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=lookup, name="i2score-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"DNS lookup of {host!r} did not finish within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
