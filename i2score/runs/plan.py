"""Planning a run: validate the manifest, hash every input, look up the cache and write the batch
specs, so that executing a batch needs nothing but its spec.

Resumability comes from three facts: the run id is a digest of the job (manifest bytes, model
weights, schedule, seed and job parameters), a batch record is written only after its outputs
and cache entries, and planning skips rows that already have an output record. Re-running a
killed run therefore redoes only unfinished batches (their finished embeddings are cache hits),
and re-running a finished run (``summary.json`` with the same digest) does nothing, or retries
only its failed rows when it has some.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from i2score.data import storage
from i2score.data.align import ALIGN_VERSION
from i2score.data.cache import LatentCache, source_key
from i2score.data.manifest import (
    Manifest,
    ManifestRow,
    Rejection,
    RowError,
    absolute_url,
    load_row,
    validate_manifest,
)
from i2score.data.manifest.discover import is_glob, is_manifest_source
from i2score.encoders.checkpoints import load_encoder
from i2score.encoders.registry import default_encoder_for
from i2score.features import load_vgg16
from i2score.generator.checkpoints import load_generator
from i2score.generator.network import StyleGAN2
from i2score.generator.registry import DEFAULT_MODEL
from i2score.method.applications import ALGORITHM_VERSION
from i2score.method.batch_size import largest_fitting_batch
from i2score.runs.augment import plan_augmentations
from i2score.runs.config import (
    WARM_START_VARIES,
    EngineOptions,
    JobConfig,
    Schedule,
    engine_options,
    resolve_device,
)
from i2score.runs.ops import AUGMENT_OPS, AUGMENTATIONS, CATALOG, OPS, generator_limits, stage_steps
from i2score.runs.prefetch import read_all
from i2score.runs.records import (
    SOURCE_FAILED,
    GeneratorRecord,
    RunPaths,
    digest,
    finished_rows,
    read_json,
    row_to_json,
    write_json,
)
from i2score.runs.secret_urls import mark_secret_urls, source_json

#: Rows whose files planning reads at a time (to hash them).
PLAN_READ_CHUNK = 256


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
    #: batch id -> its step budget (:func:`planned_steps`) and its kind, for progress displays.
    budgets: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def spec_row(r: ManifestRow) -> dict[str, Any]:
    """A row as a batch spec holds it, its URLs with credentials marked for the worker to read
    from the manifest (:func:`i2score.runs.secret_urls.mark_secret_urls`)."""
    return mark_secret_urls(row_to_json(r), r)


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _batch_id(kind: str, index: int, members: Iterable[str]) -> str:
    return f"{kind}-{index:05d}-{digest(sorted(members))[:10]}"


@dataclass(frozen=True)
class RunIdentity:
    """Which run a job is: its id and the digest of everything that changes its results."""

    run_id: str
    digest: str


def run_identity(config: JobConfig, G: StyleGAN2 | None = None, manifest_bytes: bytes | None = None) -> RunIdentity:
    """The run id of ``config`` (``config.run_id``, else ``<kind>-<digest[:12]>``) and its job
    digest: manifest bytes (of a folder or glob input, the CSV of its images, so an image added
    there makes a new run), generator weights, job parameters and schedule. Computed before
    anything of the run is written, so a caller can take the run's lease first (see
    :mod:`i2score.runs.lease`). ``G`` is the job's generator and ``manifest_bytes`` the
    manifest's bytes when already loaded."""
    schedule = config.resolved_schedule()
    if G is None:
        # The weights hash is all that is needed; load on CPU.
        G = load_generator(config.model or DEFAULT_MODEL, device="cpu")
    assert G.weights_sha256 is not None, "load_generator sets the weights hash"
    if manifest_bytes is None:
        manifest_bytes = config.manifest_bytes()
    job_digest = digest([b"i2score.job/1", manifest_bytes, G.weights_sha256, job_identity(config),
                         schedule_identity(schedule)])
    return RunIdentity(config.run_id or f"{config.kind}-{job_digest[:12]}", job_digest)


