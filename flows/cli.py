"""The ``i2s`` command: the library's commands (:mod:`i2score.cli.app`) plus the flows.

Flow commands run the Prefect flow in this process (without ``PREFECT_API_URL`` Prefect starts a
temporary local server for the run's bookkeeping), show a progress bar per batch and print
where the outputs and the report are. Exit codes: 0 every row succeeded, 1 some rows failed
(listed in ``errors.parquet`` and the report; the other rows are complete), 2 the job could not
run (bad arguments, device, root, manifest, model or weights, found by the checks before the
run, :mod:`i2score.runs.preflight`, before Prefect starts; the temporary Prefect server did not
start, or another process is running the same job: one line ``run X is active (owner H:P, since
T)``; ``--wait`` waits for it instead). The flow run's state says the same: Completed, "Completed with failures"
(some rows failed) or Failed (every row failed: exit 1 too, the rows' errors are written; or the
job could not run: exit 2).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from pydantic import SecretStr
from rich.console import Console

from i2score.cli.app import app
from i2score.cli.manifest import MASKS_HELP
from i2score.cli.progress_bar import StepProgressBar
from i2score.data import storage
from i2score.runs.config import DEFAULT_MIN_REALISM, DEFAULT_REALISM_K
from i2score.runs.lease import RunActiveError
from i2score.runs.secret_urls import has_credentials

if TYPE_CHECKING:  # Prefect is imported after its settings are in the environment (_prefect_env)
    from prefect import Flow, State

#: The demo's manifests and images: package data (i2score/demo/data, a link to manifests/demo in
#: a clone), resolved so that a clone's run ids and input confinement see manifests/demo.
DEMO_DIR = Path(str(files("i2score.demo") / "data")).resolve()

Root = Annotated[str, typer.Option("--root", help="Storage root URL: a local folder, s3://bucket/prefix, ... "
                                                  "(the latent cache and runs/ live below it).")]
Model = Annotated[str | None, typer.Option(help="Generator: registry name, path or URL "
                                                "(default: the bundled demo-faces-64).")]
ScheduleOpt = Annotated[str, typer.Option(help="Where on the quality-time frontier: 'fast' (encoder start, short "
                                               "converge-stopped stages), 'encoder' (no optimisation), 'paper' "
                                               "(5000+3000 from the mean, edits 1000+1000), 'demo', 'W+N' or "
                                               "'W+N/EW+EN'.")]
BatchSize = Annotated[str, typer.Option(help="Images per batch (one task per batch), or 'auto' (CUDA: the largest "
                                             "that fits in memory; CPU: 8).")]
Init = Annotated[str | None, typer.Option(help="Where embeddings start: mean, uniform or encoder (default: the "
                                               "schedule's).")]
EncoderOpt = Annotated[str | None, typer.Option("--encoder", help="Encoder of an encoder start: registry name, "
                                                                  "path or URL (default: the generator's).")]
Precision = Annotated[str, typer.Option(help="auto (CPU fp32, CUDA bf16), fp32 or bf16.")]
WClosenessOpt = Annotated[str | None, typer.Option(
    "--w-closeness", help="W-closeness penalties of the embedding's W+ stage: none, offset=λ, pnorm=λ "
                          "(comma-separated; default: the job kind's, README 'Editability').")]
ChannelsLast = Annotated[bool | None, typer.Option("--channels-last/--no-channels-last",
                                                   help="NHWC activations (default: off).")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the generator (compiles once per process).")]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:1, ...")]
Runner = Annotated[str, typer.Option(help="Task runner: local (one batch at a time in this process), "
                                          "dask-local[:N] (N worker processes here), local-cuda (one "
                                          "worker per GPU), dask://HOST:PORT (an existing Dask cluster).")]
Seed = Annotated[int, typer.Option(help="Seed of initial latents and random draws.")]
RunId = Annotated[str | None, typer.Option(help="Run id (default: derived from the job, so re-running "
                                                "resumes an interrupted run or does nothing).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's log lines, tracebacks and the time "
                                                               "of the checks before the run.")]
Allow = Annotated[list[str] | None, typer.Option(
    "--allow", help="URL prefix the manifest's files may come from (repeatable: a folder, s3://bucket/prefix/, "
                    "https://host/path/). Default: the manifest's own folder only (a folder or glob input: "
                    "its folder and the --masks folder).")]
MaxInputBytes = Annotated[int | None, typer.Option(help="Largest input file read, in bytes (default 64 MiB).")]
AlignOpt = Annotated[bool, typer.Option("--align", help="FFHQ-align every image first (the largest face; eyes and "
                                                         "mouth -> FFHQ's crop, at the generator's resolution; "
                                                         "no face: a no_face row). Needs i2score[align].")]
PasteBack = Annotated[bool, typer.Option("--paste-back", help="With --align: write each output pasted into the "
                                                              "original photo (<id>.png; the aligned output is "
                                                              "<id>.aligned.png).")]
Wait = Annotated[bool, typer.Option("--wait", help="When another process is running the same job (its run lease is "
                                                  "held), wait until it finishes or its lease expires, then resume "
                                                  "the run or find it finished; without --wait exit 2 at once.")]


#: Seconds the temporary Prefect server (no PREFECT_API_URL) may take to start; Prefect's 20 s
#: default is missed on a busy machine.
EPHEMERAL_SERVER_STARTUP_TIMEOUT_S = 120


def _prefect_env(verbose: bool) -> None:
    # Set before Prefect is imported: its settings are read once.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_SERVER_STARTUP_TIMEOUT_S))
    if not verbose:
        # The run's INFO lines (planning, each batch, the summary) still reach the Prefect API and
        # its UI; only the terminal is quiet: the progress bar, its warnings and the result are
        # printed by this command.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "ERROR")


def _start_temporary_server() -> None:
    """Without PREFECT_API_URL, start Prefect's temporary server now (the one its client would
    start for the flow run, a per-process singleton), so that its failure is exit 2 with one line
    instead of a traceback from inside the flow call."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value():
        return
    try:
        SubprocessASGIServer().start()
    except Exception as e:  # noqa: BLE001 - any failure to start it means the job cannot run
        first_line = (str(e).splitlines() or [""])[0][:200]
        typer.echo(f"the temporary Prefect server did not start within "
                   f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s ({type(e).__name__}: {first_line}); "
                   "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL to a running "
                   "server", err=True)
        raise typer.Exit(2) from None


