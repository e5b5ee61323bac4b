"""Finishing a run: merge its batch records into ``manifest.parquet``, ``errors.parquet``,
``summary.json`` (counts, metric distributions, steps run, cache hits), the report
(``report.md``, ``report.html``, ``sheet.png``) and, for augmentation runs, ``dataset.csv``.
Prefect-free; see :mod:`i2score.runs.records` for the run layout."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from i2score.data import storage
from i2score.data.inputs import InputPolicy
from i2score.data.manifest import Rejection, validate_manifest
from i2score.runs.config import JobConfig
from i2score.runs.lease import lease_folder
from i2score.runs.ops import CATALOG, OPS
from i2score.runs.prefetch import read_all
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
    ro = RunOutputs(root, run_id)
    gen = plan["generator"]
    out_list = sorted(outputs.values(), key=lambda o: o["id"])
    output_manifest_url = ro.write_manifest([
        {"id": o["id"], "op": o["op"], "output_url": o["output_url"], "source_ids": o["source_ids"],
         "source_urls": o["source_urls"], "cache_keys": o["cache_keys"], "params": o["params"],
         "generator_id": gen["id"], "generator_sha256": gen["sha256"], "psnr": o.get("psnr"),
         "lpips": o.get("lpips"), "ssim": o.get("ssim")} for o in out_list])
    errors_url = ro.write_errors([Rejection(int(e.get("row") or 0), e.get("id"), e["reason_code"], e["message"],
                                            e.get("field"), e.get("url")) for e in err_list],
                                 source=plan["config"]["manifest"])
    this = [r for r in records if r.get("attempt") == attempt]
    config = plan["config"]
    summary: dict[str, Any] = {
        "run_id": run_id, "kind": config["kind"], "digest": plan["digest"], "attempt": attempt,
        "manifest": storage.redact(config["manifest"]), "root": storage.redact(root),
        "run_url": storage.redact(paths.run_url), "generator": gen, "schedule": plan["schedule"],
        "init": plan.get("init"), "encoder": plan.get("encoder"), "engine": plan.get("engine"),
        "seed": config["seed"],
        "rows": {"outputs": len(outputs), "input_rows_done": len(done_rows),
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
        "metrics": {"psnr": _quantiles([o.get("psnr") for o in out_list]),
                    "lpips": _quantiles([o.get("lpips") for o in out_list]),
                    "ssim": _quantiles([o.get("ssim") for o in out_list])},
        "files": {"manifest": storage.redact(output_manifest_url), "errors": storage.redact(errors_url),
                  "outputs": storage.redact(paths.url("outputs")), "report": storage.redact(paths.url("report.md")),
                  "report_html": storage.redact(paths.url("report.html")),
                  "sheet": storage.redact(paths.url("sheet.png"))},
    }
    if config["kind"] == "augment":
        source = manifest_url_for(config["manifest"], manifest_url)
        summary["files"]["dataset"] = storage.redact(_write_dataset(paths, out_list, config, source))
    job = JobConfig.from_json(config)
    # The sheet shows the run's inputs (under the job's own input policy) and its outputs.
    policy = job.input_policy()
    sheet_inputs = InputPolicy((*(policy.allowed or ()), paths.run_url), policy.max_bytes)
    sheet = _write_sheet(paths, out_list, gen["resolution"], sheet_inputs)
    if sheet is None:
        summary["files"]["sheet"] = None
    md = report_markdown(summary, out_list, err_list)
    storage.write_text(paths.url("report.md"), md)
    storage.write_text(paths.url("report.html"), _html(summary, out_list, err_list))
    # summary.json last: its presence marks the run finished.
    storage.write_json(paths.url("summary.json"), summary)
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


def _write_dataset(paths: RunPaths, outs: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                   manifest_url: str) -> str:
    """``dataset.csv`` of an augmentation run: a manifest (id, image + lineage columns) that a
    training job or another i2score run can read directly."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # Not "op"/"params": those columns mean an edit to a manifest reader; these are lineage.
    w.writerow(["id", "image", "source_id", "partner_id", "augmentation", "augmentation_params"])
    if config.get("include_originals", True):
        job = JobConfig.from_json(config)
        originals = job.read_manifest(manifest_url)
        for r in validate_manifest(originals, CATALOG, kind="reconstruct", inputs=job.input_policy()).rows:
            w.writerow([r.id, r.image, r.id, "", "original", "{}"])
    for o in outs:
        rel = "outputs/" + storage.basename(o["output_url"])
        partner = o["source_ids"][1] if len(o["source_ids"]) > 1 else ""
        w.writerow([o["id"], rel, o["source_ids"][0], partner, o["op"].split("/", 1)[-1],
                    json.dumps(o["params"], sort_keys=True)])
    url = paths.url("dataset.csv")
    storage.write_text(url, buf.getvalue())
    return url


def _write_sheet(paths: RunPaths, outs: Sequence[Mapping[str, Any]], resolution: int, read_policy: InputPolicy,
                 limit: int = 16) -> str | None:
    """A contact sheet: per output (up to ``limit``), its input image(s) and the output."""
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
            cells.append(None if t is None else Cell(t, storage.basename(i[role])[:14]))
        t = tile(o["output_url"])
        psnr = o.get("psnr")
        caption = f"{o['id'][:14]}\n{psnr:.1f} dB" if psnr is not None else o["id"][:14]
        cells.append(None if t is None else Cell(t, caption))
        rows.append(cells)
    img = contact_sheet(rows, scale=2, title=f"run {paths.run_id}", column_titles=[*roles, "output"])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    url = paths.url("sheet.png")
    storage.write_bytes(url, buf.getvalue())
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


