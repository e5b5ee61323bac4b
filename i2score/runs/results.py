"""A run's results in people's own code: what it computed, what failed and the latents it used.

:func:`open_run` (also ``i2score.open_run``) opens ``<root>/runs/<run-id>/`` read-only::

    run = i2score.open_run("./i2s-data", "reconstruct-74bf3c6294cb")
    run.state, run.summary["metrics"]["psnr"]      # "completed", {"median": 32.0, ...}
    for o in run.outputs:                          # RunOutput: id, op, url, source ids, metrics
        img = run.image(o.id)                      # PIL image (as_tensor=True: [3, H, W] in [-1, 1])
    lat = run.latents("heldout-00")                # the cached Latents (w, noise) the run used
    ds = run.dataset()                             # a torch Dataset of (image, w, noise) per output

Source ids are the run's manifest row ids (an edit's second image is ``<row id>.ref``); each is
mapped to the cache key the run recorded for it (``manifest.parquet``'s ``cache_keys``, with the
roles of an edit's keys from its batch specs), and the latents are read through the cache index
and verified (:class:`~i2score.data.cache.view.CacheView`).
:func:`list_runs` is what ``i2s runs ls`` shows; listing runs does not load torch (opening
one does, through the manifest package's id check, and so do latents and images).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, overload

from i2score.data import storage
from i2score.data.cache.view import CacheView, NotInCacheError
from i2score.runs.lease import newest_lease

if TYPE_CHECKING:  # torch and Pillow load only when images or latents are asked for
    from PIL import Image
    from torch import Tensor

    from i2score.data.cache.entry import CacheEntry
    from i2score.data.latents import Latents
    from i2score.runs.dataset import RunDataset

__all__ = [
    "COMPLETED", "COMPLETED_WITH_FAILURES", "FAILED", "INTERRUPTED", "NOT_PLANNED", "RUNNING", "UNREADABLE",
    "FailedRow", "RunInfo", "RunNotFoundError", "RunOutput", "RunView", "list_runs", "open_run",
]

#: States of a run as :func:`list_runs` and :attr:`RunView.state` name them (the first three are
#: the Prefect states of a finished run, README "Exit codes and Prefect states").
COMPLETED = "completed"  # summary.json, no failed row
COMPLETED_WITH_FAILURES = "completed with failures"  # summary.json, some rows failed
FAILED = "failed"  # summary.json, every row failed (no output)
RUNNING = "running"  # an attempt holds the run's lease now
INTERRUPTED = "interrupted"  # planned, not finished, nobody holds the lease (re-run to resume)
NOT_PLANNED = "not planned"  # a run folder without plan.json (an attempt that stopped before planning)
UNREADABLE = "unreadable"  # plan.json or summary.json cannot be read or parsed


class RunNotFoundError(LookupError):
    """No run of that id under the root. ``str()`` is one line that says where it looked."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class RunInfo:
    """One run as ``i2s runs ls`` lists it.

    Attributes:
        run_id, kind: the run's id and job kind (``reconstruct``, ``inpaint``, ``edit``, ``augment``).
        state: one of the state constants of this module.
        outputs, failed: output images and failed input rows (None until the run finished).
        updated: when the run last finished (``summary.json``) or was planned (``plan.json``), UTC.
        generator, schedule: the model id and schedule name of its plan.
        reason: why the run is :data:`UNREADABLE`.
    """

    run_id: str
    kind: str | None
    state: str
    outputs: int | None = None
    failed: int | None = None
    updated: datetime | None = None
    generator: str | None = None
    schedule: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RunOutput:
    """One output image of a run (a row of its ``manifest.parquet``).

    Attributes:
        id: the output id (the row id, plus a suffix such as ``-k0`` for inpainting solutions).
        op: the op that made it (``reconstruct``, ``morph``, ``augment/style_mix``, ...).
        url: the PNG, under the root the run was opened with.
        source_ids: the input rows it was made from (the row first).
        source_keys: source id -> the cache key of its latents, for the sources with cached latents.
        latents_key: the cache key of the latents that render this output, when the cache holds
            them (reconstructions and inpainting solutions); None for other edits and augmentations.
        params: the op's resolved parameters.
        metrics: ``psnr`` (dB; what it compares depends on the op, see the report), ``lpips``,
            ``ssim``; None where not measured.
        created_at: when the output was recorded (UTC), when known.
    """

    id: str
    op: str
    url: str | None
    source_ids: tuple[str, ...]
    source_keys: Mapping[str, str]
    latents_key: str | None
    params: Mapping[str, Any]
    metrics: Mapping[str, float | None]
    created_at: datetime | None = None