#: perf_counter() when :func:`main` started the command (after the imports); -v reports the
#: checks' time from it.
_CLI_START: float | None = None


def _preflight(flow_name: str, verbose: bool, params: dict[str, Any]) -> None:
    """The checks before a run (:mod:`i2score.runs.preflight`), before Prefect is imported or
    any server, flow run or folder exists: a failure is one line on stderr and exit 2 (with
    ``-v`` the traceback and the checks' time first)."""
    from i2score.runs.preflight import PreflightError, preflight

    t0 = time.perf_counter()
    try:
        report = preflight(flow_name, params)
    except PreflightError as e:
        if verbose:
            traceback.print_exc()
            typer.echo(_timing("checks before the run failed", t0), err=True)
        typer.echo(f"{flow_name}: {e}", err=True)
        raise typer.Exit(2) from None
    if verbose:
        typer.echo(_timing("checks before the run passed", t0) + ": " +
                   "; ".join(f"{k}: {v}" for k, v in report.found.items()), err=True)


def _timing(what: str, t0: float) -> str:
    now = time.perf_counter()
    since = f", {now - _CLI_START:.3f} s since the command started" if _CLI_START is not None else ""
    return f"{what} in {now - t0:.3f} s{since}"


def _run(flow_name: str, verbose: bool, **params: Any) -> dict[str, Any]:
    """Run one flow with a progress bar; returns its result (exits 2 when it cannot run)."""
    _preflight(flow_name, verbose, params)
    _prefect_env(verbose)
    _start_temporary_server()
    from i2score.flows import augment, edit, inpaint, reconstruct

    flows: dict[str, Flow[..., dict[str, Any]]] = {"reconstruct": reconstruct.reconstruct, "inpaint": inpaint.inpaint,
                                        "edit": edit.edit, "augment": augment.augment}
    flow = flows[flow_name]
    if has_credentials(params["manifest"]):
        # Prefect stores a flow run's parameters; a SecretStr is stored as "**********".
        params = {**params, "manifest": SecretStr(params["manifest"])}
    console = Console(stderr=True)
    with StepProgressBar(flow_name, console):
        # Flow.__call__'s overloads match return_state=True into **kwargs of a Flow[..., T]
        # (typed T, not State[T]); at run time it is the state.
        state = cast("State[dict[str, Any]]", flow(**params, return_state=True))
    outcome = state.result(raise_on_failure=False)
    if state.is_failed() and isinstance(outcome, dict):
        return outcome  # a run whose rows all failed: its errors are written (exit 1, not 2)
    if not state.is_completed():
        exc = outcome
        if isinstance(exc, RunActiveError):
            typer.echo(str(exc), err=True)  # one line: run X is active (owner H:P, since T)
        else:
            console.print(f"[red]{flow_name} failed:[/red] {storage.redact(f'{type(exc).__name__}: {exc}')}")
        raise typer.Exit(2)
    return cast("dict[str, Any]", outcome)