def finished_summary(root: str, identity: RunIdentity) -> dict[str, Any] | None:
    """The summary of the run when it is finished: ``summary.json`` of the same job digest with
    no failed row (a run with failed rows is not finished: re-running retries those rows)."""
    try:
        summary: dict[str, Any] = read_json(RunPaths(root, identity.run_id).url("summary.json"))
    except FileNotFoundError:
        return None
    if summary.get("digest") == identity.digest and not summary["rows"]["failed"]:
        return summary
    return None


def plan_run(config: JobConfig, *, attempt: str | None = None, identity: RunIdentity | None = None,
             lease_generation: int | None = None) -> PlanResult:
    """Validate the manifest, hash every input, look up the cache and write the batch specs.

    Rows that already have an output in this run (an earlier, interrupted attempt) are
    skipped; embeddings already in the cache are not planned again (reconstruct runs render
    them in larger batches). Returns a :class:`PlanResult`; when ``summary.json`` of the same
    job exists and no row failed, the run is finished and nothing is written (``noop``); when
    rows failed, only those are planned again.

    ``identity`` is the run's :func:`run_identity` when the caller computed it (to take the
    run's lease); ``attempt`` and ``lease_generation`` name the attempt and the lease
    generation it holds. Batch specs carry both, so a batch of an attempt that lost its lease
    refuses to run (:func:`i2score.runs.lease.check_current`).
    """
    attempt = attempt or uuid.uuid4().hex[:12]
    schedule = config.resolved_schedule()
    model = config.model or DEFAULT_MODEL
    # The weights hash enters every cache key; the plan only needs the header, so load on CPU.
    G = load_generator(model, device="cpu")
    assert G.weights_sha256 is not None, "load_generator sets the weights hash"
    gen: GeneratorRecord = {"id": model, "sha256": G.weights_sha256, "resolution": G.resolution,
                            "num_ws": G.num_ws}
    if not G.noise_shapes:  # StyleGAN3: no noise inputs, so reconstruct's noise stage is skipped
        schedule = replace(schedule, steps_n=0)
    init = schedule.resolved_init(G.domain)
    encoder = plan_encoder(config, model, G) if init == "encoder" else None
    device = resolve_device(config.device)
    engine = engine_options(config, device)
    batch_size = resolve_batch_size(config, G, engine, device)
    manifest_bytes = config.manifest_bytes()
    inputs = config.input_policy()
    planned = run_identity(config, G, manifest_bytes)
    if identity is not None and identity != planned:
        # The lease was taken for the job as it was; planning another manifest under it would
        # mix two jobs in one run folder.
        raise RuntimeError(f"the manifest {storage.redact(config.manifest)} changed since run "
                           f"{identity.run_id} was identified; run the job again")
    identity = planned
    run_id, job_digest = identity.run_id, identity.digest
    paths = RunPaths(config.root, run_id)

    summary = finished_summary(config.root, identity)
    if summary is not None:
        return PlanResult(run_id, paths.run_url, job_digest, attempt, [], {}, noop=True, summary=summary)

    kind = "reconstruct" if config.kind == "augment" else config.kind
    # Layer and W+-row parameters are checked against this generator: a bad one is a rejected
    # row now, not a failed batch later.
    validation = validate_manifest(Manifest.from_bytes(manifest_bytes, absolute_url(config.manifest)),
                                   CATALOG.for_generator(generator_limits(G, model)), kind=kind, inputs=inputs)
    rejected = list(validation.rejected)
    # Which rows are FFHQ-aligned (the job's --align, or a row's align column).
    aligned: dict[str, bool] = {}
    rows = []
    for r in validation.rows:
        try:
            aligned[r.id] = config.aligns(r)
        except RowError as e:
            rejected.append(Rejection(r.row, r.id, e.reason_code, e.message, e.field, e.url))
            continue
        rows.append(r)

    # Every row's files once: their bytes make the cache keys.
    sha: dict[str, str] = {}
    good: list[ManifestRow] = []
    # A chunk at a time: only hashes are kept, so memory does not grow with the dataset.
    for chunk in _chunks(rows, PLAN_READ_CHUNK):
        fetched = read_all([u for r in chunk for u in r.urls()], inputs)
        for r in chunk:
            if any(isinstance(fetched.get(u), BaseException) for u in r.urls()):
                try:
                    load_row(r, resolution=gen["resolution"], fetched=fetched, inputs=inputs)
                except RowError as e:
                    rejected.append(Rejection(r.row, r.id, e.reason_code, e.message, e.field, e.url))
                    continue
            for u in r.urls():
                got = fetched[u]
                if isinstance(got, bytes):
                    sha.setdefault(u, hashlib.sha256(got).hexdigest())
            good.append(r)
        del fetched

    embed_params = schedule.reconstruct_params(config.seed, domain=G.domain,
                                               encoder_sha256=encoder["sha256"] if encoder else None)
    if engine.precision != "fp32":
        embed_params["precision"] = engine.precision  # bf16 gives other (nearby) bits
    if not G.noise_shapes:
        # StyleGAN3 has no noise inputs: reconstruct runs the W+ stage only (steps_n is 0
        # above), so lr_n changes nothing, and the lineage says why.
        embed_params.pop("lr_n", None)
        embed_params["noise_stage"] = f"skipped: {G.family} has no noise inputs (W+ only)"

    def embed_key(url: str, align: bool) -> str:
        return cache_key_of(sha[url], None, gen["sha256"], OPS["reconstruct"].algorithm,
                            aligned_params(embed_params, align))

    # Rows already finished by an earlier attempt of this run.
    done = finished_rows(paths)
    todo = [r for r in good if r.id not in done]
    by_id = {r.id: r for r in good}

    # Sources to embed: (key -> (url, id of the first row that uses it, where the url comes from)).
    sources: dict[str, dict[str, Any]] = {}
    row_keys: dict[str, dict[str, str]] = {}
    for r in todo:
        roles = ("image",) if config.kind in ("reconstruct", "augment") else OPS[r.op].latents
        keys: dict[str, str] = {}
        for role in roles:
            if role in ("image", "ref"):
                url = r.image if role == "image" else r.ref
                sid = r.id if role == "image" else f"{r.id}.ref"
                assert url is not None, "validation requires a ref of every op whose roles name it"
                origin, field = r, role
            elif r.params[role] in by_id:
                other = by_id[r.params[role]]
                url, sid = other.image, other.id
                origin, field = other, "image"
            else:
                rejected.append(Rejection(r.row, r.id, SOURCE_FAILED, f"params.{role} names row "
                                          f"{r.params[role]!r}, whose files cannot be used", "params"))
                break
            keys[role] = embed_key(url, aligned[origin.id])
            sources.setdefault(keys[role], _aligned_item(source_json(keys[role], url, sid, origin, field),
                                                         aligned[origin.id]))
        else:
            row_keys[r.id] = keys
    todo = [r for r in todo if r.id in row_keys]
    if config.kind == "augment":
        # Partners come from every valid row, finished or not.
        for r in good:
            k = embed_key(r.image, aligned[r.id])
            row_keys.setdefault(r.id, {"image": k})
            sources.setdefault(k, _aligned_item(source_json(k, r.image, r.id, r, "image"), aligned[r.id]))

    cache = LatentCache(config.root)
    hits = cache.lookup(list(sources)) if sources else {}
    misses = [s for k, s in sources.items() if k not in hits]

    specs: list[dict[str, Any]] = []
    phases: list[list[str]] = []
    warm = {k: v for a in (False, True)
            for k, v in warm_start_sources(cache, [s for s in misses if bool(s.get("align")) == a], sha,
                                           gen["sha256"], aligned_params(embed_params, a)).items()}
    for src in misses:
        if src["key"] in warm:
            src["warm"] = warm[src["key"]]
    # Specs (like every record) are written redacted; inputs with credentials are referenced by
    # manifest row, and the worker checks the manifest against manifest_sha256 (i2score.runs.secret_urls).
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    base = {"run_id": run_id, "root": config.root, "config": config.to_json(), "attempt": attempt,
            "lease_generation": lease_generation,
            "manifest_sha256": manifest_sha256,
            "generator": gen, "schedule": asdict(schedule), "embed_params": embed_params, "init": init,
            "encoder": encoder, "engine": asdict(engine)}

    def add_phase(kind_: str, groups: list[list[dict[str, Any]]], extra: dict[str, Any] | None = None,
                  render_only: int = 0) -> None:
        """``render_only``: how many of the last groups only render (cache hits)."""
        ids: list[str] = []
        for g, items in enumerate(groups):
            bid = _batch_id(kind_, len(specs), [json.dumps(i, sort_keys=True) for i in items])
            if ids:
                specs[-1]["next_batch"] = bid  # what the worker prefetches while this one runs
            specs.append({**base, **(extra or {}), "batch_id": bid, "kind": kind_, "items": items,
                          "next_batch": None,
                          "planned_steps": planned_steps(kind_, items, schedule,
                                                         embeds=g < len(groups) - render_only)})
            ids.append(bid)
        if ids:
            phases.append(ids)

    if config.kind == "reconstruct":
        items = [_aligned_item({"row": spec_row(r), "key": row_keys[r.id]["image"]}, aligned[r.id]) for r in todo]
        miss_keys = {s["key"] for s in misses}
        embed_items = [{**i, "warm": warm[i["key"]]} if i["key"] in warm else i for i in items
                       if i["key"] in miss_keys]
        render_items = [i for i in items if i["key"] not in miss_keys]
        # Hits only render (one forward each), so they travel in larger batches.
        render_groups = _chunks(render_items, batch_size * 8)
        add_phase("reconstruct", _chunks(embed_items, batch_size) + render_groups, render_only=len(render_groups))
    else:
        if misses:
            add_phase("embed", _chunks([{"source": s} for s in misses], batch_size))
        if config.kind == "augment":
            add_phase("augment", _augment_groups(config, good, todo, row_keys, gen["num_ws"], batch_size, aligned))
        else:
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in todo:
                params = OPS[r.op].resolve_params(r.params, config)
                groups[json.dumps([r.op, params], sort_keys=True)].append(
                    _aligned_item({"row": spec_row(r), "keys": row_keys[r.id], "params": params}, aligned[r.id]))
            add_phase("edit", [c for g in groups.values() for c in _chunks(g, batch_size)])

    counts = {"rows": validation.n_total, "valid": len(good), "rejected": len(rejected),
              "already_done": len(good) - len(todo), "sources": len(sources),
              "cache_hits": len(sources) - len(misses), "to_embed": len(misses),
              "batches": len(specs)}
    # Specs first, then the validation record: a crash in between only costs a re-plan.
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda s: write_json(paths.spec_url(s["batch_id"]), s), specs))
    write_json(paths.url("plan.json"), {"digest": job_digest, "config": config.to_json(), "generator": gen,
                                          "manifest_sha256": manifest_sha256,
                                          "schedule": asdict(schedule), "init": init, "encoder": encoder,
                                          "engine": asdict(engine), "phases": phases,
                                          "attempt": attempt, "lease_generation": lease_generation,
                                          "counts": counts})
    # One validation record per attempt: it also marks that the attempt planned (summary "attempts").
    write_json(paths.record_url(f"validation-{attempt}"), {
        "batch_id": f"validation-{attempt}", "kind": "validation", "attempt": attempt, "outputs": [],
        "errors": [asdict(r) for r in rejected], "embedding_steps": 0, "edit_steps": 0,
        "embedded": 0, "cache_hits": 0, "seconds": 0.0})
    return PlanResult(run_id, paths.run_url, job_digest, attempt, phases, counts,
                      budgets={s["batch_id"]: s["planned_steps"] for s in specs},
                      kinds={s["batch_id"]: s["kind"] for s in specs})