@dataclass(frozen=True)
class FailedRow:
    """A rejected or failed input row (a row of ``errors.parquet``): ``reason`` is the reason
    code (``missing_file``, ``processing_failed``, ...; ``i2s validate --help`` lists them)."""

    row: int
    id: str | None
    reason: str
    message: str
    field: str | None = None
    url: str | None = None


def _modified(url: str) -> datetime | None:
    """The object's modification time (UTC), where the store reports one."""
    try:
        fs, path = storage.url_to_fs(url)
        t = fs.modified(path)
    except (FileNotFoundError, NotImplementedError, OSError):
        return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _state(plan: Mapping[str, Any] | None, summary: Mapping[str, Any] | None, leased: bool) -> str:
    if leased:
        return RUNNING
    if plan is None:
        return NOT_PLANNED
    # A summary of another job (a reused --run-id) says nothing about this plan.
    if summary is None or summary.get("digest") != plan.get("digest"):
        return INTERRUPTED
    rows = summary["rows"]
    if not rows["failed"]:
        return COMPLETED
    return FAILED if not rows["outputs"] else COMPLETED_WITH_FAILURES


def _leased(root: str, run_id: str) -> bool:
    lease = newest_lease(root, run_id)
    return lease is not None and lease.active(time.time())


def _read_json_or_none(got: Mapping[str, bytes | Exception], url: str) -> dict[str, Any] | None:
    data = got[url]
    if isinstance(data, FileNotFoundError):
        return None
    if isinstance(data, Exception):
        raise data
    obj: dict[str, Any] = json.loads(data)
    return obj


def run_ids(root: str) -> list[str]:
    """The ids of the run folders under ``<root>/runs/`` (one listing), sorted."""
    fs, path = storage.url_to_fs(storage.join(root, "runs"))
    try:
        found = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(storage.basename(str(f["name"]).rstrip("/")) for f in found if f.get("type") == "directory")


def _info(root: str, run_id: str) -> RunInfo:
    run_url = storage.join(root, "runs", run_id)
    plan_url, summary_url = storage.join(run_url, "plan.json"), storage.join(run_url, "summary.json")
    got = storage.read_many([plan_url, summary_url], max_workers=2)
    plan, summary = _read_json_or_none(got, plan_url), _read_json_or_none(got, summary_url)
    state = _state(plan, summary, _leased(root, run_id))
    # A finished run being re-run (its failed rows retried) keeps its last summary's counts.
    finished = summary is not None and plan is not None and summary.get("digest") == plan.get("digest")
    rows = summary["rows"] if finished and summary else {}
    return RunInfo(run_id, (plan or {}).get("config", {}).get("kind"), state, outputs=rows.get("outputs"),
                   failed=rows.get("failed"), updated=_modified(summary_url if finished else plan_url),
                   generator=(plan or {}).get("generator", {}).get("id"),
                   schedule=(plan or {}).get("schedule", {}).get("name"))


