"""Executing one planned batch: read its inputs, embed (or find in the cache), apply its op,
write its outputs and then its record.

Row failures never fail a batch: unreadable or undecodable inputs and failures of a batch's
computation become error records (reason code and message) and the other rows go on; only
transient storage errors propagate, so the caller (a Prefect task) can retry the batch. An
output that is not an image (NaN, one flat colour) is never written: it becomes a
``degenerate_output`` error of that output alone.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image

from i2score.data import storage
from i2score.data.align import FaceAlignment, paste_back
from i2score.data.cache import LatentCache, make_source
from i2score.data.images import tensor_to_png_bytes, to_tensor
from i2score.data.latents import Latents
from i2score.data.manifest import LoadedRow, ManifestRow, RowError, load_row
from i2score.data.manifest.load import decode_row
from i2score.method.applications import (
    ALGORITHM_VERSION,
    EmbeddingState,
    reconstruct,
    state_from_arrays,
    state_to_arrays,
)
from i2score.method.applications.common import render
from i2score.runs.augment import Augmentation, run_augmentations
from i2score.runs.config import EngineOptions, JobConfig, Schedule, resolve_device
from i2score.runs.context import WorkerContext, worker_context
from i2score.runs.lease import check_current
from i2score.runs.ops import AUGMENTATIONS, CATALOG, OPS, OpBatch
from i2score.runs.outputs import DegenerateOutputError, RunOutputs
from i2score.runs.plan import aligned_params
from i2score.runs.prefetch import read_all, start_prefetch
from i2score.runs.progress import step_callback
from i2score.runs.records import (
    DEGENERATE_OUTPUT,
    FAILED,
    SOURCE_FAILED,
    RunPaths,
    error_record,
    jsonable_metrics,
    read_json,
    row_from_json,
    write_json,
)
from i2score.runs.secret_urls import restore_urls

log = logging.getLogger(__name__)


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


def run_batch(root: str, run_id: str, batch_id: str, *, manifest_url: str | None = None, device: str | None = None,
              gpu_index: int | None = None) -> BatchOutcome:
    """Execute the batch ``batch_id`` of a planned run and write its record.

    ``manifest_url`` is the run's real manifest URL: needed when inputs carry credentials (the
    spec holds them redacted and the worker reads them from the manifest, see
    :mod:`i2score.runs.secret_urls`; a ValueError without it, :class:`ManifestChangedError` when the
    manifest is not the planned one). ``device`` overrides the job's device; ``gpu_index`` picks
    this worker's GPU when the device is ``auto`` or ``cuda`` (see :func:`resolve_device`).

    Idempotent: when the record exists already (a retried task, a resumed run) nothing runs.
    A batch planned under a run lease runs only while its attempt holds the lease
    (:class:`i2score.runs.lease.LeaseLostError` otherwise).
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
    if spec.get("lease_generation") is not None:
        # A fence: an attempt that lost the run's lease (another one took it over) computes nothing more.
        check_current(root, run_id, int(spec["lease_generation"]), spec["attempt"])
    spec = restore_urls(spec, manifest_url)
    config = JobConfig.from_json(spec["config"])
    ctx = worker_context(config.model, resolve_device(device or config.device, gpu_index))
    if ctx.generator_sha256 != spec["generator"]["sha256"]:
        raise RuntimeError(f"model {ctx.model!r} changed since the run was planned "
                           f"({ctx.generator_sha256[:12]} != {spec['generator']['sha256'][:12]})")
    t0 = time.perf_counter()
    start_prefetch(paths, spec.get("next_batch"), manifest_url)
    out = BatchOutcome(batch_id, spec["kind"], spec["attempt"],
                       worker=f"{socket.gethostname()}:{os.getpid()}/{ctx.device}")
    runner = {"reconstruct": _run_embed, "embed": _run_embed, "edit": _run_edit,
              "augment": _run_augment}[spec["kind"]]
    runner(spec, ctx, RunOutputs(root, run_id), out)
    out.seconds = time.perf_counter() - t0
    rec = asdict(out)
    rec.pop("skipped")
    write_json(paths.record_url(batch_id), rec)
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
    write_json(paths.url("batches", f"failed-{batch_id}-{attempt}.json"), {
        "batch_id": f"failed-{batch_id}", "kind": "failed", "attempt": attempt, "outputs": [],
        "errors": [error_record(r, FAILED, f"batch {batch_id} failed: {message}") for r in rows],
        "embedding_steps": 0, "edit_steps": 0, "embedded": 0, "cache_hits": 0, "seconds": 0.0})


