"""Benchmark: bulk lookup of ``n`` keys in the latent cache index (local or S3).

What it measures, honestly:

* The index is realistic: ``n`` synthetic rows in a few large parts (as after ``compact``), with
  the real schema including a random float32 ``w`` of ``w_shape`` (``18 x 512`` = FFHQ-1024 by
  default: 36 KiB a row, so 100k rows are a 3.5 GiB index). Random floats do not compress, so the
  parts are as large as real ones.
* The lookup is :meth:`LatentCache.lookup` with every key: list the parts, read each once with
  ``w`` projected out, filter in Arrow, collapse duplicates, build the entries. It is timed twice:
  without the NPZ existence check (``index_only``) and with it (``with_npz_check``: the 256
  shard prefixes of ``cache/latents/`` listed concurrently; one sequential listing is timed
  too). For the latter the NPZs are empty placeholder objects: a listing's cost depends on the
  number of objects, not their size, and the lookup never opens an NPZ (``get`` verifies
  content). Writing 100k real NPZs would only measure the setup.
* Setup (writing parts and placeholders) is reported separately and is not part of rows/s.
"""

from __future__ import annotations

import hashlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from i2score.data import storage
from i2score.data.cache import (
    LOOKUP_COLUMNS,
    LatentCache,
    index_schema,
    npz_path,
)
from i2score.data.cache import part_name as _part_name
from i2score.data.cache import table_bytes as _table_bytes


