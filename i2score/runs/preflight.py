"""Checks before a run: what would make a job fail at its start, found in well under a second
on the demo model, before any Prefect server, flow run or run folder exists.

:func:`preflight` takes a job's kind and its flow parameters (what ``i2s <flow>`` passes to the
flow) and checks, cheapest first: the arguments (schedule, runner, batch size and the rest of
:class:`~i2score.runs.config.JobConfig`), the device, the storage root (reachable, and writable
or creatable, without writing anything), the manifest (readable, with the columns its kind
needs), the generator (resolvable without a download, and loading), the encoder of an encoder
start, and the VGG16 weights (found, not read). The first failure raises
:class:`PreflightError`, whose message is one line with a hint.

The flows keep their own validation: a run started otherwise (a deployment) is checked where it
runs, and this module changes nothing a run computes or how its job is identified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from i2score.data import storage
from i2score.data.manifest import ManifestError
from i2score.features.weights import VGGWeightsError, locate_vgg16_weights
from i2score.generator.network import StyleGAN2
from i2score.generator.registry import BUNDLED_SCHEME, MODELS, RegistryEntry, model_cache_path
from i2score.runs.config import JOB_KINDS, JobConfig, Schedule
from i2score.runs.ops import AUGMENT_OPS, KINDS
from i2score.runs.runner_spec import RunnerError, check_runner, missing_packages

#: What an S3 store needs when it refuses for want of credentials (see README "S3").
S3_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or FSSPEC_S3_KEY and "
                       "FSSPEC_S3_SECRET; for a server other than AWS also FSSPEC_S3_ENDPOINT_URL "
                       "(or I2S_STORAGE_OPTIONS='{\"s3\": {\"endpoint_url\": ...}}')")

class PreflightError(ValueError):
    """A check before a run failed. ``str(e)`` is one line: what is wrong and how to fix it.

    Attributes:
        check: which check (``arguments``, ``device``, ``root``, ``manifest``, ``model``,
            ``encoder``, ``vgg16``).
        line: the message.
    """

    def __init__(self, check: str, line: str) -> None:
        line = " ".join(line.split())  # one line whatever the cause's message held
        super().__init__(line)
        self.check = check
        self.line = line


@dataclass
class PreflightReport:
    """What the checks found (all passed).

    Attributes:
        config: the job as the flow will build it.
        seconds: wall time of each check, by name, and ``total``.
        found: one line per check on what it found (the model file, the VGG16 weights, ...).
    """

    config: JobConfig
    seconds: dict[str, float] = field(default_factory=dict)
    found: dict[str, str] = field(default_factory=dict)


def preflight(kind: str, params: Mapping[str, Any]) -> PreflightReport:
    """Check the job ``kind`` (``reconstruct``/``inpaint``/``edit``/``augment``) with the flow
    parameters ``params`` (``manifest`` as a plain URL, ``root``, ``model``, ``schedule``,
    ``batch_size``, ``device``, ``runner``, ...; absent ones take the flow's defaults) before it
    runs. Reads the manifest and the generator's file; writes nothing, downloads nothing,
    starts nothing.

    Returns:
        A :class:`PreflightReport` (the job config, what was found, each check's seconds).

    Raises:
        PreflightError: the first check that failed, as one line with a hint.
    """
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    found: dict[str, str] = {}

    def timed(name: str, t0: float) -> None:
        seconds[name] = time.perf_counter() - t0

    t0 = time.perf_counter()
    config = check_arguments(kind, params)
    timed("arguments", t0)
    if config.align:
        from i2score.data.align import AlignUnavailableError, check_available

        try:
            found["align"] = check_available()
        except AlignUnavailableError as e:
            raise PreflightError("arguments", f"--align: {e}") from e

    t0 = time.perf_counter()
    found["device"] = check_device(config.device, str(params.get("runner", "local")))
    timed("device", t0)

    t0 = time.perf_counter()
    found["root"] = check_root(config.root)
    timed("root", t0)

    t0 = time.perf_counter()
    found["manifest"] = check_manifest(config)
    timed("manifest", t0)

    with _one_thread():
        t0 = time.perf_counter()
        G = check_model(config.model)
        found["model"] = f"{G.source} ({G.resolution}x{G.resolution}, {G.num_ws} W+ rows)"
        timed("model", t0)

        t0 = time.perf_counter()
        encoder = check_encoder(config, G)
        if encoder:
            found["encoder"] = encoder
        timed("encoder", t0)

    t0 = time.perf_counter()
    try:
        found["vgg16"] = locate_vgg16_weights()
    except VGGWeightsError as e:
        raise PreflightError("vgg16", str(e)) from e
    timed("vgg16", t0)

    seconds["total"] = time.perf_counter() - t_start
    return PreflightReport(config, seconds, found)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one intra-op thread while the checks load weights, then as it was: copying a
    small checkpoint's tensors is no work to share, and on a busy machine the OpenMP threads'
    hand-offs made loading the demo model take 0.55 s instead of 0.04 s (2 cores, 4 other jobs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_arguments(kind: str, params: Mapping[str, Any]) -> JobConfig:
    """The job's :class:`JobConfig` from ``params``, its runner checked; a bad value is a
    :class:`PreflightError` naming the parameter and what it accepts."""
    if kind not in JOB_KINDS:
        raise PreflightError("arguments", f"unknown job kind {kind!r}: one of {', '.join(JOB_KINDS)}")
    runner = str(params.get("runner", "local"))
    try:
        check_runner(runner)
    except RunnerError as e:
        raise PreflightError("arguments", str(e)) from e
    missing = missing_packages(runner)
    if missing:
        raise PreflightError("arguments", missing)
    batch_size = params.get("batch_size", 8)
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise PreflightError("arguments", f"batch size {batch_size!r}: a positive integer or 'auto'")
    schedule = str(params.get("schedule", "fast"))
    try:
        Schedule.parse(schedule)
    except ValueError as e:
        raise PreflightError("arguments", str(e)) from e
    ops = params.get("ops")
    if ops is not None:
        unknown = [o for o in ops if o not in AUGMENT_OPS]
        if unknown or not ops:
            raise PreflightError("arguments", f"augmentation ops {unknown or list(ops)!r}: each one of "
                                              f"{', '.join(AUGMENT_OPS)}")
    # Only what defines the run: other flow parameters (the runner, waiting for a lease, ...)
    # are the flow's own, and a parameter added to a flow later must not make every run fail here.
    known = {f.name for f in dataclasses.fields(JobConfig)} - {"kind"}
    fields = {k: v for k, v in params.items() if k in known}
    for name in ("ops", "allowed_inputs"):
        if fields.get(name) is not None:
            fields[name] = tuple(fields[name])
    if not isinstance(fields.get("manifest"), str) or not isinstance(fields.get("root", ""), str):
        raise PreflightError("arguments", "the manifest and the root must be URLs (strings)")
    try:
        return JobConfig(kind, **fields)
    except (TypeError, ValueError) as e:
        raise PreflightError("arguments", str(e)) from e


def check_device(device: str, runner: str = "local") -> str:
    """That ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ...) exists here, and a GPU for the
    ``local-cuda`` runner; returns the device the run will use."""
    import torch

    if runner == "local-cuda" and not torch.cuda.is_available():
        raise PreflightError("device", "runner 'local-cuda': no CUDA GPU is visible on this machine "
                                       "(torch.cuda.is_available() is False); use --runner local or dask-local")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise PreflightError("device", f"device {device!r} is not a torch device ({e}); use auto, cpu, cuda "
                                       "or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = (f"this torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
                     else "no GPU is visible (CUDA_VISIBLE_DEVICES, driver)")
            raise PreflightError("device", f"device {device!r} requested but torch.cuda.is_available() is False "
                                           f"({build}); use --device cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise PreflightError("device", f"device {device!r}: only {count} CUDA device(s) visible "
                                           f"(cuda:0..cuda:{count - 1})")
    elif dev.type not in ("cpu", "mps"):
        raise PreflightError("device", f"device {device!r}: use auto, cpu, cuda or cuda:N")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise PreflightError("device", f"device {device!r} requested but MPS is not available; use --device cpu")
    return str(dev)


def _is_credentials_error(exc: BaseException) -> bool:
    """botocore's ``NoCredentialsError`` (and kin), however s3fs or the storage layer passed it on."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}) or \
        "NoCredentialsError" in str(exc) or "Unable to locate credentials" in str(exc)


def _storage_failure(check: str, what: str, url: str, exc: BaseException) -> PreflightError:
    """A :class:`PreflightError` for a storage error at ``url``, with the S3 hint where it applies."""
    s3 = storage.is_remote(url) and url.lower().startswith(("s3://", "s3a://"))
    if s3 and (_is_credentials_error(exc) or isinstance(exc, PermissionError)):
        why = "no credentials" if _is_credentials_error(exc) else "access denied"
        return PreflightError(check, f"{what} {storage.redact(url)}: {why} ({type(exc).__name__}); "
                                     f"{S3_CREDENTIALS_HINT}")
    detail = storage.redact(str(exc)).splitlines()[0][:300] if str(exc) else ""
    hint = ""
    if s3 and (isinstance(exc, ConnectionError) or "EndpointConnectionError" in detail):
        hint = "; is the S3 endpoint right? (FSSPEC_S3_ENDPOINT_URL, or AWS's when unset)"
    return PreflightError(check, f"{what} {storage.redact(url)}: {type(exc).__name__}: {detail}{hint}")


def check_root(root: str) -> str:
    """That the storage root is reachable and writable, or can be created, without writing:
    a local folder (or its nearest existing parent) must be a writable folder; a remote root must
    answer (an S3 root's bucket must exist). Returns what was found."""
    if not storage.is_remote(root):
        path = Path(root.removeprefix("file://")).expanduser().absolute()
        probe = path
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if not probe.is_dir():
            raise PreflightError("root", f"root {path}: {probe} is not a folder; give --root a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise PreflightError("root", f"root {path}: {probe} is not writable; give --root a folder you can "
                                         "write to")
        return f"{path} ({'exists' if probe == path else f'will be created in {probe}'})"
    try:
        fs, key = storage.url_to_fs(root)
        fs.invalidate_cache(key)
        if fs.exists(key):
            return f"{storage.redact(root)} (exists)"
        if root.lower().startswith(("s3://", "s3a://")):
            bucket = key.split("/", 1)[0]
            if not fs.exists(bucket):
                raise PreflightError("root", f"root {storage.redact(root)}: bucket {bucket!r} does not exist "
                                             "(create it, or check FSSPEC_S3_ENDPOINT_URL)")
    except PreflightError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to reach the store means the run cannot start
        raise _storage_failure("root", "root", root, e) from e
    return f"{storage.redact(root)} (will be created)"


def check_manifest(config: JobConfig) -> str:
    """That the job's manifest (or folder or glob of images) reads, through the reader the flows
    use, and has the columns its kind needs; a missing column names the closest column present
    (``column 'image' missing (did you mean 'imgae'?)``). Rows are not checked here: a bad row is
    rejected by the run, which goes on."""
    url, kind = config.manifest, config.kind
    try:
        manifest = config.read_manifest()
    except FileNotFoundError as e:
        raise PreflightError("manifest", f"manifest {storage.redact(url)} not found") from e
    except IsADirectoryError as e:
        raise PreflightError("manifest", f"manifest {storage.redact(url)} is a folder; give a manifest file "
                                         "(CSV, TSV, Parquet or JSONL)") from e
    except ManifestError as e:
        raise PreflightError("manifest", str(e)) from e
    except Exception as e:  # noqa: BLE001 - storage errors (credentials, network) and unreadable files
        raise _storage_failure("manifest", "manifest", url, e) from e
    columns = KINDS["reconstruct" if kind == "augment" else kind].columns
    for column in columns:
        if column not in manifest.columns:
            close = difflib.get_close_matches(column, [c for c in manifest.columns if c not in columns], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else \
                f" (columns: {', '.join(manifest.columns) or 'none'})"
            raise PreflightError("manifest", f"{storage.redact(url)}: column {column!r} missing{hint}; a {kind} "
                                             f"manifest needs {', '.join(columns)}")
    return f"{storage.redact(url)} ({len(manifest.records)} rows, {manifest.format})"


def _require_local(source: str, what: str, registry: Mapping[str, RegistryEntry], fetch_hint: str) -> None:
    """A remote (or registry) ``source`` must already be in the local cache: a run would download
    it, which is neither fast nor a check."""
    spec = registry.get(source)
    if spec is not None and spec.url.startswith(BUNDLED_SCHEME):
        return  # inside the package; loading reports a missing file
    try:
        cached = model_cache_path(source, registry=registry)
    except ValueError:
        return  # a local path: loading checks it
    if not cached.is_file():
        raise PreflightError(what, f"{what} {storage.redact(source)} is not downloaded ({cached} missing): "
                                   f"{fetch_hint}, or pass a local file")


def check_model(model: str | None) -> StyleGAN2:
    """The job's generator, loaded on the CPU (the bundled demo model in a few tens of ms); a
    remote one must already be in the cache (``i2s models fetch``)."""
    from i2score.generator.checkpoints import load_generator
    from i2score.generator.registry import DEFAULT_MODEL

    source = model or DEFAULT_MODEL
    if source not in MODELS and "://" not in source and not Path(source).expanduser().is_file():
        close = difflib.get_close_matches(source, list(MODELS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PreflightError("model", f"model {source!r} is neither a registry name nor an existing file{hint}; "
                                      "`i2s models list` shows the names")
    _require_local(source, "model", MODELS, f"fetch it with `i2s models fetch {source}`")
    try:
        return load_generator(source, device="cpu")
    except Exception as e:  # noqa: BLE001 - unknown name, missing file, not a checkpoint: the run cannot start
        raise PreflightError("model", f"model {storage.redact(source)} does not load: {type(e).__name__}: {e}") from e


def check_encoder(config: JobConfig, G: StyleGAN2) -> str | None:
    """The encoder of an encoder start (the schedule's or ``init``'s), loaded as the plan loads
    it; None when the run starts from the mean or uniformly."""
    from i2score.encoders.registry import ENCODERS, default_encoder_for
    from i2score.generator.registry import DEFAULT_MODEL
    from i2score.runs.plan import plan_encoder

    schedule = config.resolved_schedule()
    if schedule.resolved_init(G.domain) != "encoder":
        return None
    model = config.model or DEFAULT_MODEL
    source = config.encoder or default_encoder_for(model)
    if source is not None:
        _require_local(source, "encoder", ENCODERS, "download it once with network access")
    try:
        found = plan_encoder(config, model, G)
    except Exception as e:  # noqa: BLE001 - no encoder, a mismatched one, an unreadable file
        raise PreflightError("encoder", str(e)) from e
    return found["id"]