def list_runs(root: str, *, max_workers: int = 16) -> list[RunInfo]:
    """Every run under ``<root>/runs/``, newest first (by :attr:`RunInfo.updated`): one listing,
    then each run's ``plan.json``, ``summary.json`` and lease read concurrently. A run whose
    files cannot be read is listed as :data:`UNREADABLE` with the reason."""

    def one(run_id: str) -> RunInfo:
        try:
            return _info(root, run_id)
        except Exception as e:  # noqa: BLE001 - one bad run folder is a row of the listing, not a crash
            return RunInfo(run_id, None, UNREADABLE, reason=storage.redact(f"{type(e).__name__}: {e}"))

    ids = run_ids(root)
    if not ids:
        return []
    with ThreadPoolExecutor(max(1, min(max_workers, len(ids)))) as ex:
        infos = list(ex.map(one, ids))
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(infos, key=lambda i: (i.updated or oldest, i.run_id), reverse=True)


def _params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        parsed: dict[str, Any] = json.loads(value)
        return parsed
    return dict(value)


def _role_source_id(role: str, row_id: str, params: Mapping[str, Any]) -> str:
    """The source id of the embedding an edit row uses in ``role`` (the ids planning gives them,
    :mod:`i2score.runs.plan`): its image is the row, its second image ``<row>.ref``, an id
    parameter (``a``, ``b``) the row it names."""
    return row_id if role == "image" else f"{row_id}.ref" if role == "ref" else str(params[role])


def _output(o: Mapping[str, Any], run_url: str, run_id: str,
            role_keys: Mapping[str, list[dict[str, Any]]] | None) -> RunOutput:
    """A :class:`RunOutput` from a ``manifest.parquet`` row or a batch record's output.

    ``role_keys``: for edit and inpaint runs, row id -> its ``{"keys": {role: cache key},
    "params"}`` in the run's batch specs (the output rows list the keys without their roles)."""
    op, sids, keys = str(o["op"]), [str(s) for s in o["source_ids"] or []], [str(k) for k in o["cache_keys"] or []]
    source_keys: dict[str, str]
    own: str | None = None
    if op.startswith("augment/"):
        # One key per source (the image, then its partner, as execute lists both); the variant's
        # latents are not cached.
        if len(keys) != len(sids):
            raise ValueError(f"run {run_id}, output {o['id']!r}: {len(keys)} cache keys for sources {sids}")
        source_keys = dict(zip(sids, keys, strict=True))
    elif role_keys is None:
        # A reconstruct run: each output is rendered from its one embedding, as it is.
        if len(keys) != 1 or len(sids) != 1:
            raise ValueError(f"run {run_id}, output {o['id']!r} (op {op}): expected one source and one cache key, "
                             f"got {sids} and {len(keys)} keys")
        source_keys, own = {sids[0]: keys[0]}, keys[0]
    else:
        # A row retried after its file was fixed has a spec per attempt: the one whose keys the
        # output lists made it.
        specs = [sp for sp in role_keys.get(sids[0], []) if set(sp["keys"].values()) <= set(keys)]
        extra = [k for k in keys if not specs or k not in specs[0]["keys"].values()]
        if not specs or len(extra) > 1:
            raise ValueError(f"run {run_id}, output {o['id']!r} (op {op}): no batch spec under "
                             f"{storage.redact(run_url)}/plan/ gives row {sids[0]!r} the cache keys it lists")
        roles: Mapping[str, str] = specs[0]["keys"]
        source_keys = {_role_source_id(role, sids[0], specs[0]["params"]): k for role, k in roles.items()}
        # Inpainting caches each solution as an extra key; a reconstruct row renders its image's.
        own = extra[0] if extra else roles.get("image") if op == "reconstruct" else None
    url = o.get("output_url")
    # The stored URL is redacted and names the root the run was written under: rebuild it under
    # the root the caller opened (credentials, a moved folder).
    local = storage.join(run_url, "outputs", storage.basename(url)) if url else None
    created = o.get("created_at")
    return RunOutput(id=str(o["id"]), op=op, url=local, source_ids=tuple(sids), source_keys=source_keys,
                     latents_key=own, params=_params(o.get("params")),
                     metrics={m: (None if o.get(m) is None else float(o[m])) for m in ("psnr", "lpips", "ssim")},
                     created_at=created if isinstance(created, datetime) else None)


