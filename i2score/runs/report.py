"""Finishing a run: merge its batch records into ``manifest.parquet``, ``errors.parquet``,
``summary.json`` (counts, metric distributions, steps run, cache hits), the report
(``report.md``, ``report.html``, ``sheet.png``) and, for augmentation runs, ``dataset.csv``.
Prefect-free; see :mod:`i2score.runs.records` for the run layout."""

from __future__ import annotations

import datetime
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from i2score.data import storage
from i2score.data.inputs import InputPolicy
from i2score.data.manifest import ManifestRow, Rejection, validate_manifest
from i2score.method.priors import WCloseness
from i2score.runs.config import JobConfig
from i2score.runs.lease import lease_folder
from i2score.runs.ops import CATALOG, OPS
from i2score.runs.prefetch import read_all
from i2score.runs.realism_gate import RealismGate, score_augment_run
from i2score.runs.records import RunPaths, batch_records, read_json
from i2score.runs.secret_urls import manifest_url_for


def _quantiles(values: Sequence[float | None]) -> dict[str, float] | None:
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return None

    def q(p: float) -> float:
        return round(vals[min(len(vals) - 1, round(p * (len(vals) - 1)))], 4)

    return {"n": len(vals), "min": q(0), "p10": q(0.1), "median": q(0.5), "p90": q(0.9), "max": q(1)}


def finish_run(root: str, run_id: str, attempt: str, *, wall_seconds: float | None = None,
               manifest_url: str | None = None) -> dict[str, Any]:
    """Merge every batch record of the run into ``manifest.parquet``, ``errors.parquet``,
    ``summary.json``, ``report.md``/``report.html`` and ``sheet.png``. Returns the summary.
    ``manifest_url``: the real manifest URL, which an augmentation run whose manifest URL
    carries credentials needs (``dataset.csv`` lists the manifest's rows; ``plan.json`` holds the
    URL redacted)."""
    from i2score.runs.outputs import RunOutputs

    paths = RunPaths(root, run_id)
    plan = read_json(paths.url("plan.json"))
    records = batch_records(paths)
    out_list, err_list = collect_results(records)
    done_rows = {o.get("row_id") for o in out_list}
    ro = RunOutputs(root, run_id)
    gen = plan["generator"]
    output_manifest_url = ro.write_manifest([
        {"id": o["id"], "op": o["op"], "output_url": o["output_url"], "source_ids": o["source_ids"],
         "source_urls": o["source_urls"], "cache_keys": o["cache_keys"], "params": o["params"],
         "generator_id": gen["id"], "generator_sha256": gen["sha256"], "psnr": o.get("psnr"),
         "lpips": o.get("lpips"), "ssim": o.get("ssim"), "alignment": o.get("alignment")} for o in out_list])
    errors_url = ro.write_errors([Rejection(int(e.get("row") or 0), e.get("id"), e["reason_code"], e["message"],
                                            e.get("field"), e.get("url")) for e in err_list],
                                 source=plan["config"]["manifest"])
    this = [r for r in records if r.get("attempt") == attempt]
    config = plan["config"]
    finished = datetime.datetime.now(datetime.timezone.utc)
    summary: dict[str, Any] = {
        "run_id": run_id, "kind": config["kind"], "digest": plan["digest"], "attempt": attempt,
        "manifest": storage.redact(config["manifest"]), "root": storage.redact(root),
        "run_url": storage.redact(paths.run_url), "generator": gen, "schedule": plan["schedule"],
        "init": plan.get("init"), "encoder": plan.get("encoder"), "engine": plan.get("engine"),
        "seed": config["seed"],
        "rows": {"outputs": len(out_list), "input_rows_done": len(done_rows),
                 "failed": len({(e.get('row'), e.get('id')) for e in err_list})},
        "errors_by_reason": dict(Counter(e["reason_code"] for e in err_list).most_common()),
        "embedding_steps": sum(int(r.get("embedding_steps", 0)) for r in this),
        "embedding_steps_all_attempts": sum(int(r.get("embedding_steps", 0)) for r in records),
        "edit_steps": sum(int(r.get("edit_steps", 0)) for r in this),
        "embedded": sum(int(r.get("embedded", 0)) for r in this),
        # Embeddings found in the cache when this attempt was planned (the images it did not embed).
        "cache_hits": int(plan.get("counts", {}).get("cache_hits", 0)),
        "batches_run": sum(1 for r in this if r["kind"] not in ("validation", "failed")),
        "batches_failed": sum(1 for r in this if r["kind"] == "failed"),
        "batches_total": sum(1 for r in records if r["kind"] not in ("validation", "failed")),
        # Every attempt that planned the run (each writes its validation record) or ran a batch of it.
        "attempts": len({r.get("attempt") for r in records}),
        "by_attempt": _by_attempt(records, lease_owners(root, run_id)),
        "batch_seconds": round(sum(float(r.get("seconds", 0.0)) for r in this), 3),
        # Batches of this attempt per worker process (host:pid/device).
        "workers": dict(Counter(r["worker"] for r in this if r.get("worker")).most_common()),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 3),
        "finished_at": finished.isoformat(timespec="seconds"),
        "started_at": None if wall_seconds is None else
        (finished - datetime.timedelta(seconds=wall_seconds)).isoformat(timespec="seconds"),
        "device": config.get("device"),
        "metrics": {"psnr": _quantiles([o.get("psnr") for o in out_list]),
                    "lpips": _quantiles([o.get("lpips") for o in out_list]),
                    "ssim": _quantiles([o.get("ssim") for o in out_list])},
        "files": {"manifest": storage.redact(output_manifest_url), "errors": storage.redact(errors_url),
                  "outputs": storage.redact(paths.url("outputs")), "report": storage.redact(paths.url("report.md")),
                  "report_html": storage.redact(paths.url("report.html")),
                  "sheet": storage.redact(paths.url("sheet.png")),
                  "metrics_plot": storage.redact(paths.url(METRICS_PLOT))},
    }
    if config["kind"] == "augment":
        source = manifest_url_for(config["manifest"], manifest_url)
        gate = _realism_gate(paths, out_list, JobConfig.from_json(config), source, int(gen["resolution"]))
        summary["realism"] = gate.info
        summary["files"]["dataset"] = storage.redact(_write_dataset(paths, out_list, config, source, gate))
    write_report(paths, summary, out_list, err_list, JobConfig.from_json(config))
    # summary.json last: its presence marks the run finished.
    storage.write_json(paths.url("summary.json"), summary)
    return summary