def _start_and_engine(s: Mapping[str, Any]) -> list[str]:
    """Report lines: where embeddings started, converge-stopping, and how the engine computed."""
    lines = []
    sch, init, enc, eng = s["schedule"], s.get("init"), s.get("encoder"), s.get("engine")
    if init:
        start = f"encoder `{enc['id']}` (sha256 `{enc['sha256'][:12]}…`)" if init == "encoder" and enc else f"`{init}`"
        stop = (f", each image stops when its loss gains < {sch['min_delta_db']} dB over {sch['patience']} steps"
                if sch.get("converge") else "")
        lines.append(f"- embeddings start from {start}{stop}")
    if eng:
        repro = "bit-reproducible for a seed on this device" if eng["bit_reproducible"] else (
            "reproducible to float tolerance, not bit for bit")
        extra = "".join(f", {k}" for k in ("channels_last", "compile") if eng.get(k))
        lines.append(f"- engine: {eng['precision']}{extra} ({repro})")
    return lines


def report_markdown(summary: Mapping[str, Any], outs: Sequence[Mapping[str, Any]],
                    errors: Sequence[Mapping[str, Any]], *, max_links: int = 50) -> str:
    """The run report as Markdown (also the flows' Markdown artifact)."""
    s = summary
    sch, gen = s["schedule"], s["generator"]
    dataset = ", [dataset.csv](dataset.csv)" if "dataset" in s["files"] else ""
    lines = [
        f"# i2score {s['kind']} run `{s['run_id']}`",
        "",
        f"- manifest: `{s['manifest']}`",
        f"- generator: `{gen['id']}` ({gen['resolution']} px, sha256 `{str(gen['sha256'])[:12]}…`)",
        (f"- schedule: `{sch['name']}` (embedding {sch['steps_w']} + {sch['steps_n']} steps, "
        f"edits {sch['edit_steps_w']} + {sch['edit_steps_n']})"),
        *_start_and_engine(s),
        f"- outputs: {s['rows']['outputs']}, failed rows: {s['rows']['failed']}",
        (f"- this attempt: {s['batches_run']} batches, {s['embedded']} images embedded ({s['embedding_steps']} "
        f"steps), {s['cache_hits']} cache hits, {s['edit_steps']} edit steps"),
        (f"- files (in `{s['run_url']}`): [manifest.parquet](manifest.parquet), [errors.parquet](errors.parquet), "
        f"[summary.json](summary.json){dataset}"),
        "",
    ]
    if s["files"].get("sheet"):
        lines += ["![contact sheet](sheet.png)", ""]
    lines += ["| metric | n | min | p10 | median | p90 | max |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, q in s["metrics"].items():
        if q:
            lines.append(f"| {name} | {q['n']} | {q['min']} | {q['p10']} | {q['median']} | {q['p90']} | {q['max']} |")
    lines.append("")
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
    lines += ["## Outputs", ""]
    for o in list(outs)[:max_links]:
        lines.append(f"- [{o['id']}](outputs/{storage.basename(o['output_url'])}) ({o['op']})")
    if len(outs) > max_links:
        lines.append(f"- … {len(outs) - max_links} more in manifest.parquet")
    return "\n".join(lines) + "\n"


def _html(summary: Mapping[str, Any], outs: Sequence[Mapping[str, Any]], errors: Sequence[Mapping[str, Any]]) -> str:
    from html import escape

    s = summary
    rows = "".join(f"<tr><td>{escape(str(e.get('row')))}</td><td>{escape(str(e.get('id')))}</td>"
                   f"<td>{escape(e['reason_code'])}</td><td>{escape(str(e['message']))}</td></tr>"
                   for e in errors[:100])
    links = "".join(f"<li><a href=\"outputs/{escape(storage.basename(o['output_url']))}\">{escape(o['id'])}</a> "
                    f"({escape(o['op'])})</li>" for o in list(outs)[:200])
    stats = "".join(f"<tr><td>{k}</td>" + "".join(f"<td>{q[c]}</td>" for c in ("n", "min", "median", "max")) + "</tr>"
                    for k, q in s["metrics"].items() if q)
    return (f"<!doctype html><meta charset=utf-8><title>i2score {escape(s['run_id'])}</title>"
            f"<h1>i2score {escape(s['kind'])} run {escape(s['run_id'])}</h1>"
            f"<p>{s['rows']['outputs']} outputs, {s['rows']['failed']} failed rows; this attempt embedded "
            f"{s['embedded']} images ({s['embedding_steps']} steps) with {s['cache_hits']} cache hits.</p>"
            + ("<img src=\"sheet.png\" alt=\"contact sheet\">" if s["files"].get("sheet") else "")
            + f"<h2>Metrics</h2><table border=1><tr><th>metric</th><th>n</th><th>min</th><th>median</th>"
              f"<th>max</th></tr>{stats}</table>"
            + "".join(f"<p>psnr, {escape(op)}: {escape(what)} (<code>{escape(key)}</code>)</p>"
                      for op, what, key in psnr_meanings(outs))
            + (f"<h2>Failed rows</h2><table border=1><tr><th>row</th><th>id</th><th>reason</th>"
               f"<th>message</th></tr>{rows}</table>" if errors else "")
            + f"<h2>Outputs</h2><ul>{links}</ul>")


def read_summary(root: str, run_id: str) -> dict[str, Any]:
    """``summary.json`` of a finished run."""
    return read_json(RunPaths(root, run_id).url("summary.json"))


