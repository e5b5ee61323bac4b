"""Batch jobs: plan a run, execute one batch, merge the batches into the run's outputs.

This is the Prefect-free half of the flows (``flows/`` only fans batches out and reports). One
run of a job lives under ``<root>/runs/<run-id>/``::

    plan/<batch-id>.json       the batch specs of this run (written by :func:`plan_run`)
    batches/<batch-id>.json    one record per finished batch: outputs, errors, steps run
    outputs/<id>.png           images (written before the record that points at them)
    manifest.parquet           output manifest with lineage (one row per output)
    errors.parquet             every rejected row with its reason (validation and execution)
    summary.json               counts, metric distributions, steps, cache hits
    report.md, report.html     what a person reads; sheet.png, a contact sheet of outputs

Resumability comes from three facts: the run id is a digest of the job (manifest bytes, model
weights, schedule, seed and job parameters), a batch record is written only after its outputs
and cache entries, and planning skips rows that already have an output record. Re-running a
killed run therefore redoes only unfinished batches (their finished embeddings are cache hits),
and re-running a finished run (``summary.json`` with the same digest) does nothing, or retries
only its failed rows when it has some.

Row failures never fail a batch: unreadable or undecodable inputs and failures of a batch's
computation become error records (reason code and message) and the other rows go on; only
transient storage errors propagate, so the caller (a Prefect task) can retry the batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from i2score.data import storage
from i2score.data.cache.store import LatentCache, make_source, source_key
from i2score.data.manifest.validate import (
    ManifestRow,
    Rejection,
    RowError,
    load_row,
    validate_manifest,
)
from i2score.runs.outputs import RunOutputs

log = logging.getLogger(__name__)

JOB_KINDS = ("reconstruct", "inpaint", "edit", "augment")

#: Reason code of a row whose batch computation raised (the message carries the exception).
FAILED = "processing_failed"
#: Reason code of an edit/augment row whose source image could not be embedded.
SOURCE_FAILED = "source_failed"

#: Rows whose files planning reads at a time (to hash them).
PLAN_READ_CHUNK = 256

RECONSTRUCT_ALGORITHM = "image2stylegan++/reconstruct"
INPAINT_ALGORITHM = "image2stylegan++/inpaint"

#: Which cached embeddings an edit op starts from (roles: the row's image, its ref, or the
#: images of the rows named by params ``a``/``b``).
LATENT_ROLES: dict[str, tuple[str, ...]] = {
    "reconstruct": ("image",),
    "inpaint": (),
    "crossover": ("ref",),
    "scribble": ("image",),
    "style_transfer": ("image",),
    "attribute_transfer": ("image", "ref"),
    "morph": ("image", "ref"),
    "style_mix": ("image", "ref"),
    "expression_transfer": ("image", "a", "b"),
}

#: The metric of each op that goes to the output manifest's ``psnr`` column.
PSNR_METRIC = {"reconstruct": "psnr_wn", "inpaint": "psnr_known", "crossover": "psnr_base_region",
               "scribble": "psnr_outside", "style_transfer": "psnr_outside"}


# ----------------------------------------------------------------------------------------------
# Schedules and job configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Optimisation steps of every stage: embedding (Alg. 2), edits that re-optimise (Alg. 3,
    5, 6) and inpainting (Alg. 4)."""

    name: str
    steps_w: int
    steps_n: int
    edit_steps_w: int
    edit_steps_n: int
    inpaint_steps_w: int
    inpaint_steps_n: int
    lr_w: float = 0.01
    lr_n: float = 5.0

    @staticmethod
    def parse(spec: str) -> Schedule:
        """A named schedule (:data:`SCHEDULES`) or ``"W+N"`` (every stage W + N steps) or
        ``"W+N/EW+EN"`` (embedding W + N, edits and inpainting EW + EN)."""
        if spec in SCHEDULES:
            return SCHEDULES[spec]
        try:
            parts = [tuple(int(v) for v in p.split("+")) for p in spec.split("/")]
            if len(parts) not in (1, 2) or any(len(p) != 2 or min(p) < 0 for p in parts):
                raise ValueError
        except ValueError:
            raise ValueError(f"schedule {spec!r}: use one of {sorted(SCHEDULES)} or 'W+N' or "
                             "'W+N/EW+EN' (non-negative step counts)") from None
        (w, n), (ew, en) = parts[0], parts[-1]
        return Schedule(spec, w, n, ew, en, ew, en)

    def reconstruct_params(self, seed: int) -> dict[str, Any]:
        """What determines an embedding besides the image and the weights (the cache key)."""
        return {"steps_w": self.steps_w, "steps_n": self.steps_n, "lr_w": self.lr_w,
                "lr_n": self.lr_n, "seed": seed}


SCHEDULES: dict[str, Schedule] = {
    # The paper: 5000 + 3000 embedding, 1000 + 1000 for edits (Sec. 7).
    "paper": Schedule("paper", 5000, 3000, 1000, 1000, 1000, 1000),
    # The demo: a few minutes on 2 CPU cores for the bundled 64 px model.
    "demo": Schedule("demo", 80, 80, 80, 80, 80, 80),
}