def planned_steps(kind: str, items: Sequence[Mapping[str, Any]], schedule: Schedule, *, embeds: bool = True) -> int:
    """The optimisation steps a batch of ``items`` runs at most (its progress budget): the
    embedding stages for a batch that embeds (``embeds``), the op's stage (:attr:`Op.optimises`)
    for edits and augmentations; 0 for batches that only render (cache hits, forward-only ops).
    A batch runs its images together, so this does not grow with the batch size;
    converge-stopping and warm starts end sooner."""
    if kind in ("reconstruct", "embed"):
        return schedule.steps_w + schedule.steps_n if embeds and items else 0
    if kind == "edit":
        return max(OPS[i["row"]["op"]].planned_steps(schedule) for i in items)
    if kind == "augment":
        return max(stage_steps(AUGMENTATIONS[i["augmentation"]["op"]].optimises, schedule) for i in items)
    return 0


#: Job fields that do not change what a run computes (where, how fast, under which id).
_NOT_IDENTITY = ("run_id", "device", "batch_size", "root", "channels_last", "compile")


def job_identity(config: JobConfig) -> dict[str, Any]:
    """The job fields that make a run's id: everything that changes its results. Fields added
    later enter only when set, so earlier runs keep their ids (and finished ones stay no-ops)."""
    defaults = JobConfig(config.kind, config.manifest, config.root).to_json()
    added = {"init", "encoder", "precision", "allowed_inputs", "max_input_bytes", "masks", "align", "paste_back",
             "min_realism", "realism_k", "realism_reference"}
    identity = {k: v for k, v in config.to_json().items()
                if k not in _NOT_IDENTITY and not (k in added and v == defaults[k])}
    # What w_closeness resolves to is in the schedule's identity; "none" and an unset default of
    # "none" are one job.
    identity.pop("w_closeness", None)
    # A presigned manifest URL changes with every signature; its bytes are in the digest anyway.
    identity["manifest"] = storage.redact(identity["manifest"])
    if not is_manifest_source(config.manifest) and not is_glob(config.manifest):
        identity["manifest"] = identity["manifest"].rstrip("/")  # photos/ and photos: one folder, one job
    if identity.get("masks"):
        identity["masks"] = identity["masks"].rstrip("/")
    return identity


