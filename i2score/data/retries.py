"""Retries of storage calls: which errors are transient, and the policy that retries them.

Transient errors only (connection errors, timeouts, HTTP 5xx / 429, S3 ``SlowDown`` and
throttling codes, and the ``OSError`` wrappers s3fs raises for them, see :func:`is_transient`)
are retried with exponential backoff and jitter; ``FileNotFoundError``, ``PermissionError``, 4xx
and anything else fail at once. Attempts per call: the ``attempts=`` keyword, else the module
default (:data:`RETRY_ATTEMPTS`, 5; env ``I2S_STORAGE_ATTEMPTS``; :func:`configure_retries`).
Each retry is logged at WARNING on the ``i2score.data.storage`` logger.

Whatever the outcome, an error leaves :func:`_with_retries` as a builtin type
(``FileNotFoundError``, ``PermissionError``, ``TimeoutError``, ``ConnectionError``, ``OSError``,
...) with a redacted message, the URL (:func:`~i2score.data.redact.safe_url`) in ``exc.url``,
the number of attempts in ``exc.attempts``, ``exc.transient``, and no chained cause (a chained
botocore error could carry a signed URL or header).
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections.abc import Callable, Mapping
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from i2score.data.redact import redact, safe_url

# Retries are what storage logs; they keep the storage module's logger name, the one place
# operators (and tests) filter for storage trouble.
logger = logging.getLogger("i2score.data.storage")

T = TypeVar("T")

#: Default number of attempts per storage call (first try included).
RETRY_ATTEMPTS: int = 5
#: First backoff in seconds; doubles on every retry, plus up to the same amount of jitter.
RETRY_BACKOFF_S: float = 0.2
#: Cap on one backoff in seconds.
RETRY_BACKOFF_MAX_S: float = 10.0

ENV_ATTEMPTS = "I2S_STORAGE_ATTEMPTS"

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
    response = getattr(exc, "response", None)
    if not isinstance(exc, OSError) and isinstance(response, Mapping):
        code = str(response.get("Error", {}).get("Code", ""))
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
        new = cls(err_no, message) if issubclass(cls, OSError) and isinstance(err_no, int) else cls(message)
    except Exception:  # noqa: BLE001 - exotic constructor
        new = OSError(message)
    # The public types stay builtin (callers catch OSError & co.), so these extra attributes are
    # set on instances whose classes do not declare them: hence the ignores.
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