def _engine(batch_size: str, init: str | None, encoder: str | None, precision: str, channels_last: bool | None,
            compile: bool) -> dict[str, Any]:
    """The flows' batch-size and engine parameters from the CLI's options (exits 2 on a bad batch size)."""
    size: int | str = batch_size
    if batch_size != "auto":
        try:
            size = int(batch_size)
        except ValueError:
            Console(stderr=True).print(f"[red]--batch-size {batch_size!r}[/red]: a positive integer or 'auto'")
            raise typer.Exit(2) from None
    return {"batch_size": size, "init": init, "encoder": encoder, "precision": precision,
            "channels_last": channels_last, "compile": compile}


def _inputs(allow: list[str] | None, max_input_bytes: int | None) -> dict[str, Any]:
    """The flows' input-confinement parameters from the CLI's options (exits 2 on a bad value)."""
    from i2score.data.inputs import InputPolicy

    try:
        InputPolicy(tuple(allow) if allow else None, max_input_bytes if max_input_bytes is not None else 1)
    except ValueError as e:
        Console(stderr=True).print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    return {"allowed_inputs": [a if "://" in a else os.path.abspath(a) for a in allow] if allow else None,
            "max_input_bytes": max_input_bytes}


def _report(result: dict[str, Any]) -> None:
    console = Console()
    what = "already finished, nothing recomputed" if result["noop"] else (
        f"{result['embedding_steps']} embedding steps, {result['cache_hits']} cache hits")
    console.print(f"run [bold]{result['run_id']}[/bold]: {result['outputs']} outputs, "
                  f"{result['failed']} failed rows ({what})")
    console.print(f"  outputs: {result['run_url']}/outputs/")
    console.print(f"  report:  {result['report']}  (and report.html, sheet.png, summary.json)")
    if result["failed"]:
        console.print(f"  [yellow]failed rows: see {result['run_url']}/errors.parquet or the report[/yellow]")
    if result.get("realism_not_scored"):
        console.print(f"  [yellow]realism gate: {result['realism_not_scored']}[/yellow]")
    elif "realism_dropped" in result:
        console.print(f"  realism gate: {result['realism_dropped']} augmented rows below min_realism "
                      f"{result['min_realism']:g} left out of dataset.csv (listed in summary.json and the report)")


def _finish(result: dict[str, Any]) -> None:
    _report(result)
    if result["failed"]:
        raise typer.Exit(1)


@app.command("reconstruct")
def reconstruct_cmd(
    manifest: Annotated[str, typer.Argument(help="Manifest (CSV/TSV/Parquet/JSONL) with id, image, or a folder or "
                                                 "glob of png/jpg/jpeg/webp images (./photos, 'photos/*.jpg').")],
    root: Root = "i2s-data", model: Model = None, schedule: ScheduleOpt = "fast", batch_size: BatchSize = "8",
    device: Device = "auto", runner: Runner = "local", seed: Seed = 0, run_id: RunId = None,
    verbose: Verbose = False,
    init: Init = None, encoder: EncoderOpt = None, w_closeness: WClosenessOpt = None, precision: Precision = "auto",
    channels_last: ChannelsLast = None, compile: Compile = False, allow: Allow = None,
    max_input_bytes: MaxInputBytes = None, wait: Wait = False,
    align: AlignOpt = False, paste_back: PasteBack = False,
) -> None:
    """Embed every image of MANIFEST (cache hits are skipped) and write its reconstruction."""
    _finish(_run("reconstruct", verbose, manifest=manifest, root=root, model=model, schedule=schedule,
                 device=device, runner=runner, seed=seed, run_id=run_id,
                 align=align, paste_back=paste_back,
                 wait_for_lease=wait, **_engine(batch_size, init, encoder, precision, channels_last, compile),
                 w_closeness=w_closeness,
                 **_inputs(allow, max_input_bytes)))