def _failure_message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _load(rows: Sequence[ManifestRow], spec: Mapping[str, Any], out: BatchOutcome, aligns: Sequence[bool],
          as_row: Callable[[ManifestRow], ManifestRow] | None = None) -> list[LoadedRow | None]:
    """Load rows under the job's input policy, FFHQ-aligned where ``aligns`` says (``None`` for
    a row that failed; its error is recorded)."""
    config = JobConfig.from_json(spec["config"])
    inputs = config.input_policy()
    resolution = spec["generator"]["resolution"]
    urls = [u for r in rows for u in r.urls()]
    fetched = read_all(urls, inputs)
    loaded: list[LoadedRow | None] = []
    for r, align in zip(rows, aligns, strict=True):
        try:
            loaded.append(load_row(r, resolution=resolution, fetched=fetched, inputs=inputs, align=align))
        except RowError as e:
            out.errors.append(error_record(as_row(r) if as_row else r, e.reason_code, e.message, e.field, e.url))
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
        out.errors.extend(error_record(r, FAILED, _failure_message(e)) for r in rows)
        return False


def _write_output(writer: RunOutputs, output_id: str, image: torch.Tensor, row: int, out: BatchOutcome,
                  suffix: str = "") -> str | None:
    """Write one output image; a degenerate one is recorded as ``degenerate_output`` against
    ``output_id`` (of input row ``row``) and not written (None)."""
    try:
        return writer.write_image(output_id, image, suffix)
    except DegenerateOutputError as e:
        out.errors.append(error_record({"row": row, "id": output_id}, DEGENERATE_OUTPUT, str(e)))
        return None