def collect_results(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The outputs (by id) and the failed rows (by row, then id) of a run's batch records: the
    last record of an output wins, and a row that has an output in any attempt is not failed."""
    outputs: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: r["batch_id"]):
        for o in rec.get("outputs", []):
            outputs[o["id"]] = o
    done_rows = {o.get("row_id") for o in outputs.values()}
    errors: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in records:
        for e in rec.get("errors", []):
            if e.get("id") not in done_rows:
                errors[(e.get("row"), e.get("id"), e.get("reason_code"))] = e
    err_list = sorted(errors.values(), key=lambda e: (e.get("row") or 0, str(e.get("id"))))
    return sorted(outputs.values(), key=lambda o: o["id"]), err_list


def write_report(paths: RunPaths, summary: dict[str, Any], outs: Sequence[Mapping[str, Any]],
                 errors: Sequence[Mapping[str, Any]], job: JobConfig) -> None:
    """Write ``sheet.png``, ``metrics.png``, ``report.md`` and ``report.html`` of a run, and set
    ``summary["files"]["sheet"]`` / ``["metrics_plot"]`` to None where there is nothing to show."""
    # The sheet shows the run's inputs (under the job's own input policy) and its outputs.
    policy = job.input_policy()
    sheet_inputs = InputPolicy((*(policy.allowed or ()), paths.run_url), policy.max_bytes)
    if _write_sheet(paths, worst_first(outs), summary["generator"]["resolution"], sheet_inputs) is None:
        summary["files"]["sheet"] = None
    if _write_metrics_plot(paths, outs) is None:
        summary["files"]["metrics_plot"] = None
    storage.write_text(paths.url("report.md"), report_markdown(summary, outs, errors))
    storage.write_text(paths.url("report.html"), report_html(summary, outs, errors))


def rerender_report(run_url: str) -> dict[str, Any]:
    """Write the report of the finished run at ``run_url`` (``<root>/runs/<run-id>``) again from
    its records (``summary.json``, ``plan.json``, ``batches/``): ``report.md``, ``report.html``,
    ``sheet.png``, ``metrics.png``; ``summary.json`` gets the report's file list. Returns the
    summary. Raises ``FileNotFoundError`` for a run without ``summary.json`` (not finished)."""
    runs, _, run_id = run_url.rstrip("/").rpartition("/")
    root, _, runs_name = runs.rpartition("/")
    if runs_name != "runs" or not root or not run_id:
        raise ValueError(f"{storage.safe_url(run_url)} is not a run folder (<root>/runs/<run-id>)")
    paths = RunPaths(root, run_id)
    summary_url = paths.url("summary.json")
    if not storage.exists(summary_url):
        raise FileNotFoundError(f"{storage.safe_url(summary_url)} does not exist: the run is not finished "
                                "(or this is not a run folder)")
    summary = read_json(summary_url)
    plan = read_json(paths.url("plan.json"))
    summary.setdefault("device", plan["config"].get("device"))  # summaries written before it was recorded
    outs, errors = collect_results(batch_records(paths))
    summary["files"].update({"sheet": storage.redact(paths.url("sheet.png")),
                             "metrics_plot": storage.redact(paths.url(METRICS_PLOT)),
                             "report_html": storage.redact(paths.url("report.html"))})
    write_report(paths, summary, outs, errors, JobConfig.from_json(plan["config"]))
    storage.write_json(summary_url, summary)
    return summary


def lease_owners(root: str, run_id: str) -> dict[str, str]:
    """``{attempt: "host:pid"}`` from the run's lease generations (:mod:`i2score.runs.lease`)."""
    urls = storage.list_files(lease_folder(root, run_id), ".json")
    owners: dict[str, str] = {}
    for data in storage.read_many(urls).values():
        if isinstance(data, BaseException):
            raise data
        rec = json.loads(data)
        owners[rec["attempt"]] = f"{rec['host']}:{rec['pid']}"
    return owners


def _by_attempt(records: Sequence[Mapping[str, Any]], owners: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """What each attempt of the run did, from its batch records: batches run, images embedded,
    embedding and edit steps, and the process that held the lease (when it had one)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        a = str(r.get("attempt"))
        d = out.setdefault(a, {"owner": owners.get(a), "batches_run": 0, "batches_failed": 0, "embedded": 0,
                               "embedding_steps": 0, "edit_steps": 0})
        if r["kind"] == "failed":
            d["batches_failed"] += 1
        elif r["kind"] != "validation":
            d["batches_run"] += 1
        d["embedded"] += int(r.get("embedded", 0))
        d["embedding_steps"] += int(r.get("embedding_steps", 0))
        d["edit_steps"] += int(r.get("edit_steps", 0))
    return dict(sorted(out.items()))


def _realism_gate(paths: RunPaths, outs: Sequence[Mapping[str, Any]], job: JobConfig, manifest_url: str,
                  resolution: int) -> RealismGate:
    """Realism scores of an augmentation run's originals and outputs, and the gated rows
    (:mod:`i2score.runs.realism_gate`)."""
    from i2score.runs.config import resolve_device

    originals = validate_manifest(job.read_manifest(manifest_url), CATALOG, kind="reconstruct",
                                  inputs=job.input_policy()).rows
    extra: list[ManifestRow] = []
    if job.realism_reference is not None:
        ref_job = JobConfig("augment", job.realism_reference, job.root, max_input_bytes=job.max_input_bytes)
        checked = validate_manifest(ref_job.read_manifest(), CATALOG, kind="reconstruct", inputs=ref_job.input_policy())
        if checked.rejected:
            first = checked.rejected[0]
            raise ValueError(f"realism reference {storage.redact(job.realism_reference)}: {len(checked.rejected)} "
                             f"rejected rows (first: row {first.row}, {first.reason_code}: {first.message})")
        extra = checked.rows
    policy = job.input_policy()
    if extra and policy.allowed is not None:
        ref_allowed = ref_job.input_policy().allowed
        policy = InputPolicy(None if ref_allowed is None else (*policy.allowed, *ref_allowed), policy.max_bytes)
    return score_augment_run(originals, outs, resolution=resolution, policy=policy,
                             output_policy=InputPolicy((paths.run_url,)), min_realism=job.min_realism,
                             k=job.realism_k, extra_reference=extra, device=resolve_device(job.device))


def _write_dataset(paths: RunPaths, outs: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                   manifest_url: str, gate: RealismGate) -> str:
    """``dataset.csv`` of an augmentation run: a manifest (id, image + lineage columns and the
    ``realism`` score) that a training job or another i2score run can read directly; the rows
    the realism gate dropped are left out (``summary.json`` lists them)."""
    import csv
    import io

    def score(i: str) -> str:
        return f"{gate.scores[i]:.6f}" if i in gate.scores else ""

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # Not "op"/"params": those columns mean an edit to a manifest reader; these are lineage.
    w.writerow(["id", "image", "source_id", "partner_id", "augmentation", "augmentation_params", "realism"])
    if config.get("include_originals", True):
        job = JobConfig.from_json(config)
        originals = job.read_manifest(manifest_url)
        for r in validate_manifest(originals, CATALOG, kind="reconstruct", inputs=job.input_policy()).rows:
            w.writerow([r.id, r.image, r.id, "", "original", "{}", score(r.id)])
    dropped = {d["id"] for d in gate.dropped}
    for o in outs:
        if o["id"] in dropped:
            continue
        rel = "outputs/" + storage.basename(o["output_url"])
        partner = o["source_ids"][1] if len(o["source_ids"]) > 1 else ""
        w.writerow([o["id"], rel, o["source_ids"][0], partner, o["op"].split("/", 1)[-1],
                    json.dumps(o["params"], sort_keys=True), score(o["id"])])
    url = paths.url("dataset.csv")
    storage.write_text(url, buf.getvalue())
    return url


#: The metrics' histograms next to the report.
METRICS_PLOT = "metrics.png"
#: The metric columns of the output manifest: label, unit, and whether higher is better.
METRIC_COLUMNS: dict[str, tuple[str, str, bool]] = {
    "psnr": ("PSNR", "dB", True), "lpips": ("LPIPS", "", False), "ssim": ("SSIM", "", True)}


def _badness(o: Mapping[str, Any]) -> float | None:
    """How bad output ``o`` is by its op's declared metric (larger = worse), or None without one."""
    op = OPS.get(o["op"])
    v = o.get("psnr")
    if op is None or op.metric is None or v is None or not math.isfinite(v):
        return None
    return -float(v) if op.metric.higher_is_better else float(v)


def worst_first(outs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``outs`` ordered worst first by each op's declared metric (the ``psnr`` column, which way is
    better from :class:`i2score.runs.ops.ReportMetric`); outputs without a value follow, by id."""
    def key(o: Mapping[str, Any]) -> tuple[int, float, str]:
        b = _badness(o)
        return (1, 0.0, o["id"]) if b is None else (0, -b, o["id"])

    return sorted(outs, key=key)


def _metric_caption(o: Mapping[str, Any]) -> str:
    """The op's metric of ``o`` as a short text (``31.2 dB psnr_known``), or ``""``."""
    op = OPS.get(o["op"])
    v = o.get("psnr")
    if op is None or op.metric is None or v is None:
        return ""
    return f"{v:.1f} dB {op.metric.key}" if op.metric.key.startswith("psnr") else f"{v:.3f} {op.metric.key}"


def _write_sheet(paths: RunPaths, outs: Sequence[Mapping[str, Any]], resolution: int, read_policy: InputPolicy,
                 limit: int = 16) -> str | None:
    """A contact sheet: per output (the first ``limit`` of ``outs``), its input image(s) and the
    output, captions whole (wrapped)."""
    import io

    from i2score.data.images import decode_image, fit_to_resolution, to_tensor
    from i2score.runs.contact_sheet import Cell, contact_sheet

    shown = list(outs)[:limit]
    if not shown:
        return None
    # Input columns that some shown output has, in a fixed order (older records: source_urls).
    inputs = [o.get("inputs") or {"image": o["source_urls"][0]} for o in shown]
    roles = [r for r in ("image", "ref", "mask") if any(i.get(r) for i in inputs)]
    urls = [u for o, i in zip(shown, inputs, strict=True) for u in [i.get(r) for r in roles] + [o["output_url"]] if u]
    got = read_all(urls, read_policy)

    def tile(url: str | None) -> Any:
        data = got.get(url) if url else None
        if not isinstance(data, bytes):
            return None
        try:
            return to_tensor(fit_to_resolution(decode_image(data), resolution))
        except Exception:  # noqa: BLE001 - a sheet tile is decoration; a bad input was reported already
            return None

    rows = []
    for o, i in zip(shown, inputs, strict=True):
        cells: list[Cell | None] = []
        for role in roles:
            t = tile(i.get(role))
            cells.append(None if t is None else Cell(t, storage.basename(i[role])))
        t = tile(o["output_url"])
        caption = "\n".join(x for x in (o["id"], o["op"], _metric_caption(o)) if x)
        cells.append(None if t is None else Cell(t, caption))
        rows.append(cells)
    title = f"run {paths.run_id}: " + (f"the {len(shown)} worst of {len(outs)} outputs, worst first"
                                       if len(outs) > len(shown) else "outputs, worst first")
    img = contact_sheet(rows, scale=2, title=title, column_titles=[*roles, "output"])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    url = paths.url("sheet.png")
    storage.write_bytes(url, buf.getvalue())
    return url


def metrics_plot_png(outs: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Histograms of the metrics that ``outs`` have (PSNR, LPIPS, SSIM; one panel each, stacked by
    op, since each op's PSNR measures its own pixels) as PNG bytes, or None when none has one."""
    import io

    # The Agg canvas on a Figure of its own: no pyplot, no display, and the process's matplotlib
    # backend (a notebook's, say) is left as it is.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = []
    for col, (label, unit, higher) in METRIC_COLUMNS.items():
        by_op: dict[str, list[float]] = {}
        for o in outs:
            v = o.get(col)
            if v is not None and math.isfinite(v):
                by_op.setdefault(o["op"], []).append(float(v))
        if by_op:
            panels.append((label, unit, higher, dict(sorted(by_op.items()))))
    if not panels:
        return None
    fig = Figure(figsize=(3.4 * len(panels), 2.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, unit, higher, by_op) in zip(axes, panels, strict=True):
        ax.hist(list(by_op.values()), bins=min(20, max(5, sum(map(len, by_op.values())) // 2)), stacked=True,
                label=list(by_op), edgecolor="white", linewidth=0.5)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=10)
        ax.set_xlabel(f"{label} ({unit})" if unit else label, fontsize=9)
        ax.set_ylabel("outputs", fontsize=9)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        if len(by_op) > 1:
            ax.legend(fontsize=7, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _write_metrics_plot(paths: RunPaths, outs: Sequence[Mapping[str, Any]]) -> str | None:
    png = metrics_plot_png(outs)
    if png is None:
        return None
    url = paths.url(METRICS_PLOT)
    storage.write_bytes(url, png)
    return url


def psnr_meanings(outs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """``(op, what it measures, metric key)`` of the ``psnr`` values among ``outs``, from the op
    registry: each op reports its own PSNR (of the known pixels, outside the edit, ...)."""
    found = []
    for name in sorted({o["op"] for o in outs if o.get("psnr") is not None}):
        op = OPS.get(name)
        if op is not None and op.metric is not None:
            found.append((name, op.metric.what, op.metric.key))
    return found


def _start_and_engine(s: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Report lines: where embeddings started, converge-stopping, and how the engine computed."""
    lines = []
    sch, init, enc, eng = s["schedule"], s.get("init"), s.get("encoder"), s.get("engine")
    if init:
        start = f"encoder `{enc['id']}` (sha256 `{enc['sha256'][:12]}…`)" if init == "encoder" and enc else f"`{init}`"
        stop = (f", each image stops when its loss gains < {sch['min_delta_db']} dB over {sch['patience']} steps"
                if sch.get("converge") else "")
        lines.append(("embeddings start from", f"{start}{stop}"))
    closeness = WCloseness(sch.get("w_offset_weight", 0.0), sch.get("pnorm_weight", 0.0))
    if closeness.active:
        lines.append(("W-closeness", f"`{closeness.spec()}` (penalties of the W+ stage)"))
    if eng:
        repro = "bit-reproducible for a seed on this device" if eng["bit_reproducible"] else (
            "reproducible to float tolerance, not bit for bit")
        extra = "".join(f", {k}" for k in ("channels_last", "compile") if eng.get(k))
        lines.append(("engine", f"{eng['precision']}{extra} ({repro})"))
    return lines


def config_lines(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The run's configuration and counts as ``(label, text)`` lines, the same in ``report.md``
    and ``report.html`` (text is Markdown-lite: `code` spans only)."""
    s = summary
    sch, gen = s["schedule"], s["generator"]
    lines = [
        ("run", f"`{s['run_id']}` ({s['kind']})"),
        ("manifest", f"`{s['manifest']}`"),
        ("generator", f"`{gen['id']}` ({gen['resolution']} px, sha256 `{str(gen['sha256'])[:12]}…`)"),
        ("schedule", f"`{sch['name']}` (embedding {sch['steps_w']} + {sch['steps_n']} steps, "
                     f"edits {sch['edit_steps_w']} + {sch['edit_steps_n']})"),
        *_start_and_engine(s),
    ]
    devices = sorted({w.rsplit("/", 1)[-1] for w in s.get("workers") or {} if "/" in w})
    if s.get("device") or devices:
        ran = f" (ran on {', '.join(devices)})" if devices else ""
        lines.append(("device", f"`{s.get('device') or '?'}`{ran}"))
    if s.get("seed") is not None:
        lines.append(("seed", str(s["seed"])))
    if s.get("finished_at"):
        end = _when(s["finished_at"])
        start = _when(s["started_at"]) if s.get("started_at") else "?"
        if start[:10] == end[:10]:
            end = end[11:]  # the same day: the time alone
        wall = f" ({s['wall_seconds']:.0f} s)" if s.get("wall_seconds") is not None else ""
        lines.append(("dates", f"{start} to {end} UTC{wall}"))
    lines += [
        ("counts", f"{s['rows']['outputs']} outputs, {s['rows']['failed']} failed rows, {s['cache_hits']} cache hits"),
        ("this attempt", f"{s['batches_run']} batches, {s['embedded']} images embedded ({s['embedding_steps']} steps), "
                         f"{s['edit_steps']} edit steps"),
    ]
    return lines


def _metrics_in_order(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The summary's metric quantiles that have values: PSNR, LPIPS, SSIM first (``summary.json``
    has its keys sorted)."""
    m = summary["metrics"]
    names = [*(k for k in METRIC_COLUMNS if k in m), *sorted(k for k in m if k not in METRIC_COLUMNS)]
    return [(k, m[k]) for k in names if m[k]]


def _when(iso: str) -> str:
    """``2026-12-03T04:18:20+00:00`` -> ``2026-12-03 04:18:20`` (UTC, as the summary writes it)."""
    return datetime.datetime.fromisoformat(iso).astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _same(name: str) -> str:
    return name


def report_markdown(summary: Mapping[str, Any], outs: Sequence[Mapping[str, Any]],
                    errors: Sequence[Mapping[str, Any]], *, max_links: int = 50,
                    link: Callable[[str], str] = _same, image: Callable[[str, str], str] | None = None) -> str:
    """The run report as Markdown (also the flows' Markdown artifact): configuration, metrics,
    failed rows, and the outputs worst first. ``link`` maps a file's path in the run folder
    (``outputs/x.png``, ``sheet.png``) to the URL written (default: the path, relative);
    ``image(alt, path)`` writes the Markdown of a picture (default: ``![alt](link(path))``)."""
    def picture(alt: str, rel: str) -> str:
        return image(alt, rel) if image is not None else f"![{alt}]({link(rel)})"

    s = summary
    files = s["files"]
    dataset = f", [dataset.csv]({link('dataset.csv')})" if "dataset" in files else ""
    lines = [f"# i2score {s['kind']} run `{s['run_id']}`", ""]
    lines += [f"- {label}: {text}" for label, text in config_lines(s)]
    lines += [
        (f"- files (in `{s['run_url']}`): [manifest.parquet]({link('manifest.parquet')}), "
         f"[errors.parquet]({link('errors.parquet')}), [summary.json]({link('summary.json')}), "
         f"[report.html]({link('report.html')}){dataset}"),
        "",
    ]
    if files.get("sheet"):
        lines += [picture("contact sheet, worst first", "sheet.png"), ""]
    lines += ["| metric | n | min | p10 | median | p90 | max |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, q in _metrics_in_order(s):
        lines.append(f"| {name} | {q['n']} | {q['min']} | {q['p10']} | {q['median']} | {q['p90']} | {q['max']} |")
    lines.append("")
    if files.get("metrics_plot"):
        lines += [picture("metric histograms", METRICS_PLOT), ""]
    lines += _realism_lines(s.get("realism"))
    meanings = psnr_meanings(outs)
    if meanings:
        lines += ["psnr, by op: " + "; ".join(f"{op}: {what} (`{key}`)" for op, what, key in meanings) + ".", ""]
    if errors:
        lines += ["## Failed rows", "", "| row | id | reason | message |", "|---:|---|---|---|"]
        for e in errors[:100]:
            msg = str(e["message"]).replace("|", "\\|")
            lines.append(f"| {e.get('row')} | {e.get('id')} | {e['reason_code']} | {msg} |")
        if len(errors) > 100:
            lines.append(f"| | | | … {len(errors) - 100} more in errors.parquet |")
        lines.append("")
    lines += ["## Outputs, worst first", ""]
    ordered = worst_first(outs)
    for o in ordered[:max_links]:
        metric = _metric_caption(o)
        lines.append(f"- [{o['id']}]({link('outputs/' + storage.basename(o['output_url']))}) ({o['op']}"
                     + (f", {metric})" if metric else ")"))
    if len(outs) > max_links:
        lines.append(f"- … {len(outs) - max_links} more in manifest.parquet")
    return "\n".join(lines) + "\n"


def _realism_lines(r: Mapping[str, Any] | None) -> list[str]:
    """The report's realism-gate section of an augmentation run (none for other runs)."""
    if not r:
        return []
    lines = ["## Realism gate", ""]
    if r.get("not_scored"):
        return [*lines, f"Not scored: {r['not_scored']}.", ""]
    lines += [f"Realism (Kynkäänniemi et al. 2019, k={r['k']}, {r['feature']}) against {r['reference_images']} "
              f"reference images ({r['reference_originals']} originals, {r['reference_extra']} extra); "
              f"min_realism {r['min_realism']:g}: {r['dropped']} augmented rows left out of dataset.csv "
              "(their images stay in outputs/).", "",
              "| op | median realism |", "|---|---:|"]
    lines += [f"| {op} | {v} |" for op, v in r["median_by_op"].items()]
    lines.append("")
    if r["dropped_rows"]:
        lines += ["| id | augmentation | realism | reason |", "|---|---|---:|---|"]
        lines += [f"| {d['id']} | {d['augmentation']} | {d['realism']:.4f} | {d['reason_code']} |"
                  for d in r["dropped_rows"][:100]]
        if len(r["dropped_rows"]) > 100:
            lines.append(f"| … {len(r['dropped_rows']) - 100} more in summary.json | | | |")
        lines.append("")
    return lines


def _reason_text(code: str) -> str:
    from i2score.data.manifest import REASON_DESCRIPTIONS
    from i2score.runs.records import RUN_REASON_DESCRIPTIONS

    return {**REASON_DESCRIPTIONS, **RUN_REASON_DESCRIPTIONS}.get(code, "")


def report_html(summary: Mapping[str, Any], outs: Sequence[Mapping[str, Any]], errors: Sequence[Mapping[str, Any]],
                *, max_cards: int = 48, max_rows: int = 500) -> str:
    """The run report as one HTML page (template ``templates/report.html.j2``; inline CSS, no
    JavaScript, nothing from the network): configuration, metrics and their histograms, the
    outputs worst first with their inputs, the failed rows with reason codes. Links to run
    files are relative. Inputs on the local disk are shown through absolute ``file://`` URLs;
    inputs elsewhere are not (a presigned URL written into a file would expire), the sheet
    (``sheet.png``) shows them."""
    import jinja2
    from markupsafe import Markup, escape

    def code(text: str) -> Markup:
        parts = str(escape(text)).split("`")
        return Markup("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))

    def input_src(url: str | None) -> str | None:
        if not url or storage.is_remote(url) or "***" in url:
            return None
        return storage.public_url(url)

    ordered = worst_first(outs)
    cards = []
    for o in ordered[:max_cards]:
        ins = o.get("inputs") or {"image": (o.get("source_urls") or [None])[0]}
        cards.append({
            "id": o["id"], "op": o["op"], "metric": _metric_caption(o),
            "output": "outputs/" + storage.basename(o["output_url"]),
            "inputs": [(role, storage.basename(u), input_src(u)) for role in ("image", "ref", "mask")
                       if (u := ins.get(role))],
            "lpips": o.get("lpips"), "ssim": o.get("ssim")})
    rows = [{"id": o["id"], "op": o["op"], "href": "outputs/" + storage.basename(o["output_url"]),
             **{k: o.get(k) for k in METRIC_COLUMNS}} for o in ordered[:max_rows]]
    env = jinja2.Environment(loader=jinja2.PackageLoader("i2score.runs", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["code"] = code
    reasons = [(code_, n, _reason_text(code_)) for code_, n in (summary.get("errors_by_reason") or {}).items()]
    return env.get_template("report.html.j2").render(
        s=summary, config=config_lines(summary),
        finished=_when(summary["finished_at"]) + " UTC" if summary.get("finished_at") else None,
        metrics=_metrics_in_order(summary),
        meanings=psnr_meanings(outs), cards=cards, rows=rows, n_outputs=len(outs), errors=list(errors[:500]),
        n_errors=len(errors), reasons=reasons,
        metric_plot=METRICS_PLOT if summary["files"].get("metrics_plot") else None, realism=summary.get("realism"),
        sheet="sheet.png" if summary["files"].get("sheet") else None)


def thumbnail_strip(images: Sequence[bytes], size: int = 64, gap: int = 2) -> bytes:
    """One PNG strip of ``images`` (encoded image files), each fitted into ``size`` x ``size``
    pixels, left to right on white, in a 128-colour palette: the inline picture of a Markdown
    artifact."""
    import io

    from PIL import Image

    strip = Image.new("RGB", (len(images) * (size + gap) - gap if images else 1, size), (255, 255, 255))
    for i, data in enumerate(images):
        with Image.open(io.BytesIO(data)) as im:
            tile = im.convert("RGB")
            tile.thumbnail((size, size), Image.Resampling.LANCZOS)
            strip.paste(tile, (i * (size + gap) + (size - tile.width) // 2, (size - tile.height) // 2))
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    return _palette_png(buf.getvalue())


def _palette_png(png: bytes) -> bytes:
    """``png`` in a 128-colour palette: a quarter of the bytes of true colour (8 portraits: 14 KB,
    not 55 KB), no visible change at thumbnail size; for pictures inlined in an artifact, which
    the Prefect API stores."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    with Image.open(io.BytesIO(png)) as im:
        im.convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def ui_report_markdown(root: str, run_id: str, *, expires_s: int = storage.MAX_SIGNED_EXPIRY_S,
                       thumbnails: int = 8, thumb_px: int = 64) -> str:
    """The report of a finished run as Markdown for a web UI (the Prefect report artifact), where
    the relative links of ``report.md`` lead nowhere: every link and image is
    :func:`i2score.data.storage.public_url` of the file (``file://`` for a local root, a
    presigned URL valid ``expires_s`` seconds for S3), and the ``thumbnails`` worst outputs (one
    PNG strip, ``thumb_px`` high) and the metrics' histograms are inlined (``data:`` URIs), which
    show wherever the page is. The contact sheet is an image for an http(s) URL and a link for a
    ``file://`` one (pages served over http do not show ``file://`` images).

    The text is redacted (:func:`i2score.data.storage.redact`) except the public URLs, which are
    put in after: a presigned URL is a credential for its one object, until it expires, that the
    UI is meant to hand out. A file of a protocol that cannot sign (``memory://``) is named, not
    linked."""
    import base64

    paths = RunPaths(root, run_id)
    summary = read_json(paths.url("summary.json"))
    outs, errors = collect_results(batch_records(paths))
    public: dict[str, str] = {}

    def keep(url: str) -> str:
        # A placeholder that redaction leaves alone; the real URL replaces it after redaction.
        token = f"i2s-public-{len(public)}-{run_id}"
        public[token] = url
        return token

    def link(rel: str) -> str:
        try:
            return keep(storage.public_url(paths.url(rel), expires_s))
        except ValueError:
            return "#" + rel  # no URL a browser can open; the text next to it names the file

    def data_uri(png: bytes) -> str:
        return keep("data:image/png;base64," + base64.b64encode(png).decode("ascii"))

    def picture(alt: str, rel: str) -> str:
        if rel == METRICS_PLOT:  # small: inline, so it shows whatever the root
            return f"![{alt}]({data_uri(_palette_png(plot))})" if plot else ""
        url = link(rel)
        # A page served over http(s) does not show file:// images: a link the reader can copy.
        shown = public.get(url, "")
        return f"[{alt} ({rel})]({url})" if not shown.startswith(("https://", "http://")) else f"![{alt}]({url})"

    # Drawn here, not read: a run written before metrics.png existed gets its histograms too.
    plot = metrics_plot_png(outs)
    summary["files"]["metrics_plot"] = METRICS_PLOT if plot else None
    worst = worst_first(outs)[:thumbnails]
    got = storage.read_many([paths.url("outputs", storage.basename(o["output_url"])) for o in worst])
    shown = [(o, data) for o, data in zip(worst, got.values(), strict=True) if isinstance(data, bytes)]
    head = ""
    if shown:
        uri = data_uri(thumbnail_strip([d for _, d in shown], size=thumb_px))
        names = ", ".join(f"{o['id']}" + (f" ({m})" if (m := _metric_caption(o)) else "") for o, _ in shown)
        head = (f"**The {len(shown)} worst outputs**, worst first, left to right: {names}\n\n"
                f"![the worst outputs]({uri})\n\n")
    md = storage.redact(head + report_markdown(summary, outs, errors, link=link, image=picture))
    for token, url in public.items():
        md = md.replace(token, url)
    return md


def read_summary(root: str, run_id: str) -> dict[str, Any]:
    """``summary.json`` of a finished run."""
    return read_json(RunPaths(root, run_id).url("summary.json"))