@app.command("inpaint")
def inpaint_cmd(
    manifest: Annotated[str, typer.Argument(help="Manifest with id, image, mask (white = missing), or a folder or "
                                                 "glob of images with their masks (name_mask.png, or --masks).")],
    root: Root = "i2s-data", k: Annotated[int, typer.Option(help="Solutions per row (a row's params may "
                                                                   "override).")] = 1,
    model: Model = None, schedule: ScheduleOpt = "fast", batch_size: BatchSize = "8", device: Device = "auto",
    runner: Runner = "local", seed: Seed = 0, run_id: RunId = None, verbose: Verbose = False,
    init: Init = None, encoder: EncoderOpt = None, w_closeness: WClosenessOpt = None, precision: Precision = "auto",
    channels_last: ChannelsLast = None, compile: Compile = False, allow: Allow = None,
    max_input_bytes: MaxInputBytes = None, wait: Wait = False,
    masks: Annotated[str | None, typer.Option("--masks", help=MASKS_HELP)] = None,
    align: AlignOpt = False, paste_back: PasteBack = False,
) -> None:
    """Fill the masked region of every row, k solutions each."""
    _finish(_run("inpaint", verbose, manifest=manifest, root=root, k=k, model=model, schedule=schedule,
                 device=device, runner=runner, seed=seed, run_id=run_id,
                 masks=masks,
                 align=align, paste_back=paste_back,
                 wait_for_lease=wait, **_engine(batch_size, init, encoder, precision, channels_last, compile),
                 w_closeness=w_closeness,
                 **_inputs(allow, max_input_bytes)))


@app.command("edit")
def edit_cmd(
    manifest: Annotated[str, typer.Argument(help="Edit manifest: id, op, image, ref/mask/params per op.")],
    root: Root = "i2s-data", model: Model = None, schedule: ScheduleOpt = "fast", batch_size: BatchSize = "8",
    device: Device = "auto", runner: Runner = "local", seed: Seed = 0, run_id: RunId = None,
    verbose: Verbose = False,
    init: Init = None, encoder: EncoderOpt = None, w_closeness: WClosenessOpt = None, precision: Precision = "auto",
    channels_last: ChannelsLast = None, compile: Compile = False, allow: Allow = None,
    max_input_bytes: MaxInputBytes = None, wait: Wait = False,
    align: AlignOpt = False, paste_back: PasteBack = False,
) -> None:
    """Run every edit of MANIFEST from cached latents (sources not in the cache are embedded first)."""
    _finish(_run("edit", verbose, manifest=manifest, root=root, model=model, schedule=schedule,
                 device=device, runner=runner, seed=seed, run_id=run_id,
                 align=align, paste_back=paste_back,
                 wait_for_lease=wait, **_engine(batch_size, init, encoder, precision, channels_last, compile),
                 w_closeness=w_closeness,
                 **_inputs(allow, max_input_bytes)))


#: Held-out portraits of the realism reference start past the 16 that ship as the demo's sample
#: data (``heldout-00..15``, which the demo augments): a reference must not hold the inputs themselves.
HELDOUT_REFERENCE_OFFSET = 16


def _heldout_reference(root: str, model: str | None, n: int) -> str:
    """``--realism-heldout N``: render held-out demo portraits (seeds ``1_000_016`` on) into
    ``<root>/realism-reference/demo-heldout-<n>/`` once, and return that folder's URL."""
    from i2score.demo.portraits import HELDOUT_SEED_BASE, render_portrait
    from i2score.generator.registry import DEMO_MODELS

    if model not in (None, *DEMO_MODELS):
        raise typer.BadParameter(f"--realism-heldout adds demo portraits, which are real images only for the demo "
                                 f"models ({', '.join(DEMO_MODELS)}), not for {model!r}; "
                                 f"use --realism-reference FOLDER")
    if not 1 <= n <= 1024:
        raise typer.BadParameter(f"--realism-heldout must be in 1..1024, got {n}")
    import io

    from PIL import Image

    base = root if "://" in root else os.path.abspath(os.path.expanduser(root))
    folder = storage.join(base, "realism-reference", f"demo-heldout-{n}")
    for i in range(n):
        seed = HELDOUT_SEED_BASE + HELDOUT_REFERENCE_OFFSET + i
        url = storage.join(folder, f"heldout-{seed}.png")
        if not storage.exists(url):  # a pure function of the seed: an existing file is the same image
            buf = io.BytesIO()
            Image.fromarray(render_portrait(seed, 64)).save(buf, format="PNG")
            storage.write_bytes(url, buf.getvalue())
    return folder


