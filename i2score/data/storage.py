"""Object storage through fsspec: every location is a URL (local path, ``file://``, ``s3://``,
``memory://``, any fsspec protocol).

All reads and writes of the data plane go through these functions, so retries, storage options
and credential hygiene live in one place.

Storage options
    :func:`storage_options_for` merges, lowest precedence first:

    1. built-in defaults for the protocol (for ``s3``: botocore makes a single attempt,
       ``config_kwargs={"retries": {"total_max_attempts": 1}}``, so its retries do not multiply
       ours; s3fs still retries ``SlowDown`` and dropped connections up to 5 times within about
       1 s inside one of our attempts, which cannot be turned off per instance);
    2. ``fsspec.config.conf[protocol]`` (``~/.config/fsspec`` files and the ``FSSPEC_*``
       variables as they were when fsspec was imported);
    3. ``FSSPEC_<PROTOCOL>`` (JSON object) and ``FSSPEC_<PROTOCOL>_<OPTION>`` variables as they are
       *now*, re-read on every call (fsspec itself only reads them at import time);
    4. options set in code with :func:`set_storage_options` (e.g. from a configuration file);
    5. ``I2S_STORAGE_OPTIONS``: a JSON object keyed by protocol,
       ``{"s3": {"endpoint_url": "http://127.0.0.1:8333", "anon": true}}``;
    6. keyword arguments passed to the call.

    Nested dictionaries (``client_kwargs``, ``config_kwargs``) are merged key by key.

Retries
    Every operation is retried on transient errors only, with exponential backoff and jitter
    (:mod:`i2score.data.retries`: :func:`is_transient`, :func:`configure_retries`, the
    ``attempts=`` keyword, env ``I2S_STORAGE_ATTEMPTS``). Each retry is logged at WARNING on the
    ``i2score.data.storage`` logger.

Credentials
    Every error message and log line produced here goes through :func:`redact`
    (:mod:`i2score.data.redact`), and so does everything written through :func:`write_text`,
    :func:`write_json` and :func:`parquet_bytes` (the writers of records, reports and tables):
    callers do not redact what they hand to a writer. :func:`url_to_fs` remembers the
    credentials of every URL it opens, so they are removed wherever they show up later.
    Exceptions leave this module as builtin types (``FileNotFoundError``, ``PermissionError``,
    ``TimeoutError``, ``ConnectionError``, ``OSError``, ...) with a redacted message, the URL
    (:func:`safe_url`) in ``exc.url``, the number of attempts in ``exc.attempts``,
    ``exc.transient``, and no chained cause (a chained botocore error could carry a signed URL
    or header).

:func:`redact`, :func:`safe_url`, :func:`is_transient` and :func:`configure_retries` are part of
this module's interface (``__all__``), so callers need one import for everything storage.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import json
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import fsspec.config
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from i2score.data.redact import _remember_secrets_in, redact, redact_table, redact_tree, remember_url_secrets, safe_url
from i2score.data.retries import ENV_ATTEMPTS, _with_retries, configure_retries, is_transient

__all__ = [
    "ENV_ATTEMPTS",
    "ENV_OPTIONS",
    "basename",
    "configure_retries",
    "create_exclusive",
    "delete",
    "exists",
    "glob",
    "info",
    "is_remote",
    "is_transient",
    "join",
    "list_files",
    "list_folder",
    "parquet_bytes",
    "public_url",
    "read_bytes",
    "read_many",
    "read_stream",
    "redact",
    "safe_url",
    "set_storage_options",
    "storage_options_for",
    "url_to_fs",
    "write_bytes",
    "write_json",
    "write_text",
]

ENV_OPTIONS = "I2S_STORAGE_OPTIONS"

_LOCAL_PROTOCOLS = ("file", "local")
_CONFIGURED: dict[str, dict[str, Any]] = {}
_CONFIG_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------------
# Storage options
# ----------------------------------------------------------------------------------------------


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def _protocol_aliases(protocol: str) -> tuple[str, ...]:
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError):
        return (protocol,)
    protos = cls.protocol if isinstance(cls.protocol, (tuple, list)) else (cls.protocol,)
    return tuple(dict.fromkeys([*protos, protocol]))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = dict(v) if isinstance(v, Mapping) else v
    return out


def _env_fsspec(protocols: Iterable[str]) -> dict[str, Any]:
    conf: dict[str, dict[str, Any]] = {}
    env = {k: v for k, v in os.environ.items() if k.startswith("FSSPEC_") and k != "FSSPEC_CONFIG_DIR"}
    if env:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fsspec.config.set_conf_env(conf, env)
    out: dict[str, Any] = {}
    for p in protocols:
        out = _merge(out, conf.get(p, {}))
    return out


def _env_i2s(protocols: Iterable[str]) -> dict[str, Any]:
    raw = os.environ.get(ENV_OPTIONS, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_OPTIONS} is not valid JSON (position {exc.pos})") from None
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise ValueError(
            f'{ENV_OPTIONS} must be a JSON object keyed by protocol, e.g. {{"s3": {{"anon": true}}}}'
        )
    out: dict[str, Any] = {}
    for p in protocols:
        out = _merge(out, parsed.get(p, {}))
    return out


def _builtin_defaults(protocols: tuple[str, ...]) -> dict[str, Any]:
    if "s3" in protocols:
        # Botocore's own retries (5 attempts for 5xx in its legacy mode) would multiply ours.
        return {"config_kwargs": {"retries": {"total_max_attempts": 1}}}
    return {}


def set_storage_options(options: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Set (replace) options from configuration, keyed by protocol (``{"s3": {...}}``);
    ``None`` clears them. See the module docstring for precedence."""
    with _CONFIG_LOCK:
        _CONFIGURED.clear()
        for proto, opts in (options or {}).items():
            _CONFIGURED[proto.lower()] = dict(opts)