def _alignment_source(lr: LoadedRow) -> dict[str, Any]:
    """What the cache stores with an aligned image's embedding: the transform and the aligned
    input itself (PNG, base64), so that paste-back and a look at the input need no detector."""
    assert lr.alignment is not None, "loaded with align=True"
    buf = io.BytesIO()
    Image.fromarray(((lr.image.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype("uint8"),
                    "RGB").save(buf, "PNG")
    return {**lr.alignment.to_dict(), "aligned_png": base64.b64encode(buf.getvalue()).decode("ascii")}


def cached_alignment(latents: Latents) -> dict[str, Any] | None:
    """The alignment stored with a cached embedding (its transform, faces found and the aligned
    input as base64 PNG), or None when it was embedded without ``--align``."""
    src = latents.meta.get("cache", {}).get("source", {})
    return src.get("alignment") if isinstance(src, Mapping) else None


def _lineage(alignment: Mapping[str, Any] | None, **more: Any) -> dict[str, Any] | None:
    """The ``alignment`` column of an output: the transform and the face count (no pixels)."""
    if alignment is None:
        return None
    return {**{k: v for k, v in alignment.items() if k not in ("aligned_png", "landmarks")}, **more}


def _write_pasted(writer: RunOutputs, output_id: str, image: torch.Tensor, original: Any,
                  alignment: FaceAlignment, row: int, out: BatchOutcome) -> tuple[str, str] | None:
    """``--paste-back``: the aligned output as ``<id>.aligned.png`` and pasted into the original
    photo as ``<id>.png``; returns their URLs ``(pasted, aligned)`` (None: degenerate output)."""
    aligned_url = _write_output(writer, output_id, image, row, out, suffix=".aligned")
    if aligned_url is None:
        return None
    edited = Image.open(io.BytesIO(tensor_to_png_bytes(image))).convert("RGB")
    pasted = to_tensor(paste_back(original, edited, alignment))
    url = _write_output(writer, output_id, pasted, row, out)
    return None if url is None else (url, aligned_url)


def _run_embed(spec: Mapping[str, Any], ctx: WorkerContext, writer: RunOutputs, out: BatchOutcome) -> None:
    """Embed (or fetch from the cache) every item; ``reconstruct`` batches also write outputs."""
    gen, sched = spec["generator"], Schedule(**spec["schedule"])
    write_outputs = spec["kind"] == "reconstruct"
    if write_outputs:
        rows = [row_from_json(i["row"]) for i in spec["items"]]
        keys = [i["key"] for i in spec["items"]]
        aligns = [bool(i.get("align")) for i in spec["items"]]
    else:
        # Embedding a source for edits: errors name the row that uses it.
        rows = [ManifestRow(id=i["source"]["id"], image=i["source"]["url"], op="reconstruct")
                for i in spec["items"]]
        keys = [i["source"]["key"] for i in spec["items"]]
        aligns = [bool(i["source"].get("align")) for i in spec["items"]]
    params_of = {k: aligned_params(spec["embed_params"], a) for k, a in zip(keys, aligns, strict=True)}
    cache = LatentCache(spec["root"])
    hits = cache.lookup(keys)
    latents: dict[str, Latents] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for k in keys:
        if k in hits and k not in latents:
            lat = cache.get(k)
            if lat is not None:
                latents[k] = lat
                e = hits[k]
                metrics[k] = {**{m: v for m, v in e.metrics.items() if v is not None}, "cached": True}
    out.cache_hits = len(latents)
    alignments = {k: a for k, lat in latents.items() if (a := cached_alignment(lat)) is not None}
    # Embeddings to continue from a shorter cached one (planned by warm_start_sources).
    items = spec["items"] if write_outputs else [i["source"] for i in spec["items"]]
    warm: dict[str, str] = {i["key"]: i["warm"] for i in items if i.get("warm")}
    todo = [i for i, k in enumerate(keys) if k not in latents]
    loaded = _load([rows[i] for i in todo], spec, out, [aligns[i] for i in todo]) if todo else []
    ok = [(i, lr) for i, lr in zip(todo, loaded, strict=True) if lr is not None]
    # Identical images in one batch are embedded once.
    unique: dict[str, LoadedRow] = {}
    for i, lr in ok:
        unique.setdefault(keys[i], lr)
    if unique:
        ukeys = list(unique)

        def embed() -> None:
            x = torch.stack([unique[k].image for k in ukeys]).to(ctx.G.device)
            init = spec.get("init")
            enc = spec.get("encoder")
            encoder = ctx.encoder(enc["id"], enc["sha256"]) if init == "encoder" and enc else None
            engine = EngineOptions(**spec["engine"]) if spec.get("engine") else None
            resume = [_warm_state(cache, warm.get(k)) for k in ukeys]
            res = reconstruct(x, ctx.G, steps_w=sched.steps_w, steps_n=sched.steps_n, seed=spec["embed_params"]["seed"],
                              init=init, encoder=encoder, lr_w=sched.lr_w, lr_n=sched.lr_n, vgg=ctx.vgg,
                              lpips=ctx.lpips or False, early_stop=sched.early_stop(),
                              autocast_dtype=engine.autocast_dtype if engine else None,
                              channels_last=engine.channels_last if engine else False,
                              compile=engine.compile if engine else False,
                              resume=resume if any(r is not None for r in resume) else None,
                              callback=step_callback(spec["batch_id"]), w_offset_weight=sched.w_offset_weight,
                              pnorm_weight=sched.pnorm_weight)
            sources = []
            for k in ukeys:
                key, src = make_source(image_bytes=unique[k].image_bytes, mask_bytes=None,
                                       generator_sha256=gen["sha256"], algorithm=OPS["reconstruct"].algorithm,
                                       params=params_of[k], algorithm_version=ALGORITHM_VERSION,
                                       generator_id=gen["id"], source_id=unique[k].row.id)
                if key != k:
                    raise RuntimeError(f"cache key of {unique[k].row.id!r} changed since planning "
                                       "(was the file rewritten?)")
                if unique[k].alignment is not None:
                    src["alignment"] = _alignment_source(unique[k])
                    alignments[k] = src["alignment"]
                sources.append(src)
            timings = [{m: v for m, v in mt.items() if m in ("seconds", "steps_w", "steps_n", "steps")}
                       for mt in res.metrics]
            cache.put_many(ukeys, res.latents.to("cpu"), sources=sources, metrics=res.metrics, timings=timings)
            try:
                cache.put_states({k: state_to_arrays(st) for k, st in zip(ukeys, res.states, strict=True)})
            except Exception as e:  # noqa: BLE001 - the entries are stored; only a later warm start is lost
                if storage.is_transient(e):
                    raise
                log.warning("could not store the optimiser states of %d embeddings: %s", len(ukeys), e)
            for j, k in enumerate(ukeys):
                latents[k] = res.latents[j].to("cpu")
                metrics[k] = {**res.metrics[j], "cached": False}
                out.embedding_steps += int(res.metrics[j]["steps"]) - int(res.metrics[j]["warm_start"])
            out.embedded += len(ukeys)

        _isolated(embed, [unique[k].row for k in ukeys], out)
    if not write_outputs:
        return
    ready = [i for i, k in enumerate(keys) if k in latents]
    if not ready:
        return
    stacked = Latents.stack([latents[keys[i]] for i in ready]).to(ctx.G.device)
    images = render(ctx.G, stacked.w, stacked.noise)
    metric = OPS["reconstruct"].metric
    paste = JobConfig.from_json(spec["config"]).paste_back
    originals = _originals([rows[i] for i in ready if aligns[i]], spec, out) if paste else {}
    for j, i in enumerate(ready):
        r, k = rows[i], keys[i]
        extra: dict[str, Any] = {}
        if paste and aligns[i]:
            if r.id not in originals:
                continue
            if k not in alignments:
                out.errors.append(error_record(r, FAILED, "the cached embedding has no alignment to paste back with"))
                continue
            urls = _write_pasted(writer, r.id, images[j], originals[r.id], FaceAlignment.from_dict(alignments[k]),
                                 r.row, out)
            if urls is None:
                continue
            url, extra["aligned_url"] = urls
        else:
            written = _write_output(writer, r.id, images[j], r.row, out)
            if written is None:
                continue
            url = written
        m = metrics[k]
        out.outputs.append({"id": r.id, "row_id": r.id, "op": "reconstruct", "output_url": url,
                            "source_ids": [r.id], "source_urls": [r.image], "cache_keys": [k],
                            "inputs": {"image": r.image},
                            "params": params_of[k], "psnr": m.get(metric.key) if metric else None,
                            "lpips": m.get("lpips"),
                            "ssim": m.get("ssim"), "metrics": jsonable_metrics(m),
                            "alignment": _lineage(alignments.get(k), **extra)})


def _originals(rows: Sequence[ManifestRow], spec: Mapping[str, Any], out: BatchOutcome) -> dict[str, Any]:
    """The rows' images at their native size (PIL RGB) by row id, for paste-back; a row whose
    image cannot be read is an error of that row."""
    inputs = JobConfig.from_json(spec["config"]).input_policy()
    fetched = read_all([r.image for r in rows], inputs)
    got: dict[str, Any] = {}
    for r in rows:
        try:
            got[r.id] = decode_row(ManifestRow(id=r.id, image=r.image, op=r.op, row=r.row), fetched,
                                   inputs=inputs).image
        except RowError as e:
            out.errors.append(error_record(r, e.reason_code, e.message, e.field, e.url))
    return got


def _warm_state(cache: LatentCache, key: str | None) -> EmbeddingState | None:
    """The stored state of the cached embedding ``key`` to continue (None: start over)."""
    if key is None:
        return None
    arrays = cache.get_state(key)
    if arrays is None:
        return None
    try:
        return state_from_arrays(arrays)
    except (KeyError, ValueError) as e:
        log.warning("optimiser state of %s… is incomplete (%s); starting over", key[:12], e)
        return None


def _run_edit(spec: Mapping[str, Any], ctx: WorkerContext, writer: RunOutputs, out: BatchOutcome) -> None:
    """One homogeneous batch of edit rows (same op and params), run by the op's runner."""
    items = spec["items"]
    rows = [row_from_json(i["row"]) for i in items]
    op, params = OPS[rows[0].op], items[0]["params"]
    cache = LatentCache(spec["root"])
    lat = cache.get_many(k for i in items for k in i["keys"].values())
    ready_idx = []
    for idx, it in enumerate(items):
        missing = [role for role, k in it["keys"].items() if k not in lat]
        if missing:
            out.errors.append(error_record(rows[idx], SOURCE_FAILED,
                                           f"the {' and '.join(missing)} image(s) of this row have no embedding "
                                           "(their embedding failed: see the errors of the rows that use them)"))
        else:
            ready_idx.append(idx)
    loaded = _load([rows[i] for i in ready_idx], spec, out, [bool(items[i].get("align")) for i in ready_idx])
    ok = [(i, lr) for i, lr in zip(ready_idx, loaded, strict=True) if lr is not None]
    if not ok:
        return
    batch = OpBatch(G=ctx.G, vgg=ctx.vgg, rows=[lr for _, lr in ok],
                    latents={role: Latents.stack([lat[items[i]["keys"][role]] for i, _ in ok]) for role in op.latents},
                    params=params, schedule=Schedule(**spec["schedule"]), cache=cache, generator=spec["generator"],
                    callback=step_callback(spec["batch_id"]))
    id_params = CATALOG.id_params(op.name)
    paste = JobConfig.from_json(spec["config"]).paste_back

    def edit() -> None:
        res = op.run(batch)
        per_row = len(res.suffixes)
        for j, (i, _) in enumerate(ok):
            r = rows[i]
            for s, suffix in enumerate(res.suffixes):
                n = j * per_row + s
                m = res.metrics[n]
                oid = f"{r.id}{suffix}"
                out.edit_steps += int(m.get("steps_w", 0) or 0) + int(m.get("steps_n", 0) or 0)
                lr = dict(ok)[i]
                extra: dict[str, Any] = {}
                if paste and lr.alignment is not None:  # rows an align column left unaligned: as they are
                    urls = _write_pasted(writer, oid, res.images[n], lr.original, lr.alignment, r.row, out)
                    if urls is None:
                        continue
                    url, extra["aligned_url"] = urls
                else:
                    written = _write_output(writer, oid, res.images[n], r.row, out)
                    if written is None:
                        continue
                    url = written
                alignment = None
                if lr.alignment is not None:
                    ref = lr.ref_alignment.to_dict() if lr.ref_alignment is not None else None
                    alignment = _lineage(lr.alignment.to_dict(), **extra,
                                         **({"ref": _lineage(ref)} if ref is not None else {}))
                out.outputs.append({
                    "id": oid, "row_id": r.id, "op": op.name, "output_url": url,
                    "source_ids": [r.id] + [r.params[x] for x in id_params if x in r.params],
                    "source_urls": r.urls(), "params": params,
                    "inputs": {"image": r.image, "ref": r.ref, "mask": r.mask},
                    "cache_keys": list(items[i]["keys"].values()) + (res.cache_keys or [])[n:n + 1],
                    "psnr": m.get(op.metric.key) if op.metric else None, "lpips": None, "ssim": None,
                    "metrics": jsonable_metrics(m), "alignment": alignment})

    _isolated(edit, [lr.row for _, lr in ok], out)


def _run_augment(spec: Mapping[str, Any], ctx: WorkerContext, writer: RunOutputs, out: BatchOutcome) -> None:
    """Augmentations of a group of source images (each source's variants whole)."""
    items = spec["items"]
    cache = LatentCache(spec["root"])
    srcs: dict[str, dict[str, Any]] = {}
    for it in items:
        srcs.update(it["sources"])
    lat_by_key = cache.get_many(s["key"] for s in srcs.values())
    need_pixels = {i for it in items if AUGMENTATIONS[it["augmentation"]["op"]].pixels for i in it["sources"]}
    rows = {i: row_from_json(s["row"]) for i, s in srcs.items()}
    pix_ids = sorted(need_pixels)
    loaded = dict(zip(pix_ids, _load([rows[i] for i in pix_ids], spec, out,
                                     [bool(srcs[i].get("align")) for i in pix_ids]), strict=True))
    augs: list[Augmentation] = []
    ok_items: list[dict[str, Any]] = []
    for it in items:
        a = Augmentation(**it["augmentation"])
        involved = list(it["sources"])
        if any(srcs[i]["key"] not in lat_by_key for i in involved):
            out.errors.append(error_record(it["sources"][a.source_id]["row"] | {"id": a.id}, SOURCE_FAILED,
                                           f"augmentation {a.id}: an image it uses ({', '.join(involved)}) "
                                           "has no embedding"))
            continue
        if AUGMENTATIONS[a.op].pixels and any(loaded.get(i) is None for i in involved):
            out.errors.append(error_record(it["sources"][a.source_id]["row"] | {"id": a.id}, SOURCE_FAILED,
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
                                steps_w=sched.edit_steps_w, steps_n=sched.edit_steps_n, vgg=ctx.vgg,
                                callback=step_callback(spec["batch_id"]))
        for j, a in enumerate(augs):
            m = res.metrics[j]
            out.edit_steps += int(m.get("steps_w", 0) or 0) + int(m.get("steps_n", 0) or 0)
            url = _write_output(writer, a.id, res.images[j], srcs[a.source_id]["row"]["row"], out)
            if url is None:
                continue
            out.outputs.append({
                # row_id: the source row; its variants are finished together (one record).
                "id": a.id, "row_id": a.source_id, "op": f"augment/{a.op}", "output_url": url,
                "source_ids": [i for i in (a.source_id, a.partner_id) if i],
                "source_urls": [srcs[i]["row"]["image"] for i in (a.source_id, a.partner_id) if i],
                "inputs": {"image": srcs[a.source_id]["row"]["image"],
                           "ref": srcs[a.partner_id]["row"]["image"] if a.partner_id else None},
                "cache_keys": [srcs[i]["key"] for i in (a.source_id, a.partner_id) if i],
                "params": a.params, "psnr": None, "lpips": None, "ssim": None, "metrics": jsonable_metrics(m),
                "source_id": a.source_id})

    _isolated(augment, [{"row": it["sources"][a.source_id]["row"]["row"], "id": a.id}
                        for a, it in zip(augs, ok_items, strict=True)], out)