@app.command("augment")
def augment_cmd(
    manifest: Annotated[str, typer.Argument(help="Manifest with id, image (the dataset to augment), or a folder or "
                                                 "glob of images.")],
    root: Root = "i2s-data",
    n_per_image: Annotated[int, typer.Option(help="Variants per image.")] = 4,
    ops: Annotated[str, typer.Option(help="Comma-separated: style_mix, crossover, noise, jitter, "
                                          "interpolate.")] = "style_mix,crossover,noise,jitter,interpolate",
    originals: Annotated[bool, typer.Option(help="List the original images in dataset.csv too.")] = True,
    model: Model = None, schedule: ScheduleOpt = "fast", batch_size: BatchSize = "8", device: Device = "auto",
    runner: Runner = "local", seed: Seed = 0, run_id: RunId = None, verbose: Verbose = False,
    init: Init = None, encoder: EncoderOpt = None, w_closeness: WClosenessOpt = None, precision: Precision = "auto",
    channels_last: ChannelsLast = None, compile: Compile = False, allow: Allow = None,
    max_input_bytes: MaxInputBytes = None, wait: Wait = False,
    align: AlignOpt = False,
    min_realism: Annotated[float, typer.Option(
        help="Leave augmented rows whose realism score (Kynkäänniemi et al. 2019, VGG16, against the originals) "
             "is below this out of dataset.csv; 0 keeps all (README \"Realism gate\").")] = DEFAULT_MIN_REALISM,
    realism_k: Annotated[int, typer.Option(help="Neighbour rank k of the realism score (needs k + 1 reference "
                                                "images).")] = DEFAULT_REALISM_K,
    realism_reference: Annotated[str | None, typer.Option(
        help="A folder, glob or manifest of more real images for the realism reference set.")] = None,
    realism_heldout: Annotated[int, typer.Option(
        help="Demo model only: add N held-out demo portraits to the realism reference set.")] = 0,
) -> None:
    """Write N variants of every image and a dataset.csv manifest with their lineage and realism scores."""
    if realism_heldout:
        if realism_reference is not None:
            raise typer.BadParameter("give --realism-reference or --realism-heldout, not both")
        realism_reference = _heldout_reference(root, model, realism_heldout)
    _finish(_run("augment", verbose, manifest=manifest, root=root, n_per_image=n_per_image,
                 ops=[o.strip() for o in ops.split(",") if o.strip()], include_originals=originals, model=model,
                 schedule=schedule, device=device, runner=runner, seed=seed,
                 run_id=run_id,
                 align=align, min_realism=min_realism, realism_k=realism_k, realism_reference=realism_reference,
                 wait_for_lease=wait, **_engine(batch_size, init, encoder, precision, channels_last, compile),
                 w_closeness=w_closeness,
                 **_inputs(allow, max_input_bytes)))


@app.command("demo")
def demo_cmd(
    root: Root = "i2s-demo", schedule: ScheduleOpt = "demo", device: Device = "auto",
    verbose: Verbose = False,
) -> None:
    """The main job on the bundled demo model: reconstruct the demo portraits, then edit them from
    the cached latents (crossover, inpainting, attribute transfer, morph, style mixing,
    expression transfer). About 2 minutes on 2 CPU cores."""
    reconstruct_manifest, edit_manifest = DEMO_DIR / "demo-reconstruct.csv", DEMO_DIR / "demo-edit.csv"
    for m in (reconstruct_manifest, edit_manifest):
        if not m.is_file():
            Console(stderr=True).print(f"[red]{m} not found[/red]: the package's demo data is missing; reinstall "
                                       "i2score")
            raise typer.Exit(2)
    jobs = {kind: {"manifest": str(m), "root": root, "schedule": schedule, "batch_size": 8, "device": device}
            for kind, m in (("reconstruct", reconstruct_manifest), ("edit", edit_manifest))}
    for kind, params in jobs.items():  # both, before the first starts
        _preflight(kind, verbose, params)
    console = Console()
    console.print("[bold]1/2[/bold] reconstruct: embed the demo portraits into W+ and noise space")
    rec = _run("reconstruct", verbose, **jobs["reconstruct"])
    _report(rec)
    console.print("[bold]2/2[/bold] edit: edits that start from the cached latents")
    ed = _run("edit", verbose, **jobs["edit"])
    _report(ed)
    console.print(f"\nOpen [bold]{ed['run_url']}/report.html[/bold] (or report.md) and "
                  f"{rec['run_url']}/report.html.")
    if rec["failed"] or ed["failed"]:
        raise typer.Exit(1)


