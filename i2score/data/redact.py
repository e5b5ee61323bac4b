"""Credential hygiene: text and URLs fit for logs, error messages, reports and manifests.

:func:`redact` removes credential-like ``name=value`` pairs, ``user:password@`` in URLs,
``Authorization`` headers and AWS access key ids, and every literal value seen earlier as a
credential option (the storage module records the options it resolves with
:func:`_remember_secrets_in`) or present in the credential environment variables, so a secret is
removed even where nothing around it says it is one. :func:`safe_url` is the spelling for URLs.

Credentials must not reach anything the project writes, so redaction is applied by the writers
themselves, not by their callers: :func:`redact_tree` (JSON records), :func:`redact_table`
(Parquet), the NPZ metadata writer, the storage text writer, and every log record once
:func:`install_log_redaction` ran (a log-record factory, so Prefect's records and what its API
handler sends are redacted too). The values of credentials seen in URLs the storage layer opens
(:func:`remember_url_secrets`) are removed anywhere, also in their JSON-escaped and
percent-encoded spellings.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import traceback
import urllib.parse
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

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


@functools.lru_cache(maxsize=4 * _MAX_KNOWN)
def _spellings(secret: str) -> tuple[str, ...]:
    """``secret`` as it may appear in written text: itself, JSON-escaped (a record holding a
    message that holds it), percent-encoded (a query string) and percent-decoded."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret, safe=""),
             urllib.parse.unquote(secret)}
    return tuple(f for f in forms if len(f) >= _MIN_SECRET_LEN)


def _remember_secret(value: Any) -> None:
    if isinstance(value, str) and len(value) >= _MIN_SECRET_LEN:
        with _KNOWN_LOCK:
            if len(_KNOWN_SECRETS) < _MAX_KNOWN:
                _KNOWN_SECRETS.update(_spellings(value))


def _remember_secrets_in(options: Mapping[str, Any]) -> None:
    """Record the values of credential-like options so :func:`redact` removes them anywhere."""
    for name, value in options.items():
        if isinstance(value, Mapping):
            _remember_secrets_in(value)
        elif _SECRET_OPTION_NAMES.search(str(name)):
            _remember_secret(value)


# Query parameters whose values are credentials (presigned S3/GCS URLs, Azure SAS, API tokens).
_SECRET_QUERY_NAMES = re.compile(
    r"^(?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential"
    r"|signature|sig|token|access_token|api_key|apikey|key|secret|password|passwd)$",
    re.IGNORECASE,
)


def remember_url_secrets(url: str) -> None:
    """Record the password of ``url`` (``user:password@``) and the values of its credential
    query parameters, so :func:`redact` removes them anywhere (an error message that quotes only
    the path and the signature, a JSON-escaped record). The storage layer calls it for every URL
    it opens."""
    if "@" not in url and "?" not in url:
        return
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=False)
    except ValueError:
        return
    if password:
        _remember_secret(password)
        _remember_secret(urllib.parse.unquote(password))
    raw = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
    for name, value in query:
        if _SECRET_QUERY_NAMES.match(name) or _SECRET_OPTION_NAMES.search(name):
            _remember_secret(value)
            _remember_secret(raw.get(name, ""))


def _current_secrets() -> tuple[str, ...]:
    """Every literal secret to remove now (environment and remembered), longest first."""
    found: set[str] = set()
    for name in _SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= _MIN_SECRET_LEN:
            found.update(_spellings(value))
    with _KNOWN_LOCK:
        found |= _KNOWN_SECRETS
    return tuple(sorted(found, key=len, reverse=True))


# Words one of which every pattern below needs (lower-cased text), and the AWS key id prefixes:
# text without any of them and without "@" only needs the literal secrets removed (most URLs).
_HINTS = ("key", "secret", "token", "sig", "passw", "cred", "auth")
_AWS_PREFIXES = ("AKIA", "ASIA", "AROA", "AIDA")