def schedule_identity(schedule: Schedule) -> dict[str, Any]:
    """:func:`job_identity` for the schedule: its fields, the ones added later only when set."""
    defaults = asdict(Schedule("", 0, 0, 0, 0, 0, 0))
    added = {"init", "converge", "patience", "min_delta_db", "check_every", "w_offset_weight", "pnorm_weight"}
    return {k: v for k, v in asdict(schedule).items() if not (k in added and v == defaults[k])}


#: ``--batch-size auto`` on a CPU, where memory is not what limits a batch (time is).
CPU_AUTO_BATCH = 8


def resolve_batch_size(config: JobConfig, G: StyleGAN2, engine: EngineOptions, device: str) -> int:
    """``config.batch_size``, with ``auto`` resolved: on CUDA the largest batch whose W+ step
    fits in memory (probed with real steps), elsewhere :data:`CPU_AUTO_BATCH`."""
    if config.batch_size != "auto":
        return int(config.batch_size)
    if not device.startswith("cuda"):
        return CPU_AUTO_BATCH
    import copy

    G_dev = copy.deepcopy(G).to(device)
    return largest_fitting_batch(G_dev, load_vgg16(device=device), device, autocast_dtype=engine.autocast_dtype,
                                 channels_last=engine.channels_last)


def plan_encoder(config: JobConfig, model: str, G: StyleGAN2) -> dict[str, str]:
    """``{"id", "sha256"}`` of the encoder an encoder-started run uses (``config.encoder``, else
    the generator's default); a ValueError when there is none or it does not fit the generator."""
    source = config.encoder or default_encoder_for(model)
    if source is None:
        raise ValueError(f"schedule {config.schedule!r} starts embeddings from an encoder, but generator "
                         f"{model!r} has no default encoder: pass --encoder NAME|PATH, or --init mean")
    E = load_encoder(source, device="cpu")
    if (E.config.n_styles, E.config.w_dim) != (G.num_ws, G.w_dim):
        raise ValueError(f"encoder {source!r} predicts [{E.config.n_styles}, {E.config.w_dim}] codes; generator "
                         f"{model!r} takes [{G.num_ws}, {G.w_dim}]")
    assert E.weights_sha256 is not None, "load_encoder sets the weights hash"
    return {"id": str(source), "sha256": E.weights_sha256}