def storage_options_for(url: str, **storage_options: Any) -> dict[str, Any]:
    """The storage options used for ``url``: defaults, fsspec config, ``FSSPEC_*`` env (read
    now), :func:`set_storage_options`, ``I2S_STORAGE_OPTIONS``, then ``storage_options``
    (later wins). Chained URLs (``simplecache::s3://...``) get only the explicit options."""
    proto = _protocol(url)
    if "::" in url or proto in _LOCAL_PROTOCOLS:
        opts = dict(storage_options)
    else:
        protos = _protocol_aliases(proto)
        opts = _builtin_defaults(protos)
        for p in protos:
            opts = _merge(opts, fsspec.config.conf.get(p, {}))
        opts = _merge(opts, _env_fsspec(protos))
        with _CONFIG_LOCK:
            configured = [dict(_CONFIGURED[p]) for p in protos if p in _CONFIGURED]
        for c in configured:
            opts = _merge(opts, c)
        opts = _merge(opts, _env_i2s(protos))
        opts = _merge(opts, storage_options)
    _remember_secrets_in(opts)
    return opts


def url_to_fs(url: str, **storage_options: Any) -> tuple[AbstractFileSystem, str]:
    """Filesystem and path for ``url``, with :func:`storage_options_for` applied."""
    remember_url_secrets(url)
    fs, path = fsspec.core.url_to_fs(url, **storage_options_for(url, **storage_options))
    return fs, path

# ----------------------------------------------------------------------------------------------
# Operations
# ----------------------------------------------------------------------------------------------