class RunView:
    """One run under ``<root>/runs/<run-id>/``, read-only (see the module docstring).

    ``plan`` and ``summary`` are its ``plan.json`` and ``summary.json`` (None until it
    finished); ``outputs`` and ``failed`` come from ``manifest.parquet``/``errors.parquet`` of a
    finished run, or from the batch records written so far of an unfinished one.
    """

    def __init__(self, root: str, run_id: str) -> None:
        from i2score.data.manifest import check_id

        bad = check_id(run_id)
        if bad is not None:
            raise ValueError(f"run id: {bad[1]}")
        self.root = root.rstrip("/")
        self.run_id = run_id
        self.url = storage.join(self.root, "runs", run_id)
        got = storage.read_many([self._url("plan.json"), self._url("summary.json")], max_workers=2)
        plan = _read_json_or_none(got, self._url("plan.json"))
        if plan is None:
            ids = run_ids(self.root)
            hint = (f"runs there: {', '.join(ids[-5:])}{' ...' if len(ids) > 5 else ''} (`i2s runs ls --root "
                    f"{storage.redact(self.root)}`)") if ids else "no runs there"
            raise RunNotFoundError(f"no run {run_id!r} under {storage.redact(self.root)} (no "
                                   f"{storage.redact(self._url('plan.json'))}); {hint}")
        self.plan: dict[str, Any] = plan
        self.summary: dict[str, Any] | None = _read_json_or_none(got, self._url("summary.json"))
        self._cache = CacheView(self.root)
        self._outputs: list[RunOutput] | None = None
        self._failed: list[FailedRow] | None = None

    def __repr__(self) -> str:
        return f"RunView({storage.redact(self.url)!r}, {self.kind}, {self.state})"

    def _url(self, *parts: str) -> str:
        return storage.join(self.url, *parts)

    @property
    def cache(self) -> CacheView:
        """The latent cache under the run's root (a snapshot of its index, read on first use)."""
        return self._cache

    # -- what the run is -------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The job (:class:`i2score.runs.config.JobConfig` as JSON): manifest, model, schedule, seed, ..."""
        config: dict[str, Any] = self.plan["config"]
        return config

    @property
    def kind(self) -> str:
        return str(self.config["kind"])

    @property
    def generator(self) -> dict[str, Any]:
        """``{"id", "sha256", "resolution", "num_ws"}`` of the model the run used."""
        gen: dict[str, Any] = self.plan["generator"]
        return gen

    @property
    def finished(self) -> bool:
        """True when ``summary.json`` of this job exists (the run finished, maybe with failed rows)."""
        return self.summary is not None and self.summary.get("digest") == self.plan.get("digest")

    @property
    def state(self) -> str:
        """The run's state now (one of this module's state constants; reads the lease)."""
        return _state(self.plan, self.summary, _leased(self.root, self.run_id))

    @property
    def files(self) -> dict[str, str]:
        """Where the run's files are, under the root it was opened with: ``outputs`` (folder),
        ``manifest``, ``errors``, ``summary``, ``report`` (Markdown), ``report_html``, ``sheet``."""
        return {"outputs": self._url("outputs"), "manifest": self._url("manifest.parquet"),
                "errors": self._url("errors.parquet"), "summary": self._url("summary.json"),
                "report": self._url("report.md"), "report_html": self._url("report.html"),
                "sheet": self._url("sheet.png")}

    # -- outputs and failures -----------------------------------------------------------------
    def _records(self) -> list[dict[str, Any]]:
        from i2score.runs.records import RunPaths, batch_records

        return batch_records(RunPaths(self.root, self.run_id))

    def _role_keys(self) -> dict[str, list[dict[str, Any]]]:
        """Row id -> its ``{"keys": {role: cache key}, "params": ...}`` in each of the run's batch
        specs (``plan/*.json``, every attempt's) that holds it."""
        urls = storage.list_files(self._url("plan"), ".json")
        out: dict[str, list[dict[str, Any]]] = {}
        for data in storage.read_many(urls).values():
            if isinstance(data, BaseException):
                raise data
            spec = json.loads(data)
            if spec.get("kind") == "edit":
                for it in spec["items"]:
                    out.setdefault(it["row"]["id"], []).append(
                        {"keys": it["keys"], "params": it["row"].get("params") or {}})
        return out

    @property
    def outputs(self) -> list[RunOutput]:
        """The run's outputs, sorted by id."""
        if self._outputs is None:
            if self.finished:
                rows = _read_parquet(self.files["manifest"]).to_pylist()
            else:
                by_id: dict[str, dict[str, Any]] = {}
                for rec in sorted(self._records(), key=lambda r: str(r["batch_id"])):
                    by_id.update({o["id"]: o for o in rec.get("outputs", [])})
                rows = list(by_id.values())
            role_keys = self._role_keys() if self.kind in ("edit", "inpaint") else None
            self._outputs = sorted((_output(o, self.url, self.run_id, role_keys) for o in rows), key=lambda o: o.id)
        return self._outputs

    def output(self, output_id: str) -> RunOutput:
        """The output of that id (a KeyError naming the run when it has none)."""
        for o in self.outputs:
            if o.id == output_id:
                return o
        raise KeyError(f"run {self.run_id} has no output {output_id!r} ({len(self.outputs)} outputs)")

    @property
    def failed(self) -> list[FailedRow]:
        """Every rejected or failed input row with its reason, in manifest order."""
        if self._failed is None:
            if self.finished:
                rows = _read_parquet(self.files["errors"]).to_pylist()
            else:
                done = {o.get("row_id") or o["id"] for rec in self._records() for o in rec.get("outputs", [])}
                seen: dict[tuple[Any, ...], dict[str, Any]] = {}
                for rec in self._records():
                    for e in rec.get("errors", []):
                        if e.get("id") not in done:
                            seen[(e.get("row"), e.get("id"), e.get("reason_code"))] = e
                rows = list(seen.values())
            self._failed = sorted((FailedRow(int(e.get("row") or 0), e.get("id"), str(e["reason_code"]),
                                             str(e["message"]), e.get("field"), e.get("url")) for e in rows),
                                  key=lambda f: (f.row, str(f.id)))
        return self._failed

    # -- latents and images -------------------------------------------------------------------
    @property
    def sources(self) -> dict[str, str]:
        """Source id -> cache key of every source whose latents the run's outputs used."""
        out: dict[str, str] = {}
        for o in self.outputs:
            for sid, key in o.source_keys.items():
                if out.setdefault(sid, key) != key:
                    raise ValueError(f"run {self.run_id}: source {sid!r} has two cache keys "
                                     f"({out[sid][:12]}, {key[:12]})")
        return out

    def entry(self, source_id: str) -> CacheEntry:
        """The cache index entry of a source of this run (key, model, params, metrics, ...)."""
        sources = self.sources
        if source_id not in sources:
            known = sorted(sources)
            raise NotInCacheError(f"run {self.run_id} used no latents of source {source_id!r}; its sources: "
                                  f"{', '.join(known[:8])}{' ...' if len(known) > 8 else ''}")
        return self._entry_of(sources[source_id], f"source {source_id!r}")

    def _entry_of(self, key: str, what: str) -> CacheEntry:
        try:
            return self._cache.entry(key)
        except NotInCacheError:
            raise NotInCacheError(f"run {self.run_id}: the latents of {what} (cache key {key[:12]}) are not in the "
                                  f"cache index under {storage.redact(self.root)}: `i2s cache verify --adopt` "
                                  "indexes an NPZ left without its row; re-running the job recomputes a deleted "
                                  "one") from None

    def latents(self, source_id: str) -> Latents:
        """The cached latents the run used for a source (a manifest row id; an edit's second image
        is ``<row id>.ref``): ``w`` ``[1, L, w_dim]`` and its noise maps (``L - 1`` on StyleGAN2) ``[1, 1, r, r]``,
        float32 on the CPU, verified against the entry's checksum."""
        return self._cache.load(self.entry(source_id))

    def output_latents(self, output_id: str) -> Latents:
        """The cached latents that render an output (:attr:`RunOutput.latents_key`; shapes as
        :meth:`latents`). Outputs of edits other than inpainting have none: a ValueError says so."""
        o = self.output(output_id)
        if o.latents_key is None:
            raise ValueError(f"run {self.run_id}: output {output_id!r} (op {o.op}) has no latents of its own in "
                             "the cache (only reconstructions and inpainting solutions do); latents(source_id) "
                             f"gives those of its sources {list(o.source_keys)}")
        return self._cache.load(self._entry_of(o.latents_key, f"output {output_id!r}"))

    @overload
    def image(self, output_id: str, *, as_tensor: Literal[False] = False) -> Image.Image: ...

    @overload
    def image(self, output_id: str, *, as_tensor: Literal[True]) -> Tensor: ...

    def image(self, output_id: str, *, as_tensor: bool = False) -> Image.Image | Tensor:
        """An output image: a PIL RGB image, or with ``as_tensor`` a ``[3, H, W]`` float32
        tensor in [-1, 1] (the generator's range; ``(x + 1) / 2`` gives [0, 1])."""
        o = self.output(output_id)
        if o.url is None:
            raise ValueError(f"run {self.run_id}: output {output_id!r} has no image URL")
        what = f"run {self.run_id} output {output_id}"
        return read_image(o.url, what=what) if not as_tensor else read_image_tensor(o.url, what=what)

    def dataset(self, *, latents: Literal["output", "source"] = "output", ops: Sequence[str] | None = None,
                transform: Callable[[Tensor], Tensor] | None = None) -> RunDataset:
        """A :class:`i2score.runs.dataset.RunDataset` over the run's outputs with their latents
        (of the given ``ops`` only, when given)."""
        from i2score.runs.dataset import RunDataset

        return RunDataset(self, latents=latents, ops=ops, transform=transform)

    def __iter__(self) -> Iterator[RunOutput]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)