@app.command("shard")
def shard_cmd(
    manifest: Annotated[str, typer.Argument(help="The large manifest to split.")],
    deployment: Annotated[str, typer.Option(help="Deployment to run per shard, flow/name (e.g. reconstruct/nightly).")],
    root: Root = "i2s-data",
    rows_per_shard: Annotated[int, typer.Option(help="Rows per shard (one deployment run each).")] = 1000,
    max_concurrent: Annotated[int, typer.Option(help="Shard runs at a time.")] = 4,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE passed to every shard run "
                                                                           "(VALUE as JSON when it parses).")] = None,
    verbose: Verbose = False,
) -> None:
    """Run DEPLOYMENT once per shard of MANIFEST on its work pool (needs PREFECT_API_URL and
    workers of that pool); re-launching the same job resumes unfinished shards."""
    import json

    _prefect_env(verbose)
    params: dict[str, Any] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            Console(stderr=True).print(f"[red]--param {item!r}[/red]: expected KEY=VALUE")
            raise typer.Exit(2)
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    from i2score.flows.sharded import sharded

    state = sharded(manifest, deployment, root=root, rows_per_shard=rows_per_shard, max_concurrent=max_concurrent,
                    parameters=params, return_state=True)
    if not state.is_completed():
        exc = state.result(raise_on_failure=False)
        Console(stderr=True).print(f"[red]shard failed:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(2)
    result = state.result()
    Console().print(f"{result['shards']} shards ({result['shards_failed']} failed, {result['noop_shards']} already "
                    f"finished), {result['outputs']} outputs, {result['failed_rows']} failed rows, "
                    f"{result['rejected_rows']} rows rejected ({result['errors']})")
    if result["shards_failed"] or result["failed_rows"] or result["rejected_rows"]:
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd(
    manifest: Annotated[str, typer.Option(help="Manifest of the nightly reconstruction.")],
    root: Root = "i2s-data",
    cron: Annotated[str, typer.Option(help="Cron schedule of the nightly reconstruction (UTC).")] = "0 3 * * *",
    model: Model = None, schedule: ScheduleOpt = "fast", device: Device = "auto",
    limit: Annotated[int, typer.Option(help="Flow runs at a time on this machine.")] = 1,
    allow: Allow = None,
) -> None:
    """Serve the four flows from this machine (needs a Prefect server: `prefect server start`,
    PREFECT_API_URL set): a nightly reconstruction of MANIFEST on CRON, the others on demand
    (`prefect deployment run 'edit/edit'` ...)."""
    _prefect_env(True)
    from prefect import serve

    from i2score.flows.deployments import deployments

    allowed = _inputs(allow, None)["allowed_inputs"]
    serve(*deployments(manifest=manifest, root=root, cron=cron, model=model, schedule=schedule, device=device,
                       allowed_inputs=allowed), limit=limit)


#: Set (to anything but "" or 0) to print the traceback of an unexpected error of any command.
TRACEBACK_ENV = "I2S_TRACEBACK"


def main() -> None:
    """The ``i2s`` command. An unexpected exception (outside a flow run, whose failures the
    commands report themselves) is one line and exit 2; ``-v``/``--verbose`` or
    ``I2S_TRACEBACK=1`` print its traceback too."""
    global _CLI_START
    _CLI_START = time.perf_counter()
    verbose = any(a in ("-v", "--verbose") for a in sys.argv[1:]) or \
        os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    app.pretty_exceptions_enable = False  # not 100 lines of rich traceback: one line, or Python's with -v
    try:
        app()
    except Exception as e:  # noqa: BLE001 - the last resort of the command line
        if verbose:
            traceback.print_exc()
        first = (storage.redact(str(e)).splitlines() or [""])[0][:300]
        typer.echo(f"error: {type(e).__name__}: {first}" + ("" if verbose else " (-v or I2S_TRACEBACK=1 for the "
                                                                              "traceback)"), err=True)
        sys.exit(2)


__all__ = ["app", "main"]
if __name__ == "__main__":  # python -m i2score.flows.cli (what `i2s` runs)
    main()