def join(base: str, *parts: str) -> str:
    """Join URL/path segments with ``/`` (``join("s3://b/root", "cache", "x.npz")``)."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def is_remote(url: str) -> bool:
    """True for URLs with a non-local protocol (``s3://``, ``memory://``, ...)."""
    return _protocol(url) not in _LOCAL_PROTOCOLS


def basename(url: str) -> str:
    """Last segment of ``url`` (``basename("s3://b/x/y.npz") == "y.npz"``)."""
    return posixpath.basename(url.rstrip("/"))


#: The longest a presigned S3 URL can live: AWS Signature Version 4 caps it at 7 days.
MAX_SIGNED_EXPIRY_S = 7 * 24 * 3600


def public_url(url: str, expires_s: int = MAX_SIGNED_EXPIRY_S) -> str:
    """A URL a browser can open for the file at ``url`` (a report's links and images outside the
    run folder, e.g. in the Prefect UI).

    - a local path or ``file://`` URL: the absolute ``file://`` URL (percent-encoded). Browsers
      open it from a local page; many refuse to follow it from an ``http(s)`` page.
    - ``http(s)://``: unchanged.
    - any other protocol whose fsspec filesystem signs URLs (``s3://`` through s3fs, ``gs://``
      through gcsfs): a presigned ``https`` URL (``http`` for a plain-http endpoint) that lets
      whoever holds it read that one object for ``expires_s`` seconds (1 to 7 days at most, the
      SigV4 limit). Its query string carries the access key id (not the secret) and the signature.

    Raises ``ValueError`` for an expiry out of range and for a protocol that cannot sign
    (``memory://``): there is no URL that a browser could open.
    """
    if not 1 <= expires_s <= MAX_SIGNED_EXPIRY_S:
        raise ValueError(f"expires_s must be in [1, {MAX_SIGNED_EXPIRY_S}] seconds (7 days), got {expires_s}")
    proto = _protocol(url)
    if proto in _LOCAL_PROTOCOLS:
        import pathlib

        path = url.split("://", 1)[1] if "://" in url else url
        return pathlib.Path(path).resolve().as_uri()
    if proto in ("http", "https"):
        return url
    # botocore presigns S3 with the legacy Signature Version 2 unless told; SigV4 is what every
    # AWS region accepts (and what the 7-day limit is about).
    extra = {"config_kwargs": {"signature_version": "s3v4"}} if proto in ("s3", "s3a") else {}
    fs, path = url_to_fs(url, **extra)
    try:
        signed = fs.sign(path, expiration=expires_s)
    except NotImplementedError:
        raise ValueError(f"{safe_url(url)}: {proto}:// cannot make a URL for a browser (no signing in "
                         f"{type(fs).__name__})") from None
    return str(signed)


def _cat_takes_max_concurrency(fs: AbstractFileSystem) -> bool:
    cls = type(fs)
    cached = _CAT_MAX_CONCURRENCY.get(cls)
    if cached is None:
        impl = getattr(cls, "_cat_file", None) or cls.cat_file
        try:
            cached = "max_concurrency" in inspect.signature(impl).parameters
        except (TypeError, ValueError):
            cached = False
        _CAT_MAX_CONCURRENCY[cls] = cached
    return cached


_CAT_MAX_CONCURRENCY: dict[type, bool] = {}


def read_bytes(url: str, *, start: int | None = None, end: int | None = None, attempts: int | None = None,
               **storage_options: Any) -> bytes:
    """The object as bytes (``start``/``end``: a byte range, end exclusive; an ``end`` past the
    object's size gives what there is), retried on transient errors."""
    ranged = {"start": start, "end": end} if start is not None or end is not None else {}

    def _read() -> bytes:
        fs, path = url_to_fs(url, **storage_options)
        if _cat_takes_max_concurrency(fs):
            # s3fs >= 2025: otherwise a HEAD (size) precedes the GET, and a LIST follows a 404
            return bytes(fs.cat_file(path, max_concurrency=1, **ranged))
        return bytes(fs.cat_file(path, **ranged))

    return _with_retries("read", url, _read, attempts)


def info(url: str, *, attempts: int | None = None, **storage_options: Any) -> dict[str, Any]:
    """The object's metadata as fsspec gives it (``type``: ``file`` or ``directory``, ``size``
    in bytes, ...), never from a stale listing cache."""

    def _info() -> dict[str, Any]:
        fs, path = url_to_fs(url, **storage_options)
        fs.invalidate_cache(path)
        return dict(fs.info(path))

    return _with_retries("info", url, _info, attempts)


def read_stream(url: str, *, limit: int, follow_redirects: bool = True, attempts: int | None = None,
                **storage_options: Any) -> bytes:
    """At most ``limit`` bytes of the object at ``url``, read as a stream: a server that sends
    more (or no ``Content-Length``) cannot make this read more than ``limit``. With
    ``follow_redirects=False`` (HTTP), a redirect is an error instead of a second request."""
    opts = dict(storage_options)
    if _protocol(url) in ("http", "https") and not follow_redirects:
        opts["allow_redirects"] = False

    def _read() -> bytes:
        fs, path = url_to_fs(url, **opts)
        with fs.open(path, "rb", block_size=0) as f:
            status = getattr(getattr(f, "r", None), "status", 200)
            if 300 <= int(status) < 400:
                raise PermissionError(f"{safe_url(url)} answered with a redirect ({status}), which is not followed")
            chunks: list[bytes] = []
            got = 0
            while got < limit:
                chunk = f.read(min(1 << 20, limit - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

    return _with_retries("read", url, _read, attempts)


_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")


def _complete_temp_file(path: str, data: bytes) -> str:
    """A hidden temp file next to ``path`` holding all of ``data`` (listings skip it, _TMP_RE)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _write_local(path: str, data: bytes) -> None:
    tmp = _complete_temp_file(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(
    url: str, data: bytes, *, attempts: int | None = None, **storage_options: Any
) -> None:
    """Write an object: remote in one PUT (a reader sees the old object, the new one or none,
    never a part); local through a hidden temp file in the same folder and an atomic rename."""
    payload = bytes(data)

    def _write() -> None:
        fs, path = url_to_fs(url, **storage_options)
        if not is_remote(url):
            _write_local(path, payload)
        else:
            fs.pipe_file(path, payload)

    _with_retries("write", url, _write, attempts)


def _create_local(path: str, data: bytes) -> None:
    # A complete temp file hard-linked to its name: link(2) fails with EEXIST when the name exists,
    # so creation is exclusive (like O_CREAT|O_EXCL) and a reader never sees a partial object.
    tmp = _complete_temp_file(path, data)
    try:
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _precondition_failed(exc: BaseException) -> bool:
    """True for an S3 conditional PUT that lost: 412 PreconditionFailed (the key exists) or 409
    ConditionalRequestConflict (another conditional write of the key is in flight)."""
    for e in (exc, exc.__cause__):
        response = getattr(e, "response", None)
        if isinstance(response, Mapping):
            code = str((response.get("Error") or {}).get("Code", ""))
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return True
    return False


#: Serialises check-then-write creation on stores without a conditional put (memory://), which
#: are only shared between the threads of one process.
_CREATE_LOCK = threading.Lock()


def create_exclusive(url: str, data: bytes, *, attempts: int | None = None, **storage_options: Any) -> None:
    """Create the object ``url`` with ``data`` only if it does not exist; ``FileExistsError``
    when it does. Of two writers racing for one name exactly one succeeds where the store has a
    conditional put:

    - local folders: a complete temp file hard-linked to the name (``link`` fails when the name
      exists; atomic on POSIX filesystems, NFS included);
    - ``s3://``: a PUT with ``If-None-Match: *`` (s3fs ``mode="create"``); AWS S3 and SeaweedFS
      (tested: 4.x) answer 412 to the loser;
    - ``memory://``: a check-then-write under a process-wide lock (memory:// is per process);
    - any other protocol: fsspec's ``mode="create"``, which is atomic only where that
      filesystem implements it (otherwise check-then-write: a race can let both writers succeed).

    Retried on transient errors like every write: a retry of a PUT whose answer was lost fails
    with ``FileExistsError`` although the object is ours, so callers put something unique in
    ``data`` and read the object back to tell (see :mod:`i2score.runs.lease`).
    """
    payload = bytes(data)

    def _create() -> None:
        fs, path = url_to_fs(url, **storage_options)
        if not is_remote(url):
            _create_local(path, payload)
            return
        if _protocol(url) == "memory":
            with _CREATE_LOCK:
                fs.pipe_file(path, payload, mode="create")
            return
        try:
            fs.pipe_file(path, payload, mode="create")
        except OSError as exc:
            if isinstance(exc, FileExistsError) or _precondition_failed(exc):
                raise FileExistsError(errno.EEXIST, f"{safe_url(url)} exists") from None
            raise

    _with_retries("create", url, _create, attempts)


def write_text(url: str, text: str, *, attempts: int | None = None, **storage_options: Any) -> None:
    """Write ``text`` (UTF-8) as :func:`write_bytes` does, redacted: reports, CSV, Markdown."""
    write_bytes(url, redact(text).encode(), attempts=attempts, **storage_options)


def write_json(url: str, obj: Any, *, indent: int = 1, attempts: int | None = None,
               **storage_options: Any) -> None:
    """Write ``obj`` as JSON (sorted keys, so equal objects give equal bytes) as
    :func:`write_bytes` does, every string in it redacted (:func:`~i2score.data.redact.redact_tree`:
    values change, the structure does not)."""
    text = json.dumps(redact_tree(obj), indent=indent, sort_keys=True, default=lambda o: redact(str(o)))
    write_bytes(url, text.encode(), attempts=attempts, **storage_options)


def parquet_bytes(table: pa.Table, **write_options: Any) -> bytes:
    """Parquet bytes of ``table`` with every string redacted (write them with
    :func:`write_bytes`, in one PUT). ``write_options`` go to ``pyarrow.parquet.write_table``."""
    buf = io.BytesIO()
    pq.write_table(redact_table(table), buf, **write_options)
    return buf.getvalue()


def exists(url: str, *, attempts: int | None = None, **storage_options: Any) -> bool:
    """True if an object (or folder / prefix) exists at ``url``; never answers from a stale
    listing cache."""

    def _exists() -> bool:
        fs, path = url_to_fs(url, **storage_options)
        fs.invalidate_cache(path)
        return bool(fs.exists(path))

    return _with_retries("exists", url, _exists, attempts)


def list_files(
    prefix_url: str, suffix: str = "", *, attempts: int | None = None, **storage_options: Any
) -> list[str]:
    """Every object below ``prefix_url`` (recursive) ending in ``suffix``, as full URLs in the
    form of ``prefix_url`` (plain path, ``file://``, ``s3://``), sorted. A missing prefix gives
    ``[]``; folder markers and in-flight local temp files are left out."""
    protocol = prefix_url.split("://", 1)[0] + "://" if "://" in prefix_url else ""

    def _list() -> list[str]:
        fs, path = url_to_fs(prefix_url, **storage_options)
        fs.invalidate_cache(path)
        try:
            found = fs.find(path, detail=True)
        except FileNotFoundError:
            return []
        urls = []
        for p, info in found.items():
            if info.get("type", "file") != "file" or p.endswith("/"):
                continue
            if not p.endswith(suffix) or _TMP_RE.match(posixpath.basename(p)):
                continue
            if protocol and not p.startswith(protocol):
                p = protocol + p if protocol == "file://" else protocol + p.lstrip("/")
            urls.append(p)
        return sorted(urls)

    return _with_retries("list", prefix_url, _list, attempts)


def _url_form(protocol: str, path: str) -> str:
    """``path`` as fsspec lists it (no protocol for most stores) in the form of the URL that was
    listed (``protocol`` ``""``, ``file://``, ``s3://``...)."""
    if not protocol or path.startswith(protocol):
        return path
    return protocol + path if protocol == "file://" else protocol + path.lstrip("/")


def _entries(found: Any, protocol: str) -> list[tuple[str, str]]:
    items = found.values() if isinstance(found, dict) else found
    out = []
    for entry in items:
        name = str(entry["name"]).rstrip("/")
        kind = "directory" if entry.get("type") == "directory" else "file"
        out.append((_url_form(protocol, name), kind))
    return sorted(set(out))


def list_folder(url: str, *, attempts: int | None = None, **storage_options: Any) -> list[tuple[str, str]]:
    """The entries directly inside the folder (or prefix) ``url``, not recursive: sorted
    ``(url, type)`` pairs, ``type`` ``"file"`` or ``"directory"``, URLs in the form of ``url``.

    Raises:
        FileNotFoundError: nothing at ``url``.
        NotADirectoryError: ``url`` is a file.
    """
    protocol = url.split("://", 1)[0] + "://" if "://" in url else ""

    def _list() -> list[tuple[str, str]]:
        fs, path = url_to_fs(url, **storage_options)
        fs.invalidate_cache(path)
        if fs.info(path).get("type") != "directory":
            raise NotADirectoryError(f"{safe_url(url)} is a file, not a folder")
        self_path = path.rstrip("/")
        return [e for e in _entries(fs.ls(path, detail=True), protocol)
                if e[0].rstrip("/") != _url_form(protocol, self_path)]

    return _with_retries("list", url, _list, attempts)


def glob(url: str, *, attempts: int | None = None, **storage_options: Any) -> list[tuple[str, str]]:
    """What the glob pattern ``url`` matches (``*``, ``?``, ``[...]``, ``**`` for any depth, as
    fsspec matches them): sorted ``(url, type)`` pairs as :func:`list_folder` gives them; no
    match is ``[]``."""
    protocol = url.split("://", 1)[0] + "://" if "://" in url else ""

    def _glob() -> list[tuple[str, str]]:
        fs, path = url_to_fs(url, **storage_options)
        fs.invalidate_cache()
        return _entries(fs.glob(path, detail=True), protocol)

    return _with_retries("glob", url, _glob, attempts)


def delete(url: str, *, attempts: int | None = None, **storage_options: Any) -> None:
    """Remove one object; a missing object is not an error."""

    def _delete() -> None:
        fs, path = url_to_fs(url, **storage_options)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)
        fs.invalidate_cache(path)

    _with_retries("delete", url, _delete, attempts)


def read_many(
    urls: Iterable[str],
    *,
    max_workers: int = 16,
    attempts: int | None = None,
    **storage_options: Any,
) -> dict[str, bytes | Exception]:
    """Read many objects concurrently (a thread pool of ``max_workers``; each read has its own
    retries). Returns ``{url: bytes}`` in input order (duplicates read once); a URL that fails
    maps to its (redacted) exception instead of raising."""
    unique = list(dict.fromkeys(urls))
    if not unique:
        return {}

    def _one(u: str) -> bytes | Exception:
        try:
            return read_bytes(u, attempts=attempts, **storage_options)
        except Exception as exc:  # noqa: BLE001 - already sanitized by read_bytes
            return exc

    workers = max(1, min(max_workers, len(unique)))
    if workers == 1:
        return {u: _one(u) for u in unique}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="i2s-read") as pool:
        results = list(pool.map(_one, unique))
    return dict(zip(unique, results, strict=True))