def synthetic_keys(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct, deterministic 64-hex keys."""
    return [hashlib.sha256(f"bench-{seed}-{i}".encode()).hexdigest() for i in range(n)]


def synthetic_index_table(keys: list[str], w_shape: tuple[int, int], *, seed: int = 0) -> pa.Table:
    """Index rows for ``keys`` with the real schema, a random ``w`` and plausible metrics."""
    n = len(keys)
    num_ws, w_dim = w_shape
    rng = np.random.default_rng(seed)
    schema = index_schema(num_ws, w_dim)
    w = rng.standard_normal((n, num_ws, w_dim), dtype=np.float32)
    now = datetime.now(timezone.utc)
    cols: dict[str, Any] = {
        "key": keys,
        "npz_path": [npz_path(k) for k in keys],
        "source_id": [f"s3://bench-images/img-{i:07d}.png" for i in range(n)],
        "image_sha256": [hashlib.sha256(k.encode()).hexdigest() for k in keys],
        "mask_sha256": [None] * n,
        "generator_id": ["ffhq-1024"] * n,
        "generator_sha256": ["0" * 64] * n,
        "algorithm": ["image2stylegan++/reconstruct"] * n,
        "algorithm_version": np.ones(n, np.int32),
        "params": ['{"init":"mean","lr_n":5,"lr_w":0.01,"seed":0,"steps_n":3000,"steps_w":5000}'] * n,
        "num_ws": np.full(n, num_ws, np.int32),
        "w_dim": np.full(n, w_dim, np.int32),
        "w": pa.FixedShapeTensorArray.from_numpy_ndarray(w),
        "noise_dtype": ["float32"] * n,
        "checksum": [hashlib.sha256(k.encode() + b"c").hexdigest() for k in keys],
        "npz_bytes": np.full(n, 11_200_000, np.int64),
        "psnr_w": rng.uniform(20, 30, n), "psnr_wn": rng.uniform(30, 45, n), "mse": rng.uniform(0, 0.01, n),
        "ssim": rng.uniform(0.7, 1, n), "lpips": rng.uniform(0, 0.3, n), "seconds": rng.uniform(60, 600, n),
        "steps_w": np.full(n, 5000, np.int32), "steps_n": np.full(n, 3000, np.int32),
        "steps": np.full(n, 8000, np.int32), "extra": [None] * n, "status": ["ok"] * n,
        "created_at": [now] * n,
    }
    return pa.Table.from_pydict({f.name: pa.array(cols[f.name], type=f.type) if f.name != "w" else cols["w"]
                                 for f in schema}, schema=schema)


def populate(root_url: str, keys: list[str], *, w_shape: tuple[int, int], rows_per_part: int,
             create_npz: bool, max_workers: int = 32) -> dict[str, Any]:
    """Write the index parts (one PUT each) and, with ``create_npz``, empty NPZ placeholders."""
    cache = LatentCache(root_url)
    t0 = time.perf_counter()
    index_bytes = 0
    parts = math.ceil(len(keys) / rows_per_part)
    for p in range(parts):
        chunk = keys[p * rows_per_part:(p + 1) * rows_per_part]
        data = _table_bytes(synthetic_index_table(chunk, w_shape, seed=p))
        storage.write_bytes(storage.join(cache.index_url, _part_name()), data)
        index_bytes += len(data)
        del data
    t_index = time.perf_counter() - t0
    t1 = time.perf_counter()
    if create_npz:
        with ThreadPoolExecutor(max_workers) as ex:
            list(ex.map(lambda k: storage.write_bytes(cache.npz_url(k), b""), keys))
    t_npz = time.perf_counter() - t1
    return {"parts": parts, "index_bytes": index_bytes, "write_index_s": t_index, "write_placeholders_s": t_npz}


def bench_cache_lookup(root_url: str, n_keys: int = 100_000, *, w_shape: tuple[int, int] = (18, 512),
                       rows_per_part: int = 25_000, create_npz: bool = True, populate_index: bool = True,
                       repeats: int = 2) -> dict[str, Any]:
    """Populate ``root_url`` (an empty scratch root) with ``n_keys`` index rows and time a bulk
    :meth:`LatentCache.lookup` of all of them. Returns timings (best of ``repeats``) and rows/s.

    ``populate_index=False`` reuses rows written by an earlier call (same ``n_keys``).
    """
    keys = synthetic_keys(n_keys)
    result: dict[str, Any] = {"root": storage.safe_url(root_url), "n_keys": n_keys, "w_shape": list(w_shape),
                              "rows_per_part": rows_per_part}
    if populate_index:
        result.update(populate(root_url, keys, w_shape=w_shape, rows_per_part=rows_per_part, create_npz=create_npz))

    def timed(fn: Any) -> tuple[float, Any]:
        best, out = math.inf, None
        for _ in range(repeats):
            cache = LatentCache(root_url)  # fresh: nothing cached between repeats
            t = time.perf_counter()
            out = fn(cache)
            best = min(best, time.perf_counter() - t)
        return best, out

    t_read, table = timed(lambda c: c._index_table(LOOKUP_COLUMNS))
    result["read_index_s"] = t_read
    result["index_rows"] = table.num_rows
    t_lookup, hits = timed(lambda c: c.lookup(keys, check_npz=False))
    result["lookup_index_only_s"] = t_lookup
    result["lookup_index_only_rows_per_s"] = n_keys / t_lookup
    result["hits_index_only"] = len(hits)
    # Entries are built lazily; a caller touching every one pays this once on top.
    t = time.perf_counter()
    built = sum(1 for k in keys if hits[k].key == k)
    result["materialize_all_entries_s"] = time.perf_counter() - t
    assert built == len(hits)
    if create_npz:
        t_list, present = timed(lambda c: c._present_keys(keys))
        result["list_npz_s"] = t_list
        result["npz_listed"] = len(present)
        # For comparison: the same objects as ONE recursive listing (sequential pages on S3).
        t_single, urls = timed(lambda c: storage.list_files(c.latents_url, ".npz"))
        result["list_npz_single_listing_s"] = t_single
        assert len(urls) == len(present)
        t_full, hits = timed(lambda c: c.lookup(keys, check_npz=True, adopt=False))
        result["lookup_with_npz_check_s"] = t_full
        result["lookup_with_npz_check_rows_per_s"] = n_keys / t_full
        result["hits_with_npz_check"] = len(hits)
    return result


if __name__ == "__main__":  # python -m i2score.bench.cache ROOT [N] [L]
    import json
    import sys

    root = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    L = int(sys.argv[3]) if len(sys.argv) > 3 else 18
    print(json.dumps(bench_cache_lookup(root, n, w_shape=(L, 512)), indent=2))