def _redact_with(s: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in s:
            s = s.replace(secret, REDACTED)
    if "@" in s:
        s = _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", s)
    low = s.lower()
    if not any(h in low for h in _HINTS):
        return _AWS_KEY_ID_RE.sub(REDACTED, s) if any(p in s for p in _AWS_PREFIXES) else s
    s = _AUTH_HEADER_RE.sub(lambda m: f"{m.group('name')}{REDACTED}", s)

    def _kv(m: re.Match[str]) -> str:
        i = next(i for i in ("", "2", "3") if m.group("name" + i) is not None)
        value = m.group("value" + i)
        quote = value[0] if value[:1] in ("'", '"') else ""
        return f"{m.group('name' + i)}{m.group('sep' + i)}{quote}{REDACTED}{quote}"

    s = _KV_RE.sub(_kv, s)
    return _AWS_KEY_ID_RE.sub(REDACTED, s)


def redact(text: Any) -> str:
    """``text`` with credentials replaced by ``***``.

    Removes: values of credential-like ``name=value`` / ``name: value`` / ``'name': 'value'``
    pairs (``key``, ``secret``, ``token``, ``AWS_SECRET_ACCESS_KEY``, ``X-Amz-Signature``,
    ``X-Amz-Credential``, ...), ``user:password@`` in URLs, ``Authorization`` headers, AWS access
    key ids (``AKIA...``), and any literal value seen earlier as a credential option or present
    in the credential environment variables.
    """
    return _redact_with(str(text), _current_secrets())


def safe_url(url: str) -> str:
    """``url`` fit for logs, reports and manifests: no ``user:password@``, no signed query."""
    return redact(url)


def redact_tree(obj: Any) -> Any:
    """``obj`` (JSON-like: mappings, lists, tuples, scalars) with every string, keys included,
    passed through :func:`redact`. The structure is kept, so a record field named ``key`` (a cache
    key) stays what it is; only the strings' contents change."""
    return _redact_tree(obj, _current_secrets(), {})


def _redact_tree(obj: Any, secrets: tuple[str, ...], seen: dict[str, str]) -> Any:
    # ``seen``: each distinct string is redacted once per call (record keys and op names repeat
    # in every row: a 100k-row plan would otherwise redact a million strings).
    if isinstance(obj, str):
        out = seen.get(obj)
        if out is None:
            out = seen[obj] = _redact_with(obj, secrets)
        return out
    if isinstance(obj, Mapping):
        return {_redact_tree(k, secrets, seen): _redact_tree(v, secrets, seen) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_tree(v, secrets, seen) for v in obj]
    if isinstance(obj, tuple):
        # pyarrow gives map entries as (key, value) tuples
        return tuple(_redact_tree(v, secrets, seen) for v in obj)
    return obj


def _has_strings(t: pa.DataType) -> bool:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_strings(t.value_type)
    if pa.types.is_struct(t):
        return any(_has_strings(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _has_strings(t.key_type) or _has_strings(t.item_type)
    return False


def redact_table(table: pa.Table) -> pa.Table:
    """``table`` with every string value (also inside lists, structs and maps) passed through
    :func:`redact`; columns without strings (latents, metrics) are kept as they are."""
    secrets = _current_secrets()
    columns = []
    for i, field in enumerate(table.schema):
        column = table.column(i)
        if _has_strings(field.type):
            values = column.to_pylist()
            column = pa.chunked_array([pa.array(_redact_tree(values, secrets, {}), type=field.type)],
                                      type=field.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)


_LOG_FACTORY_LOCK = threading.Lock()
_log_factory_installed = False


def _redact_record(record: logging.LogRecord) -> None:
    """Replace a record's message (and its traceback text) by the redacted text, only when
    redaction changes it: records without credentials keep their ``msg`` and ``args``."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is logging's to report; keep the raw parts
        message = f"{record.msg} {record.args}"
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        cleaned = redact(text)
        if cleaned != text:
            # Formatters append exc_text as it is; without exc_info nothing re-formats the exception.
            record.exc_text, record.exc_info = cleaned, None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_log_redaction() -> None:
    """Redact every log record this process creates from now on (any logger: i2score's,
    Prefect's, libraries'), by wrapping the log-record factory, so every handler (the console,
    pytest's capture, Prefect's API handler that ships logs to its server) sees redacted text.
    Idempotent; flows, tasks' workers and the CLI call it when they are set up."""
    global _log_factory_installed
    with _LOG_FACTORY_LOCK:
        if _log_factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(redacting_factory)
        _log_factory_installed = True
