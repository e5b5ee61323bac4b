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
    Transient errors only (connection errors, timeouts, HTTP 5xx / 429, S3 ``SlowDown`` and
    throttling codes, and the ``OSError`` wrappers s3fs raises for them) are retried with
    exponential backoff and jitter; ``FileNotFoundError``, ``PermissionError``, 4xx and anything
    else fail at once. Attempts per call: the ``attempts=`` keyword, else the module default
    (:data:`RETRY_ATTEMPTS`, 5; env ``I2S_STORAGE_ATTEMPTS``; :func:`configure_retries`). Each retry
    is logged at WARNING on the ``i2score.data.storage`` logger.

Credentials
    Every error message and log line produced here goes through :func:`redact`. Exceptions leave
    this module as builtin types (``FileNotFoundError``, ``PermissionError``, ``TimeoutError``,
    ``ConnectionError``, ``OSError``, ...) with a redacted message, the URL (:func:`safe_url`) in
    ``exc.url``, the number of attempts in ``exc.attempts``, ``exc.transient``, and no chained
    cause (a chained botocore error could carry a signed URL or header).
"""

from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import posixpath
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fsspec
import fsspec.config
from fsspec import AbstractFileSystem
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

logger = logging.getLogger("i2score.data.storage")

T = TypeVar("T")

#: Default number of attempts per storage call (first try included).
RETRY_ATTEMPTS: int = 5
#: First backoff in seconds; doubles on every retry, plus up to the same amount of jitter.
RETRY_BACKOFF_S: float = 0.2
#: Cap on one backoff in seconds.
RETRY_BACKOFF_MAX_S: float = 10.0

ENV_OPTIONS = "I2S_STORAGE_OPTIONS"
ENV_ATTEMPTS = "I2S_STORAGE_ATTEMPTS"

_LOCAL_PROTOCOLS = ("file", "local")
_CONFIGURED: dict[str, dict[str, Any]] = {}
_CONFIG_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------------
# Redaction
# ----------------------------------------------------------------------------------------------

# Names whose values are credentials whatever the separator (``name=v``, ``name: v``).
_SECRET_NAMES = (
    r"aws_access_key_id|aws_secret_access_key|aws_session_token|aws_security_token"
    r"|access_key_id|secret_access_key|session_token|security_token|access_key|secret_key"
    r"|account_key|sas_token|client_secret|refresh_token|id_token|api_key|apikey|passwd|password"
    r"|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential"
    r"|signature"
)
# Short generic names (fsspec/s3fs options): only as ``name=v`` or a quoted ``'name': v``, so
# ordinary prose such as "No such key: a/b.npz" is left alone.
_GENERIC_NAMES = r"key|secret|token|sig"
_VALUE = r"""(?P<value>"[^"]*"|'[^']*'|[^\s&,;)}\]'"]+)"""
_KV_RE = re.compile(
    r"""(?P<name>["']?(?<![\w-])(?:[\w-]*_)?(?:"""
    + _SECRET_NAMES
    + r""")["']?)(?P<sep>\s*[=:]\s*)"""
    + _VALUE
    + r"""|(?P<name2>(?<![\w-])(?:[\w-]*_)?(?:"""
    + _GENERIC_NAMES
    + r"""))(?P<sep2>\s*=\s*)"""
    + _VALUE.replace("value", "value2")
    + r"""|(?P<name3>["'](?:[\w-]*_)?(?:"""
    + _GENERIC_NAMES
    + r""")["'])(?P<sep3>\s*[=:]\s*)"""
    + _VALUE.replace("value", "value3"),
    re.IGNORECASE,
)
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)[^/\s@'\"]+@")
_AUTH_HEADER_RE = re.compile(r"(?P<name>authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n]+", re.IGNORECASE)
_AWS_KEY_ID_RE = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_SECRET_OPTION_NAMES = re.compile(
    r"^(?:" + _SECRET_NAMES + "|" + _GENERIC_NAMES + r")$|_(?:key|secret|token|password)$",
    re.IGNORECASE,
)
_SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "FSSPEC_S3_KEY",
    "FSSPEC_S3_SECRET",
    "FSSPEC_S3_TOKEN",
)
_KNOWN_SECRETS: set[str] = set()
_KNOWN_LOCK = threading.Lock()
_MIN_SECRET_LEN = 8
_MAX_KNOWN = 512
REDACTED = "***"


def _remember_secret(value: Any) -> None:
    if isinstance(value, str) and len(value) >= _MIN_SECRET_LEN:
        with _KNOWN_LOCK:
            if len(_KNOWN_SECRETS) < _MAX_KNOWN:
                _KNOWN_SECRETS.add(value)


def _remember_secrets_in(options: Mapping[str, Any]) -> None:
    """Record the values of credential-like options so :func:`redact` removes them anywhere."""
    for name, value in options.items():
        if isinstance(value, Mapping):
            _remember_secrets_in(value)
        elif _SECRET_OPTION_NAMES.search(str(name)):
            _remember_secret(value)