@dataclass(frozen=True)
class JobConfig:
    """Everything that defines a run (the flows' parameters).

    Attributes:
        kind: ``reconstruct`` | ``inpaint`` | ``edit`` | ``augment``.
        manifest: manifest URL (CSV/TSV/Parquet/JSONL; see ``manifests/README.md``).
        root: storage root URL (cache and runs live below it).
        model: generator (registry name, path or URL); None = the bundled demo model.
        schedule: see :meth:`Schedule.parse`.
        batch_size: images per embedding/edit batch (one task each).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        seed: seeds initial latents, inpainting offsets and augmentation draws.
        run_id: None = derived from the job (so a re-run resumes or is a no-op).
        k: inpainting solutions per row when the row's params do not say.
        n_per_image, ops, include_originals: augmentation (see :mod:`i2score.method.applications.augment`).
    """

    kind: str
    manifest: str
    root: str
    model: str | None = None
    schedule: str = "paper"
    batch_size: int = 8
    device: str = "auto"
    seed: int = 0
    run_id: str | None = None
    k: int = 1
    n_per_image: int = 4
    ops: tuple[str, ...] | None = None
    include_originals: bool = True

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, got {self.kind!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 1 <= self.k <= 16:
            raise ValueError(f"k must be in 1..16, got {self.k}")
        if self.n_per_image < 1:
            raise ValueError(f"n_per_image must be >= 1, got {self.n_per_image}")
        Schedule.parse(self.schedule)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = list(self.ops) if self.ops is not None else None
        return d

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> JobConfig:
        d = dict(d)
        d["ops"] = tuple(d["ops"]) if d.get("ops") is not None else None
        return JobConfig(**d)


def resolve_device(device: str, gpu_index: int | None = None) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged. With
    ``gpu_index`` (a worker's own GPU on a multi-GPU machine), ``auto``/``cuda`` become
    ``cuda:<gpu_index>``; an explicit ``cuda:i`` is kept."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and gpu_index is not None:
        device = f"cuda:{gpu_index}"
    return device


# ----------------------------------------------------------------------------------------------
# Worker context: the model, VGG16 and LPIPS, loaded once per process
# ----------------------------------------------------------------------------------------------


@dataclass
class WorkerContext:
    """What a batch needs besides its spec. One per (model, device) and process."""

    G: Any
    vgg: Any
    lpips: Any
    device: str
    model: str

    @property
    def generator_sha256(self) -> str:
        return str(self.G.weights_sha256)


_CONTEXTS: dict[tuple[str, str], WorkerContext] = {}
_CONTEXT_LOCK = threading.Lock()


def worker_context(model: str | None, device: str) -> WorkerContext:
    """The generator (and the VGG16/LPIPS it is optimised with) on ``device``, loaded on first
    use and kept for the life of the process, so a worker loads each model once however many
    batches it runs. Threads share it (the lock serialises the first load)."""
    from i2score.features import VGGWeightsNotFoundError, load_lpips, load_vgg16
    from i2score.generator.checkpoints.load import load_generator
    from i2score.generator.registry import DEFAULT_MODEL

    model = model or DEFAULT_MODEL
    device = resolve_device(device)
    with _CONTEXT_LOCK:
        ctx = _CONTEXTS.get((model, device))
        if ctx is None:
            G = load_generator(model, device=device)
            vgg = load_vgg16(device=device)
            try:
                lp = load_lpips(device=device)
            except VGGWeightsNotFoundError:
                lp = None
            ctx = _CONTEXTS[(model, device)] = WorkerContext(G, vgg, lp, device, model)
        return ctx


# ----------------------------------------------------------------------------------------------
# Run layout
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPaths:
    """URLs of one run's files."""

    root: str
    run_id: str

    @property
    def run_url(self) -> str:
        return storage.join(self.root, "runs", self.run_id)

    def url(self, *parts: str) -> str:
        return storage.join(self.run_url, *parts)

    def spec_url(self, batch_id: str) -> str:
        return self.url("plan", f"{batch_id}.json")

    def record_url(self, batch_id: str) -> str:
        return self.url("batches", f"{batch_id}.json")


def _write_json(url: str, obj: Any) -> None:
    storage.write_bytes(url, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def read_json(url: str) -> Any:
    """A JSON object written by this module."""
    return json.loads(storage.read_bytes(url))


def _digest(parts: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode()
        h.update(len(b).to_bytes(8, "big") + b)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------


def _row_json(r: ManifestRow) -> dict[str, Any]:
    return {"id": r.id, "image": r.image, "op": r.op, "mask": r.mask, "ref": r.ref,
            "params": r.params, "row": r.row}


def _row_from_json(d: Mapping[str, Any]) -> ManifestRow:
    return ManifestRow(id=d["id"], image=d["image"], op=d["op"], mask=d.get("mask"), ref=d.get("ref"),
                       params=dict(d.get("params") or {}), row=int(d.get("row", 0)))


def _rejection_json(r: Rejection) -> dict[str, Any]:
    return asdict(r)


@dataclass
class PlanResult:
    """What :func:`plan_run` returns (small: the flow passes batch ids to tasks).

    ``phases`` are lists of batch ids; a phase starts when the previous one is finished
    (edits need the embeddings of their sources). ``noop`` is True when the run is already
    finished (``summary`` then holds its summary).
    """

    run_id: str
    run_url: str
    digest: str
    attempt: str
    phases: list[list[str]]
    counts: dict[str, int]
    noop: bool = False
    summary: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_all(urls: Sequence[str], max_workers: int = 16) -> dict[str, bytes | BaseException]:
    """Read ``urls`` in parallel (prefetched bytes of this batch are taken instead of re-read)."""
    urls = list(dict.fromkeys(urls))
    got: dict[str, bytes | BaseException] = {}
    with _PREFETCH_LOCK:
        for by_url in _prefetched.values():
            got.update({u: by_url.pop(u) for u in urls if u in by_url and u not in got})
    rest = [u for u in urls if u not in got]
    if rest:
        got.update(storage.read_many(rest, max_workers=max_workers))
    return got


# Inputs of the batch after the one running now, read while this one computes: the next batch
# of the same phase usually runs in this process next (always with the local runner). Only
# successful reads are kept, and only one batch's worth: a failing read is left to the batch,
# which records the error against its row. Two batches' worth at most (the one about to read its
# inputs and the next), oldest dropped first.
_PREFETCH_LOCK = threading.Lock()
_prefetched: dict[str, dict[str, bytes]] = {}
_prefetch_thread: threading.Thread | None = None


def _spec_input_urls(spec: Mapping[str, Any]) -> list[str]:
    urls: list[str] = []
    for it in spec["items"]:
        if "row" in it:
            urls += _row_from_json(it["row"]).urls()
        elif "source" in it:
            urls.append(it["source"]["url"])
    return urls


def _prefetch(paths: RunPaths, batch_id: str) -> None:
    try:
        if storage.exists(paths.record_url(batch_id)):
            return
        urls = _spec_input_urls(read_json(paths.spec_url(batch_id)))
        got = storage.read_many(list(dict.fromkeys(urls)))
    except Exception:  # an optimisation only: the batch reads (and reports) its own inputs
        log.debug("prefetch of batch %s failed", batch_id, exc_info=True)
        return
    with _PREFETCH_LOCK:
        _prefetched[batch_id] = {u: b for u, b in got.items() if isinstance(b, bytes)}
        while len(_prefetched) > 2:
            _prefetched.pop(next(iter(_prefetched)))


def start_prefetch(paths: RunPaths, batch_id: str | None) -> None:
    """Read the inputs of batch ``batch_id`` in a background thread (see :func:`read_all`)."""
    global _prefetch_thread
    if batch_id is None:
        return
    _prefetch_thread = threading.Thread(target=_prefetch, args=(paths, batch_id), daemon=True,
                                        name=f"prefetch-{batch_id}")
    _prefetch_thread.start()


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _batch_id(kind: str, index: int, members: Iterable[str]) -> str:
    return f"{kind}-{index:05d}-{_digest(sorted(members))[:10]}"


def plan_run(config: JobConfig, *, attempt: str | None = None) -> PlanResult:
    """Validate the manifest, hash every input, look up the cache and write the batch specs.

    Rows that already have an output in this run (an earlier, interrupted attempt) are
    skipped; embeddings already in the cache are not planned again (reconstruct runs render
    them in larger batches). Returns a :class:`PlanResult`; when ``summary.json`` of the same
    job exists and no row failed, the run is finished and nothing is written (``noop``); when
    rows failed, only those are planned again.
    """
    from i2score.generator.checkpoints.load import load_generator
    from i2score.generator.registry import DEFAULT_MODEL

    attempt = attempt or uuid.uuid4().hex[:12]
    schedule = Schedule.parse(config.schedule)
    model = config.model or DEFAULT_MODEL
    # The weights hash enters every cache key; the plan only needs the header, so load on CPU.
    G = load_generator(model, device="cpu")
    gen = {"id": model, "sha256": G.weights_sha256, "resolution": G.resolution, "num_ws": G.num_ws}
    manifest_bytes = storage.read_bytes(config.manifest)
    job = {k: v for k, v in config.to_json().items() if k not in ("run_id", "device", "batch_size", "root")}
    digest = _digest([b"i2score.job/1", manifest_bytes, gen["sha256"], job, asdict(schedule)])
    run_id = config.run_id or f"{config.kind}-{digest[:12]}"
    paths = RunPaths(config.root, run_id)

    try:
        summary = read_json(paths.url("summary.json"))
    except FileNotFoundError:
        summary = None
    # A finished run is a no-op; one with failed rows retries those rows (the others are done).
    if summary is not None and summary.get("digest") == digest and not summary["rows"]["failed"]:
        return PlanResult(run_id, paths.run_url, digest, attempt, [], {}, noop=True, summary=summary)

    kind = "reconstruct" if config.kind == "augment" else config.kind
    validation = validate_manifest(config.manifest, kind=kind)
    rejected = list(validation.rejected)
    rows = validation.rows

    # Every row's files once: their bytes make the cache keys.
    sha: dict[str, str] = {}
    good: list[ManifestRow] = []
    # A chunk at a time: only hashes are kept, so memory does not grow with the dataset.
    for chunk in _chunks(rows, PLAN_READ_CHUNK):
        fetched = read_all([u for r in chunk for u in r.urls()])
        for r in chunk:
            if any(isinstance(fetched.get(u), BaseException) for u in r.urls()):
                try:
                    load_row(r, resolution=gen["resolution"], fetched=fetched)
                except RowError as e:
                    rejected.append(Rejection(r.row, r.id, e.reason_code, e.message, e.field, e.url))
                    continue
            for u in r.urls():
                got = fetched[u]
                if isinstance(got, bytes):
                    sha.setdefault(u, hashlib.sha256(got).hexdigest())
            good.append(r)
        del fetched

    embed_params = schedule.reconstruct_params(config.seed)

    def embed_key(url: str) -> str:
        return _key(sha[url], None, gen["sha256"], RECONSTRUCT_ALGORITHM, embed_params)

    # Rows already finished by an earlier attempt of this run.
    done = _finished_rows(paths)
    todo = [r for r in good if r.id not in done]
    by_id = {r.id: r for r in good}

    # Sources to embed: (key -> (url, id of the first row that uses it)).
    sources: dict[str, dict[str, Any]] = {}
    row_keys: dict[str, dict[str, str]] = {}
    for r in todo:
        if config.kind in ("reconstruct", "augment"):
            roles: tuple[str, ...] = ("image",)
        else:
            roles = LATENT_ROLES[r.op]
        keys: dict[str, str] = {}
        for role in roles:
            if role in ("image", "ref"):
                url, sid = (r.image, r.id) if role == "image" else (r.ref, f"{r.id}.ref")
            elif r.params[role] in by_id:
                other = by_id[r.params[role]]
                url, sid = other.image, other.id
            else:
                rejected.append(Rejection(r.row, r.id, SOURCE_FAILED, f"params.{role} names row "
                                          f"{r.params[role]!r}, whose files cannot be used", "params"))
                break
            keys[role] = embed_key(url)
            sources.setdefault(keys[role], {"key": keys[role], "url": url, "id": sid})
        else:
            row_keys[r.id] = keys
    todo = [r for r in todo if r.id in row_keys]
    if config.kind == "augment":
        # Partners come from every valid row, finished or not.
        for r in good:
            k = embed_key(r.image)
            row_keys.setdefault(r.id, {"image": k})
            sources.setdefault(k, {"key": k, "url": r.image, "id": r.id})

    cache = LatentCache(config.root)
    hits = cache.lookup(list(sources)) if sources else {}
    misses = [s for k, s in sources.items() if k not in hits]

    specs: list[dict[str, Any]] = []
    phases: list[list[str]] = []
    base = {"run_id": run_id, "root": config.root, "config": config.to_json(), "attempt": attempt,
            "generator": gen, "schedule": asdict(schedule), "embed_params": embed_params}

    def add_phase(kind_: str, groups: list[list[dict[str, Any]]], extra: dict[str, Any] | None = None) -> None:
        ids = []
        for items in groups:
            bid = _batch_id(kind_, len(specs), [json.dumps(i, sort_keys=True) for i in items])
            if ids:
                specs[-1]["next_batch"] = bid  # what the worker prefetches while this one runs
            specs.append({**base, **(extra or {}), "batch_id": bid, "kind": kind_, "items": items,
                          "next_batch": None})
            ids.append(bid)
        if ids:
            phases.append(ids)

    if config.kind == "reconstruct":
        items = [{"row": _row_json(r), "key": row_keys[r.id]["image"]} for r in todo]
        miss_keys = {s["key"] for s in misses}
        embed_items = [i for i in items if i["key"] in miss_keys]
        render_items = [i for i in items if i["key"] not in miss_keys]
        # Hits only render (one forward each), so they travel in larger batches.
        add_phase("reconstruct", _chunks(embed_items, config.batch_size)
                  + _chunks(render_items, config.batch_size * 8))
    else:
        if misses:
            add_phase("embed", _chunks([{"source": s} for s in misses], config.batch_size))
        if config.kind == "augment":
            add_phase("augment", _augment_groups(config, good, todo, row_keys, gen["num_ws"]))
        else:
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in todo:
                params = _op_params(config, r)
                groups[json.dumps([r.op, params], sort_keys=True)].append(
                    {"row": _row_json(r), "keys": row_keys[r.id], "params": params})
            add_phase("edit", [c for g in groups.values() for c in _chunks(g, config.batch_size)])

    counts = {"rows": validation.n_total, "valid": len(good), "rejected": len(rejected),
              "already_done": len(good) - len(todo), "sources": len(sources),
              "cache_hits": len(sources) - len(misses), "to_embed": len(misses),
              "batches": len(specs)}
    # Specs first, then the validation record: a crash in between only costs a re-plan.
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda s: _write_json(paths.spec_url(s["batch_id"]), s), specs))
    _write_json(paths.url("plan.json"), {"digest": digest, "config": config.to_json(), "generator": gen,
                                          "schedule": asdict(schedule), "phases": phases,
                                          "attempt": attempt, "counts": counts})
    _write_json(paths.record_url("validation"), {
        "batch_id": "validation", "kind": "validation", "attempt": attempt, "outputs": [],
        "errors": [_rejection_json(r) for r in rejected], "embedding_steps": 0, "edit_steps": 0,
        "embedded": 0, "cache_hits": 0, "seconds": 0.0})
    return PlanResult(run_id, paths.run_url, digest, attempt, phases, counts)


def _key(image_sha: str, mask_sha: str | None, gen_sha: str, algorithm: str, params: Mapping[str, Any]) -> str:
    """The cache key :func:`i2score.data.cache.store.make_source` gives, from hashes already computed."""
    from i2score.method.applications.reconstruct import ALGORITHM_VERSION

    return source_key({"image_sha256": image_sha, "mask_sha256": mask_sha, "generator_sha256": gen_sha,
                       "algorithm": algorithm, "algorithm_version": ALGORITHM_VERSION, "params": dict(params)})


def _op_params(config: JobConfig, r: ManifestRow) -> dict[str, Any]:
    from i2score.data.manifest.validate import OPS

    params = OPS[r.op].resolve_params(r.params)
    if r.op == "inpaint":
        params["k"] = int(r.params.get("k", config.k))
        params.setdefault("seed", config.seed)
    return params


def _augment_groups(config: JobConfig, good: list[ManifestRow], todo: list[ManifestRow],
                    row_keys: Mapping[str, Mapping[str, str]], num_ws: int) -> list[list[dict[str, Any]]]:
    from i2score.method.applications.augment import AUGMENT_OPS, plan_augmentations

    by_id = {r.id: r for r in good}
    augs = plan_augmentations([r.id for r in good], config.n_per_image, config.ops or AUGMENT_OPS,
                              seed=config.seed, num_ws=num_ws)
    todo_ids = {r.id for r in todo}
    items = []
    for a in augs:
        if a.source_id not in todo_ids:
            continue
        involved = [a.source_id] + ([a.partner_id] if a.partner_id else [])
        items.append({"augmentation": asdict(a),
                      "sources": {i: {"row": _row_json(by_id[i]), "key": row_keys[i]["image"]} for i in involved}})
    # One source image's variants stay in one batch (its record then finishes it whole).
    per_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        per_source[it["augmentation"]["source_id"]].append(it)
    groups: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for its in per_source.values():
        if current and len(current) + len(its) > config.batch_size * max(1, config.n_per_image):
            groups.append(current)
            current = []
        current.extend(its)
    if current:
        groups.append(current)
    return groups


def _finished_rows(paths: RunPaths) -> set[str]:
    """Ids of input rows with an output record in this run (from any attempt)."""
    done: set[str] = set()
    for rec in batch_records(paths):
        for o in rec.get("outputs", []):
            done.add(o.get("row_id") or o["id"])
    return done


def batch_records(paths: RunPaths) -> list[dict[str, Any]]:
    urls = [u for u in storage.list_files(paths.url("batches"), ".json")]
    got = read_all(urls)
    out = []
    for u in urls:
        data = got[u]
        if isinstance(data, BaseException):
            raise data
        out.append(json.loads(data))
    return out


# ----------------------------------------------------------------------------------------------
# Executing one batch
# ----------------------------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    """A batch's record (also written to ``batches/<batch-id>.json``)."""

    batch_id: str
    kind: str
    attempt: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    embedding_steps: int = 0
    edit_steps: int = 0
    embedded: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    #: ``host:pid/device`` of the process that ran the batch (which worker did what).
    worker: str = ""
    skipped: bool = False

    def small(self) -> dict[str, Any]:
        """The counts only (what a task returns)."""
        return {"batch_id": self.batch_id, "kind": self.kind, "outputs": len(self.outputs),
                "errors": len(self.errors), "embedding_steps": self.embedding_steps,
                "edit_steps": self.edit_steps, "embedded": self.embedded, "cache_hits": self.cache_hits,
                "seconds": round(self.seconds, 3), "worker": self.worker, "skipped": self.skipped}


def run_batch(root: str, run_id: str, batch_id: str, *, device: str | None = None,
              gpu_index: int | None = None) -> BatchOutcome:
    """Execute the batch ``batch_id`` of a planned run and write its record.

    ``device`` overrides the job's device; ``gpu_index`` picks this worker's GPU when the device
    is ``auto`` or ``cuda`` (see :func:`resolve_device`).

    Idempotent: when the record exists already (a retried task, a resumed run) nothing runs.
    Storage errors that are transient propagate (retry the batch); every other failure is
    recorded against the rows it affects.
    """
    paths = RunPaths(root, run_id)
    try:
        rec = read_json(paths.record_url(batch_id))
        return BatchOutcome(**{k: v for k, v in rec.items() if k in BatchOutcome.__dataclass_fields__},
                            skipped=True)
    except FileNotFoundError:
        pass
    spec = read_json(paths.spec_url(batch_id))
    config = JobConfig.from_json(spec["config"])
    ctx = worker_context(config.model, resolve_device(device or config.device, gpu_index))
    if ctx.generator_sha256 != spec["generator"]["sha256"]:
        raise RuntimeError(f"model {ctx.model!r} changed since the run was planned "
                           f"({ctx.generator_sha256[:12]} != {spec['generator']['sha256'][:12]})")
    t0 = time.perf_counter()
    start_prefetch(paths, spec.get("next_batch"))
    out = BatchOutcome(batch_id, spec["kind"], spec["attempt"],
                       worker=f"{socket.gethostname()}:{os.getpid()}/{ctx.device}")
    runner = {"reconstruct": _run_reconstruct, "embed": _run_reconstruct, "edit": _run_edit,
              "augment": _run_augment}[spec["kind"]]
    runner(spec, ctx, RunOutputs(root, run_id), out)
    out.seconds = time.perf_counter() - t0
    rec = asdict(out)
    rec.pop("skipped")
    _write_json(paths.record_url(batch_id), rec)
    return out


def record_batch_failure(root: str, run_id: str, batch_id: str, attempt: str, message: str) -> None:
    """Record every row of a batch whose task failed for good (retries exhausted) as an error,
    so the report names them. No batch record is written: the next attempt runs it again."""
    paths = RunPaths(root, run_id)
    spec = read_json(paths.spec_url(batch_id))
    rows: list[dict[str, Any]] = []
    for it in spec["items"]:
        if "row" in it:
            rows.append(it["row"])
        elif "source" in it:
            rows.append({"row": 0, "id": it["source"]["id"]})
        else:
            a = it["augmentation"]
            rows.append({"row": it["sources"][a["source_id"]]["row"]["row"], "id": a["id"]})
    _write_json(paths.url("batches", f"failed-{batch_id}-{attempt}.json"), {
        "batch_id": f"failed-{batch_id}", "kind": "failed", "attempt": attempt, "outputs": [],
        "errors": [_error(r, FAILED, f"batch {batch_id} failed: {message}") for r in rows],
        "embedding_steps": 0, "edit_steps": 0, "embedded": 0, "cache_hits": 0, "seconds": 0.0})


def _error(row: Mapping[str, Any] | ManifestRow, code: str, message: str, fld: str | None = None,
           url: str | None = None) -> dict[str, Any]:
    if isinstance(row, ManifestRow):
        return {"row": row.row, "id": row.id, "reason_code": code, "message": storage.redact(message),
                "field": fld, "url": url}
    return {"row": int(row.get("row", 0)), "id": row.get("id"), "reason_code": code,
            "message": storage.redact(message), "field": fld, "url": url}


def _failure_message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _load(rows: Sequence[ManifestRow], resolution: int, out: BatchOutcome,
          as_row: Callable[[ManifestRow], ManifestRow] | None = None) -> list[Any]:
    """Load rows (``None`` for a row that failed; its error is recorded)."""
    urls = [u for r in rows for u in r.urls()]
    fetched = read_all(urls)
    loaded = []
    for r in rows:
        try:
            loaded.append(load_row(r, resolution=resolution, fetched=fetched))
        except RowError as e:
            out.errors.append(_error(as_row(r) if as_row else r, e.reason_code, e.message, e.field, e.url))
            loaded.append(None)
    return loaded


def _isolated(fn: Callable[[], None], rows: Sequence[Mapping[str, Any] | ManifestRow], out: BatchOutcome) -> bool:
    """Run ``fn``; a non-transient exception becomes an error on each of ``rows``."""
    try:
        fn()
        return True
    except Exception as e:
        if storage.is_transient(e):
            raise
        log.exception("batch computation failed")
        out.errors.extend(_error(r, FAILED, _failure_message(e)) for r in rows)
        return False


def _render(ctx: WorkerContext, latents: Any) -> Any:
    import torch

    from i2score.generator.ops import batch_invariant

    lat = latents.to(ctx.G.device)
    with torch.no_grad(), batch_invariant(ctx.G.device):
        return ctx.G.synthesize(lat.w, lat.noise)


def _run_reconstruct(spec: Mapping[str, Any], ctx: WorkerContext, writer: RunOutputs, out: BatchOutcome) -> None:
    """Embed (or fetch from the cache) every item; ``reconstruct`` batches also write outputs."""
    import torch

    from i2score.method.applications.reconstruct import ALGORITHM_VERSION, reconstruct
    from i2score.data.latents import Latents

    gen, sched, params = spec["generator"], Schedule(**spec["schedule"]), spec["embed_params"]
    write_outputs = spec["kind"] == "reconstruct"
    if write_outputs:
        rows = [_row_from_json(i["row"]) for i in spec["items"]]
        keys = [i["key"] for i in spec["items"]]
    else:
        # Embedding a source for edits: errors name the row that uses it.
        rows = [ManifestRow(id=i["source"]["id"], image=i["source"]["url"], op="reconstruct")
                for i in spec["items"]]
        keys = [i["source"]["key"] for i in spec["items"]]
    cache = LatentCache(spec["root"])
    hits = cache.lookup(keys)
    latents: dict[str, Any] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for k in keys:
        if k in hits and k not in latents:
            lat = cache.get(k)
            if lat is not None:
                latents[k] = lat
                e = hits[k]
                metrics[k] = {**{m: v for m, v in e.metrics.items() if v is not None}, "cached": True}
    out.cache_hits = len(latents)
    todo = [i for i, k in enumerate(keys) if k not in latents]
    loaded = _load([rows[i] for i in todo], gen["resolution"], out) if todo else []
    ok = [(i, lr) for i, lr in zip(todo, loaded) if lr is not None]
    # Identical images in one batch are embedded once.
    unique: dict[str, Any] = {}
    for i, lr in ok:
        unique.setdefault(keys[i], lr)
    if unique:
        ukeys = list(unique)

        def embed() -> None:
            x = torch.stack([unique[k].image for k in ukeys]).to(ctx.G.device)
            res = reconstruct(x, ctx.G, steps_w=sched.steps_w, steps_n=sched.steps_n, seed=params["seed"],
                              lr_w=sched.lr_w, lr_n=sched.lr_n, vgg=ctx.vgg, lpips=ctx.lpips or False)
            sources = []
            for k in ukeys:
                key, src = make_source(image_bytes=unique[k].image_bytes, mask_bytes=None,
                                       generator_sha256=gen["sha256"], algorithm=RECONSTRUCT_ALGORITHM,
                                       params=params, algorithm_version=ALGORITHM_VERSION,
                                       generator_id=gen["id"], source_id=unique[k].row.id)
                if key != k:
                    raise RuntimeError(f"cache key of {unique[k].row.id!r} changed since planning "
                                       "(was the file rewritten?)")
                sources.append(src)
            timings = [{m: v for m, v in mt.items() if m in ("seconds", "steps_w", "steps_n", "steps")}
                       for mt in res.metrics]
            cache.put_many(ukeys, res.latents.to("cpu"), sources=sources, metrics=res.metrics, timings=timings)
            for j, k in enumerate(ukeys):
                latents[k] = res.latents[j].to("cpu")
                metrics[k] = {**res.metrics[j], "cached": False}
                out.embedding_steps += int(res.metrics[j]["steps"])
            out.embedded += len(ukeys)

        _isolated(embed, [unique[k].row for k in ukeys], out)
    if not write_outputs:
        return
    ready = [i for i, k in enumerate(keys) if k in latents]
    if not ready:
        return
    images = _render(ctx, Latents.stack([latents[keys[i]] for i in ready]))
    for j, i in enumerate(ready):
        r, k = rows[i], keys[i]
        url = writer.write_image(r.id, images[j])
        m = metrics[k]
        out.outputs.append({"id": r.id, "row_id": r.id, "op": "reconstruct", "output_url": url,
                            "source_ids": [r.id], "source_urls": [r.image], "cache_keys": [k],
                            "inputs": {"image": r.image},
                            "params": params, "psnr": m.get("psnr_wn"), "lpips": m.get("lpips"),
                            "ssim": m.get("ssim"), "metrics": _jsonable(m)})


def _jsonable(m: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in m.items():
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            out[k] = v
        elif isinstance(v, float):
            out[k] = v if math.isfinite(v) else None
        else:
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                out[k] = str(v)
    return out


def _cached_latents(cache: LatentCache, keys: Iterable[str]) -> dict[str, Any]:
    got = {}
    for k in dict.fromkeys(keys):
        lat = cache.get(k)
        if lat is not None:
            got[k] = lat
    return got


def _run_edit(spec: Mapping[str, Any], ctx: WorkerContext, writer: RunOutputs, out: BatchOutcome) -> None:
    """One homogeneous batch of edit rows (same op and params)."""
    from i2score.data.latents import Latents

    items = spec["items"]
    rows = [_row_from_json(i["row"]) for i in items]
    op, params = rows[0].op, items[0]["params"]
    cache = LatentCache(spec["root"])
    lat = _cached_latents(cache, [k for i in items for k in i["keys"].values()])
    ready_idx = []
    for idx, it in enumerate(items):
        missing = [role for role, k in it["keys"].items() if k not in lat]
        if missing:
            out.errors.append(_error(rows[idx], SOURCE_FAILED,
                                     f"the {' and '.join(missing)} image(s) of this row have no embedding "
                                     "(their embedding failed: see the errors of the rows that use them)"))
        else:
            ready_idx.append(idx)
    loaded = _load([rows[i] for i in ready_idx], spec["generator"]["resolution"], out)
    ok = [(i, lr) for i, lr in zip(ready_idx, loaded) if lr is not None]
    if not ok:
        return
    roles = LATENT_ROLES[op]
    stacked = {role: Latents.stack([lat[items[i]["keys"][role]] for i, _ in ok]) for role in roles}
    sched = Schedule(**spec["schedule"])

    def edit() -> None:
        images, metrics, suffixes, keys_out = _apply_op(op, params, [lr for _, lr in ok], stacked, ctx, sched, spec)
        per_row = len(images) // len(ok)
        for j, (i, lr) in enumerate(ok):
            r = rows[i]
            for s in range(per_row):
                m = metrics[j * per_row + s]
                oid = f"{r.id}{suffixes[s]}"
                url = writer.write_image(oid, images[j * per_row + s])
                out.edit_steps += int(m.get("steps_w", 0) or 0) + int(m.get("steps_n", 0) or 0)
                metric = PSNR_METRIC.get(op)
                out.outputs.append({
                    "id": oid, "row_id": r.id, "op": op, "output_url": url,
                    "source_ids": [r.id] + [r.params[x] for x in ("a", "b") if x in r.params],
                    "source_urls": r.urls(), "params": params,
                    "inputs": {"image": r.image, "ref": r.ref, "mask": r.mask},
                    "cache_keys": list(items[i]["keys"].values()) + keys_out[j * per_row + s: j * per_row + s + 1],
                    "psnr": m.get(metric) if metric else None, "lpips": None, "ssim": None,
                    "metrics": _jsonable(m)})

    _isolated(edit, [lr.row for _, lr in ok], out)


def _apply_op(op: str, params: Mapping[str, Any], loaded: Sequence[Any], lat: Mapping[str, Any],
              ctx: WorkerContext, sched: Schedule, spec: Mapping[str, Any]
              ) -> tuple[Any, list[dict[str, Any]], list[str], list[str]]:
    """Run ``op`` on a batch: returns (images ``[B*m, 3, R, R]``, metrics, output id suffixes
    (``m`` per row), cache keys written (one per output, may be empty))."""
    import torch

    from i2score.method.applications import edits

    dev = ctx.G.device
    x = torch.stack([lr.image for lr in loaded]).to(dev)

    def ref() -> Any:
        return torch.stack([lr.ref for lr in loaded]).to(dev)

    def mask() -> Any:
        return torch.stack([lr.mask for lr in loaded]).to(dev)

    ew, en = sched.edit_steps_w, sched.edit_steps_n
    if op == "reconstruct":
        return _render(ctx, lat["image"]), [{} for _ in loaded], [""], []
    if op == "inpaint":
        return _inpaint(loaded, x, mask(), params, ctx, sched, spec)
    if op == "crossover":
        res = edits.crossover(x, ref(), mask(), lat["ref"], ctx.G, blur_sigma=params["blur_sigma"],
                              steps_w=ew, steps_n=en, vgg=ctx.vgg)
    elif op == "scribble":
        res = edits.scribble_edit(lat["image"], ref(), mask(), ctx.G, layers=params["layers"], reg=params["reg"],
                                  steps_w=ew, steps_n=en, vgg=ctx.vgg)
    elif op == "style_transfer":
        res = edits.local_style_transfer(lat["image"], x, ref(), mask(), ctx.G, steps_w=ew, steps_n=en, vgg=ctx.vgg)
    elif op == "attribute_transfer":
        res = edits.attribute_transfer(lat["image"], lat["ref"], mask(), ctx.G, layer=params["layer"],
                                       mode=params["mode"])
    elif op == "morph":
        res = edits.morph(lat["image"], lat["ref"], params["t"], ctx.G)
    elif op == "style_mix":
        res = edits.style_mix(lat["image"], lat["ref"], min(params["k"], ctx.G.num_ws), ctx.G)
    elif op == "expression_transfer":
        res = edits.expression_transfer(lat["image"], lat["a"], lat["b"], params["strength"], ctx.G)
    else:  # pragma: no cover - the manifest validator knows the ops
        raise ValueError(f"unknown op {op!r}")
    return res.images, res.metrics, [""], []


def _inpaint(loaded: Sequence[Any], x: Any, masks: Any, params: Mapping[str, Any], ctx: WorkerContext,
             sched: Schedule, spec: Mapping[str, Any]) -> tuple[Any, list[dict[str, Any]], list[str], list[str]]:
    """Inpainting with its own cache entries (one per solution): rows whose ``k`` solutions are
    all cached are rendered, the others optimised together."""

    from i2score.method.applications.reconstruct import ALGORITHM_VERSION, inpaint
    from i2score.data.latents import Latents

    gen = spec["generator"]
    k, seed = int(params["k"]), int(params["seed"])
    cache = LatentCache(spec["root"])
    base = {"steps_w": sched.inpaint_steps_w, "steps_n": sched.inpaint_steps_n, "seed": seed}
    keys, sources = [], []
    for lr in loaded:
        for j in range(k):
            key, src = make_source(image_bytes=lr.image_bytes, mask_bytes=lr.mask_bytes,
                                   generator_sha256=gen["sha256"], algorithm=INPAINT_ALGORITHM,
                                   params={**base, "solution": j}, algorithm_version=ALGORITHM_VERSION,
                                   generator_id=gen["id"], source_id=lr.row.id)
            keys.append(key)
            sources.append(src)
    cached = _cached_latents(cache, keys)
    need = [b for b in range(len(loaded)) if any(keys[b * k + j] not in cached for j in range(k))]
    metrics: list[dict[str, Any]] = [{} for _ in keys]
    if need:
        res = inpaint(x[need], masks[need], ctx.G, k=k, seed=seed, steps_w=sched.inpaint_steps_w,
                      steps_n=sched.inpaint_steps_n, vgg=ctx.vgg)
        idx = [b * k + j for b in need for j in range(k)]
        cache.put_many([keys[i] for i in idx], res.latents.to("cpu"), sources=[sources[i] for i in idx],
                       metrics=[{} for _ in idx], timings=[{"steps_w": m["steps_w"], "steps_n": m["steps_n"]}
                                                           for m in res.metrics])
        for n, i in enumerate(idx):
            cached[keys[i]] = res.latents[n].to("cpu")
            metrics[i] = res.metrics[n]
    finals = _render(ctx, Latents.stack([cached[key] for key in keys]))
    hole = masks.repeat_interleave(k, dim=0)
    xs = x.repeat_interleave(k, dim=0)
    composites = finals * hole + xs * (1 - hole)
    for i, m in enumerate(metrics):
        if not m:
            metrics[i] = {"solution": i % k, "cached": True}
    return composites, metrics, [f"-k{j}" for j in range(k)], keys


def _run_augment(spec: Mapping[str, Any], ctx: WorkerContext, writer: RunOutputs, out: BatchOutcome) -> None:
    """Augmentations of a group of source images (each source's variants whole)."""
    from i2score.method.applications.augment import Augmentation, run_augmentations

    items = spec["items"]
    cache = LatentCache(spec["root"])
    srcs: dict[str, dict[str, Any]] = {}
    for it in items:
        srcs.update(it["sources"])
    lat_by_key = _cached_latents(cache, [s["key"] for s in srcs.values()])
    need_pixels = {i for it in items if it["augmentation"]["op"] == "crossover" for i in it["sources"]}
    rows = {i: _row_from_json(s["row"]) for i, s in srcs.items()}
    pix_ids = sorted(need_pixels)
    loaded = dict(zip(pix_ids, _load([rows[i] for i in pix_ids], spec["generator"]["resolution"], out)))
    augs, ok_items = [], []
    for it in items:
        a = Augmentation(**it["augmentation"])
        involved = list(it["sources"])
        if any(srcs[i]["key"] not in lat_by_key for i in involved):
            out.errors.append(_error(it["sources"][a.source_id]["row"] | {"id": a.id}, SOURCE_FAILED,
                                     f"augmentation {a.id}: an image it uses ({', '.join(involved)}) has no embedding"))
            continue
        if a.op == "crossover" and any(loaded.get(i) is None for i in involved):
            out.errors.append(_error(it["sources"][a.source_id]["row"] | {"id": a.id}, SOURCE_FAILED,
                                     f"augmentation {a.id}: an image it uses cannot be read"))
            continue
        augs.append(a)
        ok_items.append(it)
    if not augs:
        return
    sched = Schedule(**spec["schedule"])

    def augment() -> None:
        res = run_augmentations(augs, {i: lat_by_key[s["key"]] for i, s in srcs.items() if s["key"] in lat_by_key},
                                {i: lr.image for i, lr in loaded.items() if lr is not None}, ctx.G,
                                steps_w=sched.edit_steps_w, steps_n=sched.edit_steps_n, vgg=ctx.vgg)
        for j, (a, it) in enumerate(zip(augs, ok_items)):
            url = writer.write_image(a.id, res.images[j])
            m = res.metrics[j]
            out.edit_steps += int(m.get("steps_w", 0) or 0) + int(m.get("steps_n", 0) or 0)
            out.outputs.append({
                # row_id: the source row; its variants are finished together (one record).
                "id": a.id, "row_id": a.source_id, "op": f"augment/{a.op}", "output_url": url,
                "source_ids": [i for i in (a.source_id, a.partner_id) if i],
                "source_urls": [srcs[i]["row"]["image"] for i in (a.source_id, a.partner_id) if i],
                "inputs": {"image": srcs[a.source_id]["row"]["image"],
                           "ref": srcs[a.partner_id]["row"]["image"] if a.partner_id else None},
                "cache_keys": [srcs[i]["key"] for i in (a.source_id, a.partner_id) if i],
                "params": a.params, "psnr": None, "lpips": None, "ssim": None, "metrics": _jsonable(m),
                "source_id": a.source_id})

    _isolated(augment, [{"row": it["sources"][a.source_id]["row"]["row"], "id": a.id}
                        for a, it in zip(augs, ok_items)], out)


__all__ = [
    "FAILED",
    "JOB_KINDS",
    "SCHEDULES",
    "SOURCE_FAILED",
    "BatchOutcome",
    "JobConfig",
    "PlanResult",
    "RunPaths",
    "Schedule",
    "batch_records",
    "plan_run",
    "read_all",
    "read_json",
    "record_batch_failure",
    "resolve_device",
    "run_batch",
    "worker_context",
]
