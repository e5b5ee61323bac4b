"""Splitting a large manifest into shard manifests, one deployment run each.

A shard is a JSONL manifest of validated rows with absolute URLs (so it can live anywhere),
written under ``<root>/shards/<digest>/``. The digest covers the manifest's bytes, the job's
parameters and the shard size, so re-launching the same job writes the same shards and each
shard run is the same (resumable, then no-op) run as before. Rows whose params name another row
(``id`` params) stay in that row's shard. Rows the manifest validation rejects are not sharded:
they are returned (and written to ``errors.parquet`` beside the shards) with their reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from i2score.data import storage
from i2score.data.inputs import policy_for_manifest
from i2score.data.manifest import (
    Manifest,
    ManifestRow,
    Reason,
    Rejection,
    read_manifest_bytes,
    rejections_to_arrow,
    validate_manifest,
)
from i2score.runs.ops import CATALOG, OPS
from i2score.runs.secret_urls import has_credentials


@dataclass
class ShardPlan:
    """Where the shards of one job are. ``shards[i]`` has ``rows[i]`` rows; ``run_ids[i]`` is
    the run id its deployment run gets (stable across re-launches of the same job)."""

    digest: str
    prefix: str
    shards: list[str]
    rows: list[int]
    run_ids: list[str]
    rejected: list[Rejection]
    errors_url: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "prefix": self.prefix, "shards": self.shards, "rows": self.rows,
                "run_ids": self.run_ids, "rejected": len(self.rejected), "errors_url": self.errors_url}


def _groups(rows: list[ManifestRow]) -> list[list[ManifestRow]]:
    """Rows in manifest order, grouped so that a row and every row its ``id`` params name are in
    one group (union-find over ids)."""
    parent = {r.id: r.id for r in rows}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        for name, spec in OPS[r.op].params.items():
            other = r.params.get(name)
            if spec.type == "id" and other in parent:
                parent[find(r.id)] = find(str(other))
    groups: dict[str, list[ManifestRow]] = {}
    for r in rows:
        groups.setdefault(find(r.id), []).append(r)
    return list(groups.values())


def _record(r: ManifestRow) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": r.id, "image": r.image, "op": r.op}
    for name in ("mask", "ref"):
        if getattr(r, name) is not None:
            rec[name] = getattr(r, name)
    if r.params:
        rec["params"] = r.params
    rec.update({k: v for k, v in r.extra.items() if k not in rec})
    return rec


def split_manifest(manifest_url: str, root: str, *, kind: str, rows_per_shard: int,
                   job: Mapping[str, Any] | None = None) -> ShardPlan:
    """Validate ``manifest_url`` as a ``kind`` manifest and write its valid rows as shards of at
    most ``rows_per_shard`` rows (a group of rows that name each other may make one larger).

    Args:
        manifest_url: the manifest (any format :class:`~i2score.data.manifest.Manifest` reads).
        root: storage root; shards go to ``<root>/shards/<digest>/shard-NNNNN.jsonl``.
        kind: ``reconstruct``, ``inpaint``, ``edit`` or ``augment`` (augment shards like reconstruct).
        rows_per_shard: shard size (>= 1).
        job: the parameters every shard run gets (part of the digest and the run ids).

    Raises:
        ValueError: ``rows_per_shard`` < 1.
        FileNotFoundError, ManifestError: the manifest cannot be read.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    url = manifest_url if "://" in manifest_url else os.path.abspath(manifest_url)
    data = read_manifest_bytes(url, mask_column=kind == "inpaint")  # a folder input's CSV: masks for inpaint
    manifest = Manifest.from_bytes(data, url)
    job_map = dict(job or {})
    inputs = policy_for_manifest(url, job_map.get("allowed_inputs"), job_map.get("max_input_bytes"))
    result = validate_manifest(manifest, CATALOG, kind="reconstruct" if kind == "augment" else kind,
                               inputs=inputs)
    rejected = list(result.rejected)
    rows_ok: list[ManifestRow] = []
    for r in result.rows:
        secret = next((f for f in ("image", "mask", "ref") if (v := getattr(r, f)) and has_credentials(v)), None)
        if secret is None:
            rows_ok.append(r)
            continue
        # A shard manifest is written to storage, and nothing written may hold a credential; an
        # unsharded run keeps such URLs out of its files by referencing manifest rows instead.
        rejected.append(Rejection(r.row, r.id, Reason.CREDENTIALS_IN_URL.value,
                                  f"{secret} carries a credential, which a shard manifest would have to hold: "
                                  "run this manifest unsharded, or give the store's credentials through the "
                                  "environment or storage options", secret, storage.redact(getattr(r, secret))))
    rejected.sort(key=lambda x: x.row)
    job_json = json.dumps(dict(job or {}), sort_keys=True, default=str)
    digest = hashlib.sha256(b"\0".join([data, job_json.encode(), kind.encode(),
                                        str(rows_per_shard).encode()])).hexdigest()[:16]
    prefix = storage.join(root, "shards", digest)
    shards: list[list[ManifestRow]] = []
    for group in _groups(rows_ok):
        if shards and len(shards[-1]) + len(group) <= rows_per_shard:
            shards[-1].extend(group)
        else:
            shards.append(list(group))
    urls, counts, run_ids = [], [], []
    for i, rows in enumerate(shards):
        url = storage.join(prefix, f"shard-{i:05d}-of-{len(shards):05d}.jsonl")
        text = "".join(json.dumps(_record(r), sort_keys=True, default=str) + "\n" for r in rows)
        storage.write_text(url, text)
        urls.append(url)
        counts.append(len(rows))
        run_ids.append(f"{kind}-shard-{digest[:12]}-{i:05d}")
    errors_url = storage.join(prefix, "errors.parquet")
    storage.write_bytes(errors_url, storage.parquet_bytes(rejections_to_arrow(rejected, manifest_url)))
    return ShardPlan(digest, prefix, urls, counts, run_ids, rejected, errors_url)