def redact(text: Any) -> str:
    """``text`` with credentials replaced by ``***``.

    Removes: values of credential-like ``name=value`` / ``name: value`` / ``'name': 'value'``
    pairs (``key``, ``secret``, ``token``, ``AWS_SECRET_ACCESS_KEY``, ``X-Amz-Signature``,
    ``X-Amz-Credential``, ...), ``user:password@`` in URLs, ``Authorization`` headers, AWS access
    key ids (``AKIA...``), and any literal value seen earlier as a credential option or present
    in the credential environment variables.
    """
    s = str(text)
    secrets = {os.environ.get(name, "") for name in _SECRET_ENV}
    with _KNOWN_LOCK:
        secrets |= _KNOWN_SECRETS
    for secret in sorted((v for v in secrets if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True):
        s = s.replace(secret, REDACTED)
    s = _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", s)
    s = _AUTH_HEADER_RE.sub(lambda m: f"{m.group('name')}{REDACTED}", s)

    def _kv(m: re.Match[str]) -> str:
        i = next(i for i in ("", "2", "3") if m.group("name" + i) is not None)
        value = m.group("value" + i)
        quote = value[0] if value[:1] in ("'", '"') else ""
        return f"{m.group('name' + i)}{m.group('sep' + i)}{quote}{REDACTED}{quote}"

    s = _KV_RE.sub(_kv, s)
    return _AWS_KEY_ID_RE.sub(REDACTED, s)


def safe_url(url: str) -> str:
    """``url`` fit for logs, reports and manifests: no ``user:password@``, no signed query."""
    return redact(url)


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
    fs, path = fsspec.core.url_to_fs(url, **storage_options_for(url, **storage_options))
    return fs, path


# ----------------------------------------------------------------------------------------------
# Retries
# ----------------------------------------------------------------------------------------------

_TRANSIENT_CODES = {
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
}
_TRANSIENT_ERRNOS = {
    errno.EBUSY,  # s3fs: 503 / SlowDown / ServiceUnavailable
    errno.EAGAIN,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETRESET,
    getattr(errno, "EREMOTEIO", 121),  # s3fs: 500 / InternalError
}
_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    ValueError,
    TypeError,
    KeyError,
    NotImplementedError,
)


def _client_error_transient(exc: BaseException) -> bool | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return None
    error = response.get("Error") or {}
    code = str(error.get("Code", ""))
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    try:
        status = int(status) if status is not None else None
    except (TypeError, ValueError):
        status = None
    if code in _TRANSIENT_CODES or (code.isdigit() and (int(code) >= 500 or int(code) == 429)):
        return True
    return status is not None and (status >= 500 or status == 429)


def _transport_error(exc: BaseException) -> str | None:
    """``"timeout"`` / ``"connection"`` for transport failures of botocore / aiohttp, else None."""
    mod = type(exc).__module__ or ""
    names = {c.__name__ for c in type(exc).__mro__}
    if type(exc).__name__ == "HTTPClientError" and mod.startswith("botocore"):
        # botocore's wrapper for "an HTTP client raised an unhandled exception": judge the cause
        inner = (getattr(exc, "kwargs", None) or {}).get("error")
        if isinstance(inner, BaseException) and inner is not exc:
            if isinstance(inner, TimeoutError):
                return "timeout"
            if _transport_error(inner) or isinstance(inner, ConnectionError):
                return _transport_error(inner) or "connection"
        return None
    if mod.startswith(("botocore", "aiobotocore", "aiohttp", "urllib3", "requests")):
        if names & {"ReadTimeoutError", "ConnectTimeoutError", "ServerTimeoutError", "Timeout"}:
            return "timeout"
        if names & {
            "EndpointConnectionError",
            "ConnectionClosedError",
            "ConnectionError",
            "ProxyConnectionError",
            "ResponseParserError",
            "IncompleteReadError",
            "ClientConnectionError",
            "ClientPayloadError",
            "ServerDisconnectedError",
            "ClientOSError",
        }:
            return "connection"
    return None


def is_transient(exc: BaseException) -> bool:
    """True if retrying ``exc`` can help: connection errors, timeouts, S3 5xx / 429 /
    ``SlowDown`` / throttling (also when wrapped in the ``OSError`` s3fs raises). Never for
    ``FileNotFoundError``, ``PermissionError``, other 4xx or programming errors."""
    if isinstance(exc, _PERMANENT):
        return False
    if _transport_error(exc):
        return True
    verdict = _client_error_transient(exc)
    if verdict is not None:
        return verdict
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError):
        cause = exc.__cause__
        if cause is not None and cause is not exc:
            verdict = _client_error_transient(cause)
            if verdict is not None:
                return verdict
            if _transport_error(cause) or isinstance(cause, (TimeoutError, ConnectionError)):
                return True
        return exc.errno in _TRANSIENT_ERRNOS
    return False