def warm_start_sources(cache: LatentCache, misses: Sequence[Mapping[str, Any]], sha: Mapping[str, str],
                       gen_sha: str, params: Mapping[str, Any]) -> dict[str, str]:
    """For each embedding to compute, the cached embedding of the same image and settings with
    the most steps it can continue (see :func:`i2score.method.applications.reconstruct`'s
    ``resume``): ``{key: warm_key}``, only where there is one."""
    if not misses:
        return {}
    algorithm = OPS["reconstruct"].algorithm
    wanted = {s["key"]: {"image_sha256": sha[s["url"]], "mask_sha256": None, "generator_sha256": gen_sha,
                         "algorithm": algorithm, "algorithm_version": ALGORITHM_VERSION, "params": dict(params)}
              for s in misses}
    found = cache.warm_starts(wanted, WARM_START_VARIES)
    out: dict[str, str] = {}
    steps_w, steps_n = int(params["steps_w"]), int(params["steps_n"])
    for key, entries in found.items():
        best: tuple[int, int] | None = None
        for e in entries:
            w, n = int(e.params["steps_w"]), int(e.params["steps_n"])
            if w > steps_w or (w == steps_w and n > steps_n):
                continue  # a stage cannot be rewound
            rank = (w, n if w == steps_w else 0)
            if best is None or rank > best:
                best, out[key] = rank, e.key
    return out


