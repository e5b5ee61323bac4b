"""Reading a batch's inputs, and reading the next batch's inputs while this one computes.

The next batch of the same phase usually runs in this process next (always with the local
runner). Only successful reads are kept: a failing read is left to the batch, which records the
error against its row. Two batches' worth at most (the one about to read its inputs and the
next), oldest dropped first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from i2score.data import storage
from i2score.data.inputs import InputPolicy
from i2score.runs.config import JobConfig
from i2score.runs.records import RunPaths, read_json, row_from_json
from i2score.runs.secret_urls import restore_urls

log = logging.getLogger(__name__)

_PREFETCH_LOCK = threading.Lock()
_prefetched: dict[str, dict[str, bytes]] = {}
#: The last prefetch started in this process (tests wait for it).
prefetch_thread: threading.Thread | None = None


def read_all(urls: Sequence[str], inputs: InputPolicy, max_workers: int = 16) -> dict[str, bytes | BaseException]:
    """Read the input files ``urls`` in parallel under ``inputs`` (prefetched bytes of this batch
    are taken instead of re-read: they were read under the same batch's policy)."""
    urls = list(dict.fromkeys(urls))
    got: dict[str, bytes | BaseException] = {}
    with _PREFETCH_LOCK:
        for by_url in _prefetched.values():
            got.update({u: by_url.pop(u) for u in urls if u in by_url and u not in got})
    rest = [u for u in urls if u not in got]
    if rest:
        got.update(inputs.read_many(rest, max_workers=max_workers))
    return got


def spec_input_urls(spec: Mapping[str, Any]) -> list[str]:
    """The files a batch spec's items read: each row's image, mask and ref, or each source."""
    urls: list[str] = []
    for it in spec["items"]:
        if "row" in it:
            urls += row_from_json(it["row"]).urls()
        elif "source" in it:
            urls.append(it["source"]["url"])
    return urls


def _prefetch(paths: RunPaths, batch_id: str, manifest_url: str | None) -> None:
    try:
        if storage.exists(paths.record_url(batch_id)):
            return
        spec = restore_urls(read_json(paths.spec_url(batch_id)), manifest_url)
        inputs = JobConfig.from_json(spec["config"]).input_policy()
        got = inputs.read_many(spec_input_urls(spec))
    except Exception:  # an optimisation only: the batch reads (and reports) its own inputs
        log.debug("prefetch of batch %s failed", batch_id, exc_info=True)
        return
    with _PREFETCH_LOCK:
        _prefetched[batch_id] = {u: b for u, b in got.items() if isinstance(b, bytes)}
        while len(_prefetched) > 2:
            _prefetched.pop(next(iter(_prefetched)))


def start_prefetch(paths: RunPaths, batch_id: str | None, manifest_url: str | None = None) -> None:
    """Read the inputs of batch ``batch_id`` in a background thread (see :func:`read_all`);
    ``manifest_url`` as :func:`i2score.runs.execute.run_batch` takes it."""
    global prefetch_thread
    if batch_id is None:
        return
    prefetch_thread = threading.Thread(target=_prefetch, args=(paths, batch_id, manifest_url), daemon=True,
                                       name=f"prefetch-{batch_id}")
    prefetch_thread.start()