def configure_retries(
    attempts: int | None = None,
    *,
    backoff_s: float | None = None,
    max_backoff_s: float | None = None,
) -> None:
    """Change the module defaults: attempts per call, first backoff, backoff cap."""
    global RETRY_ATTEMPTS, RETRY_BACKOFF_S, RETRY_BACKOFF_MAX_S
    if attempts is not None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        RETRY_ATTEMPTS = int(attempts)
    if backoff_s is not None:
        RETRY_BACKOFF_S = float(backoff_s)
    if max_backoff_s is not None:
        RETRY_BACKOFF_MAX_S = float(max_backoff_s)


def _resolve_attempts(attempts: int | None) -> int:
    if attempts is not None:
        n = int(attempts)
    elif os.environ.get(ENV_ATTEMPTS, "").strip():
        try:
            n = int(os.environ[ENV_ATTEMPTS])
        except ValueError:
            raise ValueError(f"{ENV_ATTEMPTS} must be an integer") from None
    else:
        n = RETRY_ATTEMPTS
    if n < 1:
        raise ValueError("attempts must be >= 1")
    return n


def _describe(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")


def _public_class(exc: BaseException) -> type[BaseException]:
    kind = _transport_error(exc)
    if kind == "timeout":
        return TimeoutError
    if kind == "connection":
        return ConnectionError
    if not isinstance(exc, OSError) and isinstance(getattr(exc, "response", None), Mapping):
        code = str(exc.response.get("Error", {}).get("Code", ""))  # type: ignore[attr-defined]
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
            return FileNotFoundError
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return PermissionError
        return OSError
    for cls in type(exc).__mro__:
        if cls.__module__ == "builtins" and issubclass(cls, Exception):
            return cls
    return OSError


def _sanitized(exc: BaseException, op: str, url: str, attempts: int) -> BaseException:
    """A builtin exception like ``exc`` carrying only redacted text."""
    cls = _public_class(exc)
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    message = f"{op} {safe_url(url)} failed{tries}: {_describe(exc)}"
    err_no = getattr(exc, "errno", None)
    new: BaseException
    try:
        if issubclass(cls, OSError) and isinstance(err_no, int):
            new = cls(err_no, message)
        else:
            new = cls(message)
    except Exception:  # noqa: BLE001 - exotic constructor
        new = OSError(message)
    new.url = safe_url(url)  # type: ignore[attr-defined]
    new.attempts = attempts  # type: ignore[attr-defined]
    new.transient = is_transient(exc)  # type: ignore[attr-defined]
    return new


def _backoff(state: RetryCallState) -> float:
    """Exponential backoff with jitter: ``b * 2**(k-1) + uniform(0, b)``, capped."""
    base = RETRY_BACKOFF_S
    return min(RETRY_BACKOFF_MAX_S, base * 2 ** (state.attempt_number - 1) + random.uniform(0, base))


def _with_retries(op: str, url: str, fn: Callable[[], T], attempts: int | None) -> T:
    """Run ``fn`` with the retry policy; errors leave as redacted builtin exceptions."""
    n = _resolve_attempts(attempts)
    made = 0

    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "%s",
            redact(
                f"storage: {op} {safe_url(url)} failed (attempt {state.attempt_number}/{n}: "
                f"{_describe(exc) if exc else 'unknown error'}); retrying in {delay:.2f}s"
            ),
        )

    retrying = Retrying(
        stop=stop_after_attempt(n),
        wait=_backoff,
        retry=retry_if_exception(is_transient),
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        for attempt in retrying:
            made = attempt.retry_state.attempt_number
            with attempt:
                return fn()
    except Exception as exc:  # noqa: BLE001 - every error leaves redacted
        raise _sanitized(exc, op, url, made) from None
    raise AssertionError("unreachable")  # pragma: no cover


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


def read_bytes(url: str, *, attempts: int | None = None, **storage_options: Any) -> bytes:
    """Whole object as bytes, retried on transient errors."""

    def _read() -> bytes:
        fs, path = url_to_fs(url, **storage_options)
        if _cat_takes_max_concurrency(fs):
            # s3fs >= 2025: otherwise a HEAD (size) precedes the GET, and a LIST follows a 404
            return bytes(fs.cat_file(path, max_concurrency=1))
        return bytes(fs.cat_file(path))

    return _with_retries("read", url, _read, attempts)


_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")


def _write_local(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
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


def delete(url: str, *, attempts: int | None = None, **storage_options: Any) -> None:
    """Remove one object; a missing object is not an error."""

    def _delete() -> None:
        fs, path = url_to_fs(url, **storage_options)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
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
    return dict(zip(unique, results))