def aligned_params(embed_params: Mapping[str, Any], align: bool) -> dict[str, Any]:
    """The embedding parameters of an image, aligned or not: an aligned image is another input,
    so its embedding gets its own cache key (``align``: :data:`~i2score.data.align.ALIGN_VERSION`)."""
    return {**embed_params, "align": ALIGN_VERSION} if align else dict(embed_params)


def _aligned_item(item: dict[str, Any], align: bool) -> dict[str, Any]:
    """A spec item, marked ``align: true`` when its image is aligned (unmarked otherwise, so the
    specs of unaligned runs are unchanged)."""
    return {**item, "align": True} if align else item


def cache_key_of(image_sha: str, mask_sha: str | None, gen_sha: str, algorithm: str,
                 params: Mapping[str, Any]) -> str:
    """The cache key :func:`i2score.data.cache.make_source` gives, from hashes already computed."""
    return source_key({"image_sha256": image_sha, "mask_sha256": mask_sha, "generator_sha256": gen_sha,
                       "algorithm": algorithm, "algorithm_version": ALGORITHM_VERSION, "params": dict(params)})


def _augment_groups(config: JobConfig, good: list[ManifestRow], todo: list[ManifestRow],
                    row_keys: Mapping[str, Mapping[str, str]], num_ws: int,
                    batch_size: int, aligned: Mapping[str, bool]) -> list[list[dict[str, Any]]]:
    by_id = {r.id: r for r in good}
    if config.min_realism > 0 and config.realism_reference is None and len(good) < config.realism_k + 1:
        # Found before any work, rather than when the run is finished (i2score.runs.realism_gate).
        raise ValueError(f"min_realism {config.min_realism:g} needs realism scores, and the realism score with "
                         f"k={config.realism_k} needs at least {config.realism_k + 1} reference images; this "
                         f"augment job has {len(good)} valid images. Add a realism reference, lower realism_k, "
                         "or set min_realism 0")
    augs = plan_augmentations([r.id for r in good], config.n_per_image, config.ops or AUGMENT_OPS,
                              seed=config.seed, num_ws=num_ws)
    todo_ids = {r.id for r in todo}
    items = []
    for a in augs:
        if a.source_id not in todo_ids:
            continue
        involved = [a.source_id] + ([a.partner_id] if a.partner_id else [])
        items.append({"augmentation": asdict(a),
                      "sources": {i: _aligned_item({"row": spec_row(by_id[i]), "key": row_keys[i]["image"]}, aligned[i])
                                  for i in involved}})
    # One source image's variants stay in one batch (its record then finishes it whole).
    per_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        per_source[it["augmentation"]["source_id"]].append(it)
    groups: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for its in per_source.values():
        if current and len(current) + len(its) > batch_size * max(1, config.n_per_image):
            groups.append(current)
            current = []
        current.extend(its)
    if current:
        groups.append(current)
    return groups
