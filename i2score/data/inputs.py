"""Reading the files a manifest names when the manifest may come from someone we don't trust.

A manifest row is a request to read a URL. Without limits it can make a worker read any file on
its disk (``/etc/passwd``, ``/proc/self/environ``, another user's images), call internal
services (``http://127.0.0.1:...``, the cloud metadata service at ``169.254.169.254``), block
forever (a named pipe) or exhaust memory (``/dev/zero``, a 3 GB file). An :class:`InputPolicy`
says what may be read, and :meth:`InputPolicy.read` is the only way inputs are read:

Confinement (``allowed``, a tuple of URL prefixes)
    A URL is inside a prefix when, after normalisation (``..`` and ``.`` segments resolved,
    scheme and host lower-cased, credentials, query and fragment dropped), it equals the prefix
    or continues it after a ``/``. Local paths are compared as absolute paths, and at read time
    again after resolving symlinks on both sides (a symlink inside the folder that points out of
    it is refused); the file is then opened without following a symlink in its last component.
    ``s3://`` alone allows every bucket, ``s3://bucket/`` one bucket. ``None`` confines nothing
    (library calls on trusted data, and the manifest file itself, which the operator names): no
    prefix and no address checks; regular files and the size limit still apply. The flows
    always pass a confining policy (see :func:`policy_for_manifest`).

Network addresses
    Under confinement, an ``http(s)`` URL whose host is, or resolves to, a loopback, private, link-local, reserved,
    multicast or unspecified address is refused unless an allowed prefix names that host
    literally (``--allow http://127.0.0.1:8080/`` for a local test server). Redirects are not
    followed (a public host could redirect into the internal network). The name is resolved
    again by the HTTP client when it connects; a DNS answer that changes between the two
    lookups (DNS rebinding) is not defended against here: deny egress to internal ranges at the
    network level as well.

Regular files only
    Local inputs must be regular files (a FIFO, a device, a socket or a folder is
    ``not_a_regular_file``; local files are opened non-blocking, so a FIFO cannot hang a
    worker); remote objects must be objects, not prefixes.

Size
    ``max_bytes`` (default :data:`DEFAULT_MAX_INPUT_BYTES`) is checked from metadata before
    reading (``fstat``, the object's size, ``Content-Length``) and enforced while reading: at
    most ``max_bytes + 1`` bytes are ever read, so a file that lies about its size (``/proc``
    files report 0) or grows during the read is refused the same way (``file_too_large``).

Each refusal raises an :class:`InputRejected` whose ``reason`` is the manifest reason code.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import posixpath
import socket
import stat
import threading
import urllib.parse
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from i2score.data import storage

__all__ = [
    "DEFAULT_MAX_INPUT_BYTES",
    "FILE_TOO_LARGE",
    "NOT_A_REGULAR_FILE",
    "OUTSIDE_ALLOWED_INPUTS",
    "InputPolicy",
    "InputRejected",
    "manifest_folder",
    "policy_for_manifest",
]

#: Largest input file read (64 MiB): a 64-megapixel PNG (the decoder's pixel limit) of ordinary
#: content compresses below this; raise it with ``--max-input-bytes`` for bigger originals.
DEFAULT_MAX_INPUT_BYTES = 64 * 2**20

OUTSIDE_ALLOWED_INPUTS = "outside_allowed_inputs"
NOT_A_REGULAR_FILE = "not_a_regular_file"
FILE_TOO_LARGE = "file_too_large"

_HTTP = ("http", "https")
_LOCAL = ("", "file", "local")
_READ_CHUNK = 1 << 20


class InputRejected(OSError):
    """An input the policy refuses to read; ``reason`` is the manifest reason code
    (``outside_allowed_inputs``, ``not_a_regular_file`` or ``file_too_large``) and ``url`` the
    URL as it may be shown (credentials removed)."""

    def __init__(self, reason: str, message: str, url: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.url = url


# ----------------------------------------------------------------------------------------------
# URL normalisation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    """A URL reduced to what confinement compares: scheme ('' = local path), host, path."""

    scheme: str
    host: str
    path: str

    def within(self, prefix: _Location) -> bool:
        if self.scheme != prefix.scheme:
            return False
        if prefix.host == "" and prefix.path in ("", "/") and self.scheme != "":
            return True  # "s3://": the whole store
        if self.host != prefix.host:
            return False
        base = prefix.path.rstrip("/")
        return base == "" or self.path == base or self.path.startswith(base + "/")


def _scheme(url: str) -> str:
    if "://" not in url:
        return ""
    return url.split("://", 1)[0].lower()


def _locate(url: str) -> _Location:
    """``url`` normalised: local paths absolute (``file://`` too), remote paths with ``.``/``..``
    resolved, scheme and host lower-cased, credentials, port-less defaults kept as written."""
    scheme = _scheme(url)
    if scheme in _LOCAL:
        path = url.split("://", 1)[1] if scheme else url
        return _Location("", "", os.path.abspath(os.path.expanduser(path)))
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    path = parts.path or "/"
    if scheme not in _HTTP:
        # Object stores: the bucket is the host; keys are compared as POSIX paths.
        rest = url.split("://", 1)[1]
        bucket, _, key = rest.partition("/")
        host, path = bucket.lower(), "/" + key
    norm = posixpath.normpath(path) if path not in ("", "/") else "/"
    if path.endswith("/") and norm != "/":
        norm += "/"
    return _Location(scheme, host, norm.replace("//", "/"))


def manifest_folder(manifest_url: str) -> str:
    """The folder of a manifest as an allowed prefix: the absolute local folder, or the URL up
    to its last ``/`` (``s3://b/p/m.csv`` -> ``s3://b/p/``), without credentials or query. A
    folder or glob of images (no manifest extension) is its own folder: ``photos/`` and
    ``photos/*.jpg`` give ``photos`` (:func:`~i2score.data.manifest.discover.source_folder`)."""
    # Imported here: the manifest package reads inputs through this module.
    from i2score.data.manifest.discover import is_manifest_source, source_folder

    if not is_manifest_source(manifest_url):
        return source_folder(manifest_url)
    scheme = _scheme(manifest_url)
    if scheme in _LOCAL:
        return os.path.dirname(_locate(manifest_url).path)
    parts = urllib.parse.urlsplit(manifest_url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{posixpath.dirname(parts.path)}/"


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------


def _refuse_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved
                or ip.is_multicast or ip.is_unspecified)


@dataclass
class InputPolicy:
    """What inputs may be read (see the module docstring).

    Attributes:
        allowed: URL prefixes inputs must be inside, or None for no confinement.
        max_bytes: the largest input read, in bytes.
        resolve: the host-name resolver (``socket.getaddrinfo``'s addresses); tests replace it.
    """

    allowed: tuple[str, ...] | None = None
    max_bytes: int = DEFAULT_MAX_INPUT_BYTES
    resolve: Any = None
    _prefixes: tuple[_Location, ...] = field(init=False, repr=False)
    _local_roots: frozenset[str] = field(init=False, repr=False)
    _local_prefixes: tuple[str, ...] = field(init=False, repr=False)
    _real_prefixes: tuple[str, ...] = field(init=False, repr=False)
    _named_hosts: frozenset[str] = field(init=False, repr=False)
    _host_verdicts: dict[str, str | None] = field(init=False, repr=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if self.allowed is not None:
            self.allowed = tuple(str(a) for a in self.allowed)
            for a in self.allowed:
                if not a or "::" in a.split("://", 1)[0]:
                    raise ValueError(f"allowed input prefix {a!r}: give a folder or URL prefix")
        self._prefixes = tuple(_locate(a) for a in self.allowed or ())
        # "/data/jobs" allows "/data/jobs" itself and what starts with "/data/jobs/".
        self._local_roots = frozenset(p.path for p in self._prefixes if p.scheme == "")
        self._local_prefixes = tuple(p.path.rstrip(os.sep) + os.sep for p in self._prefixes if p.scheme == "")
        self._real_prefixes = tuple(os.path.realpath(p.path) for p in self._prefixes if p.scheme == "")
        self._named_hosts = frozenset(p.host.split(":")[0] for p in self._prefixes
                                      if p.scheme in _HTTP and p.host)
        if self.resolve is None:
            self.resolve = _resolve_host

    def describe(self) -> str:
        """One line for reports and logs."""
        where = "anywhere" if self.allowed is None else ", ".join(storage.safe_url(a) for a in self.allowed)
        return f"inputs from {where}; at most {self.max_bytes} bytes each; regular files only"

    # -- checks without reading ---------------------------------------------------------------

    def check(self, url: str) -> None:
        """Raise :class:`InputRejected` when ``url`` is outside the allowed prefixes or names a
        refused network address. Reads nothing (a DNS lookup for http(s) host names, cached)."""
        if self.allowed is None:
            return
        if "://" not in url:  # the common case, kept cheap (validation checks every row)
            path = os.path.abspath(os.path.expanduser(url) if url.startswith("~") else url)
            if path in self._local_roots or path.startswith(self._local_prefixes):
                return
        loc = _locate(url)
        if not any(loc.within(p) for p in self._prefixes):
            shown = storage.safe_url(url)
            raise InputRejected(OUTSIDE_ALLOWED_INPUTS,
                                f"{shown!r} is outside the allowed inputs ({self._allowed_text()})", shown)
        if loc.scheme in _HTTP:
            why = self._host_verdict(urllib.parse.urlsplit(url).hostname or "")
            if why is not None:
                shown = storage.safe_url(url)
                raise InputRejected(OUTSIDE_ALLOWED_INPUTS, f"{shown!r}: {why}", shown)

    def _allowed_text(self) -> str:
        return ", ".join(storage.safe_url(a) for a in self.allowed or ()) or "none"

    def _host_verdict(self, host: str) -> str | None:
        host = host.lower()
        if host in self._named_hosts:
            return None  # an operator allowed this very host (a local test server)
        with self._lock:
            if host in self._host_verdicts:
                return self._host_verdicts[host]
        verdict: str | None = None
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = [ipaddress.ip_address(a) for a in self.resolve(host)]
            except OSError:
                addresses = []  # unresolvable: the read fails as unreadable, nothing is reached
        bad = next((a for a in addresses if _refuse_address(a)), None)
        if bad is not None:
            verdict = (f"host {host} is an internal address ({bad}); allow it explicitly with an "
                       f"http(s) prefix naming the host")
        with self._lock:
            if len(self._host_verdicts) < 4096:
                self._host_verdicts[host] = verdict
        return verdict

    # -- reading -----------------------------------------------------------------------------

    def read(self, url: str) -> bytes:
        """The bytes of input ``url``, read under the policy.

        Raises:
            InputRejected: outside the allowed inputs, not a regular file, or larger than
                ``max_bytes``.
            OSError: the storage errors of :mod:`i2score.data.storage` (missing file, network).
        """
        self.check(url)
        scheme = _scheme(url)
        if scheme in _LOCAL:
            return self._read_local(_locate(url).path, storage.safe_url(url))
        if scheme in _HTTP:
            return self._read_http(url)
        return self._read_object(url)

    def read_many(self, urls: Iterable[str], *, max_workers: int = 16) -> dict[str, bytes | Exception]:
        """:meth:`read` for many URLs concurrently: ``{url: bytes or the exception}``, in input
        order, each URL read once."""
        unique = list(dict.fromkeys(urls))

        def one(u: str) -> bytes | Exception:
            try:
                return self.read(u)
            except Exception as exc:  # noqa: BLE001 - the row's error, reported by its caller
                return exc

        workers = max(1, min(max_workers, len(unique)))
        if workers == 1:
            return {u: one(u) for u in unique}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="i2s-input") as pool:
            return dict(zip(unique, pool.map(one, unique), strict=True))

    def _too_large(self, shown: str, size: int | None) -> InputRejected:
        what = f"{size} bytes" if size is not None else f"more than {self.max_bytes} bytes"
        return InputRejected(FILE_TOO_LARGE, f"{shown!r} is {what}; the limit is {self.max_bytes} bytes "
                             "(--max-input-bytes)", shown)

    def _read_local(self, path: str, shown: str) -> bytes:
        real = os.path.realpath(path)
        if self.allowed is not None and self._real_prefixes is not None and not any(
                real == p or real.startswith(p.rstrip(os.sep) + os.sep) for p in self._real_prefixes):
            raise InputRejected(OUTSIDE_ALLOWED_INPUTS, f"{shown!r} resolves (through a symlink) to a "
                                f"file outside the allowed inputs ({self._allowed_text()})", shown)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(real, flags)
        except FileNotFoundError:
            raise FileNotFoundError(f"{shown!r} does not exist") from None
        except OSError as e:
            if os.path.islink(real):  # replaced by a symlink after realpath: refuse, don't follow
                raise InputRejected(OUTSIDE_ALLOWED_INPUTS, f"{shown!r} changed into a symlink while "
                                    "being opened", shown) from None
            raise OSError(e.errno, f"{shown!r} cannot be opened: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a named pipe" if stat.S_ISFIFO(st.st_mode)
                        else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                        else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
                raise InputRejected(NOT_A_REGULAR_FILE, f"{shown!r} is {kind}, not a regular file", shown)
            if st.st_size > self.max_bytes:
                raise self._too_large(shown, st.st_size)
            with contextlib.suppress(AttributeError, OSError):
                os.set_blocking(fd, True)
            chunks: list[bytes] = []
            got = 0
            while got <= self.max_bytes:
                chunk = os.read(fd, min(_READ_CHUNK, self.max_bytes + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            if got > self.max_bytes:
                raise self._too_large(shown, None)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _read_object(self, url: str) -> bytes:
        shown = storage.safe_url(url)
        info = storage.info(url)
        if info.get("type", "file") != "file":
            raise InputRejected(NOT_A_REGULAR_FILE, f"{shown!r} is a folder (prefix), not an object", shown)
        size = info.get("size")
        if isinstance(size, int) and size > self.max_bytes:
            raise self._too_large(shown, size)
        if size == 0:
            return b""
        # A ranged read bounds what a changed (grown) object can make us download.
        data = storage.read_bytes(url, start=0, end=self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise self._too_large(shown, None)
        return data

    def _read_http(self, url: str) -> bytes:
        data = storage.read_stream(url, limit=self.max_bytes + 1, follow_redirects=False)
        if len(data) > self.max_bytes:
            raise self._too_large(storage.safe_url(url), None)
        return data


def _resolve_host(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def policy_for_manifest(manifest_url: str, allowed: Sequence[str] | None = None,
                        max_bytes: int | None = None, masks: str | None = None) -> InputPolicy:
    """The policy of a run: inputs from ``allowed`` prefixes, or (None) from the manifest's own
    folder only (:func:`manifest_folder`; for a folder or glob of images, that folder and the
    ``masks`` folder when given); ``max_bytes`` None = :data:`DEFAULT_MAX_INPUT_BYTES`."""
    if allowed is not None:
        prefixes = tuple(allowed)
    else:
        prefixes = (manifest_folder(manifest_url),)
        if masks is not None:
            from i2score.data.manifest.discover import source_folder

            prefixes += (source_folder(masks),)
    return InputPolicy(prefixes, max_bytes if max_bytes is not None else DEFAULT_MAX_INPUT_BYTES)
