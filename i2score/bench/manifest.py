"""Benchmark of manifest validation (schema checks only, no file reads).

``python -m i2score.bench.manifest 100000 /tmp/bench`` prints the result as JSON.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
import time
from typing import Any

from i2score.data import storage
from i2score.data.inputs import policy_for_manifest
from i2score.data.manifest import validate_manifest
from i2score.runs.ops import CATALOG

# Cycled through by the good rows: (op, mask?, ref?, params).
_GOOD = [
    ("reconstruct", False, False, ""),
    ("inpaint", True, False, '{"k": 2, "seed": 7}'),
    ("crossover", True, True, '{"blur_sigma": 1.5}'),
    ("scribble", True, True, '{"layers": 5}'),
    ("attribute_transfer", True, True, '{"layer": 4, "mode": "average"}'),
    ("morph", False, True, '{"t": 0.25}'),
    ("style_mix", False, True, ""),
]
# One of these every 100 rows (~1 %), each with a different reason.
_BAD = [
    lambda i: (f"r{i - 1:07d}", "reconstruct", "", "", ""),  # duplicate_id
    lambda i: (f"../r{i:07d}", "reconstruct", "", "", ""),  # path_traversal
    lambda i: (f"r{i:07d}", "teleport", "", "", ""),  # unknown_op
    lambda i: (f"r{i:07d}", "inpaint", "", "", ""),  # missing_mask
    lambda i: (f"r{i:07d}", "morph", "", "img/x.png", '{"t": 3}'),  # invalid_params
    lambda i: (f"r{i:07d}", "reconstruct", "", "", '{"bogus": 1}'),  # invalid_params
]


def synthetic_manifest_csv(n_rows: int) -> bytes:
    """An edit manifest of ``n_rows`` rows with relative paths, ~1 % of them bad."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "image", "mask", "op", "ref", "params"])
    for i in range(n_rows):
        if i % 100 == 99:
            rid, op, mask, ref, params = _BAD[(i // 100) % len(_BAD)](i)
            w.writerow([rid, f"img/{i:07d}.png", mask, op, ref, params])
            continue
        op, has_mask, has_ref, params = _GOOD[i % len(_GOOD)]
        w.writerow([f"r{i:07d}", f"img/{i:07d}.png", f"masks/{i:07d}.png" if has_mask else "", op,
                    f"img/{(i + 1) % n_rows:07d}.png" if has_ref else "", params])
    return buf.getvalue().encode()


def bench_validate(n_rows: int, root_url: str, repeats: int = 3) -> dict[str, Any]:
    """Write a synthetic ``n_rows`` CSV edit manifest below ``root_url`` and time
    :func:`~i2score.data.manifest.validate_manifest` on it (read + parse + schema checks),
    ``repeats`` times unconfined and confined to the manifest's folder (the runs' default input
    policy), alternating, so the two are measured side by side.

    Returns ``{"rows", "valid", "rejected", "manifest_bytes", "write_s", "wall_s",
    "rows_per_s", "confined_wall_s", "confined_rows_per_s", "confinement_ratio"}``: medians;
    ``wall_s`` covers reading the manifest back from storage too; ``confinement_ratio`` is
    confined / unconfined wall time.
    """
    url = storage.join(root_url, f"bench-manifest-{n_rows}.csv")
    data = synthetic_manifest_csv(n_rows)
    t0 = time.perf_counter()
    storage.write_bytes(url, data)
    write_s = time.perf_counter() - t0
    inputs = policy_for_manifest(url)
    plain: list[float] = []
    confined: list[float] = []
    for _ in range(max(1, repeats)):
        t1 = time.perf_counter()
        result = validate_manifest(url, CATALOG, kind="edit", check_files=False)
        plain.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        confined_result = validate_manifest(url, CATALOG, kind="edit", check_files=False, inputs=inputs)
        confined.append(time.perf_counter() - t1)
    if len(confined_result.rows) != len(result.rows):
        raise AssertionError("the synthetic manifest names only files in its folder; confinement rejected some")
    wall, cwall = statistics.median(plain), statistics.median(confined)
    return {
        "rows": n_rows,
        "valid": len(result.rows),
        "rejected": len(result.rejected),
        "manifest_bytes": len(data),
        "write_s": round(write_s, 4),
        "wall_s": round(wall, 4),
        "rows_per_s": round(n_rows / wall, 1) if wall > 0 else float("inf"),
        "confined_wall_s": round(cwall, 4),
        "confined_rows_per_s": round(n_rows / cwall, 1) if cwall > 0 else float("inf"),
        "confinement_ratio": round(cwall / wall, 3) if wall > 0 else float("nan"),
    }


if __name__ == "__main__":  # pragma: no cover
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    root = sys.argv[2] if len(sys.argv) > 2 else "memory://i2s-bench"
    print(json.dumps(bench_validate(n, root), indent=2))