def read_image(url: str, *, what: str = "image") -> Image.Image:
    """A PNG as a PIL RGB image; ``what`` names it in errors."""
    from i2score.data.images import decode_image

    return decode_image(storage.read_bytes(url), what=what)


def read_image_tensor(url: str, *, what: str = "image") -> Tensor:
    """A PNG as a ``[3, H, W]`` float32 tensor in [-1, 1]; ``what`` names it in errors."""
    from i2score.data.images import to_tensor

    return to_tensor(read_image(url, what=what))


def _read_parquet(url: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # An Arrow buffer, not io.BytesIO: reading through a Python file object after torch was
    # imported made about 1 process in 4 abort at exit here ("terminate called without an active
    # exception"; torch 2.13, pyarrow 26); a BufferReader never did in 40 tries.
    return pq.read_table(pa.BufferReader(storage.read_bytes(url)))


def open_run(root: str, run_id: str) -> RunView:
    """A read-only :class:`RunView` of run ``run_id`` under ``root`` (a local folder,
    ``s3://bucket/prefix``, ...); :class:`RunNotFoundError` when there is none."""
    return RunView(root, run_id)


def metric_medians(summary: Mapping[str, Any]) -> dict[str, float]:
    """``{metric: median}`` of a run summary's metric distributions (metrics it measured only)."""
    out = {}
    for name, dist in (summary.get("metrics") or {}).items():
        if dist and dist.get("median") is not None:
            out[name] = float(dist["median"])
    return out

