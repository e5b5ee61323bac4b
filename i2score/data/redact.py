"""Credential hygiene: text and URLs fit for logs, error messages, reports and manifests.

:func:`redact` removes credential-like ``name=value`` pairs, ``user:password@`` in URLs,
``Authorization`` headers and AWS access key ids, and every literal value seen earlier as a
credential option (the storage module records the options it resolves with
:func:`_remember_secrets_in`) or present in the credential environment variables, so a secret is
removed even where nothing around it says it is one. :func:`safe_url` is the spelling for URLs.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import Any

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
