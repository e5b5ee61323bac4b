"""Object storage through fsspec: every location is a URL (local path, ``s3://``, ``memory://``).

All reads and writes of the data plane go through these functions, so retries, storage
options and credential hygiene live in one place.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import fsspec
from fsspec import AbstractFileSystem


def url_to_fs(url: str, **storage_options: Any) -> tuple[AbstractFileSystem, str]:
    """Filesystem and path for ``url`` (fsspec also reads ``FSSPEC_<PROTOCOL>_<OPTION>``)."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URL/path segments with ``/`` (``join("s3://b/root", "cache", "x.npz")``)."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def is_remote(url: str) -> bool:
    """True for URLs with a non-local protocol (``s3://``, ``memory://``, ...)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return protocol not in ("file", "local")


def read_bytes(url: str, **storage_options: Any) -> bytes:
    """Whole object as bytes."""
    fs, path = url_to_fs(url, **storage_options)
    return fs.cat_file(path)


def write_bytes(url: str, data: bytes, **storage_options: Any) -> None:
    """Write an object in one PUT; local files go through a temp file and an atomic rename,
    so a reader never sees a partial file."""
    fs, path = url_to_fs(url, **storage_options)
    if not is_remote(url):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{id(data):x}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    fs.pipe_file(path, data)


def exists(url: str, **storage_options: Any) -> bool:
    fs, path = url_to_fs(url, **storage_options)
    return bool(fs.exists(path))


def list_files(prefix_url: str, suffix: str = "", **storage_options: Any) -> list[str]:
    """Every object below ``prefix_url`` (recursive) ending in ``suffix``, as full URLs, sorted."""
    fs, path = url_to_fs(prefix_url, **storage_options)
    if not fs.exists(path):
        return []
    found = fs.find(path)
    protocol = prefix_url.split("://", 1)[0] + "://" if "://" in prefix_url else ""
    urls = []
    for p in found:
        if p.endswith(suffix):
            if protocol and not p.startswith(protocol):
                p = protocol + p.lstrip("/") if protocol != "file://" else protocol + p
            urls.append(p)
    return sorted(urls)


def delete(url: str, **storage_options: Any) -> None:
    fs, path = url_to_fs(url, **storage_options)
    if fs.exists(path):
        fs.rm_file(path)


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))
