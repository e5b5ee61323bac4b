"""What defines a run: its schedule of optimisation steps and its job configuration (the flows'
parameters), and the device a worker computes on."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from i2score.data import storage
from i2score.data.inputs import InputPolicy, policy_for_manifest
from i2score.data.manifest import Manifest, ManifestRow, Reason, RowError, absolute_url, read_manifest_bytes
from i2score.data.manifest.discover import is_manifest_source
from i2score.method.blocks import EarlyStop
from i2score.method.priors import WCloseness

#: The ``fast`` schedule, chosen on the demo model (README, "Embedding: the quality-time frontier"):
#: from an encoder start a few W+ steps at a larger learning rate reach what hundreds of steps
#: from the mean do (lr 0.03: 28.6 vs 26.9 dB after 60 steps on 4 held-out portraits), and the
#: noise stage gains faster at Adam lr 10 than at the paper's 5 (38.4 vs 37.7 dB after 400 steps).
FAST_STEPS_W, FAST_STEPS_N = 50, 300
FAST_LR_W, FAST_LR_N = 0.03, 10.0
FAST_PATIENCE, FAST_MIN_DELTA_DB, FAST_CHECK_EVERY = 50, 0.05, 25

#: The kinds of job (a flow each).
JOB_KINDS = ("reconstruct", "inpaint", "edit", "augment")

#: An augment job's ``min_realism`` when it sets none (measured on the demo: README "Realism gate").
DEFAULT_MIN_REALISM = 0.0
#: The realism score's neighbour rank (Kynkäänniemi et al. 2019 use k = 3).
DEFAULT_REALISM_K = 3


#: How an embedding's W+ search starts: ``auto`` (the generator's domain decides: mean for faces,
#: uniform otherwise), ``mean``, ``uniform``, or ``encoder`` (hybrid inversion).
INITS = ("auto", "mean", "uniform", "encoder")


@dataclass(frozen=True)
class Schedule:
    """Optimisation steps of every stage: embedding (Alg. 2), edits that re-optimise (Alg. 3,
    5, 6) and inpainting (Alg. 4); and how an embedding starts and stops.

    Attributes:
        init: see :data:`INITS`.
        converge: per-image converge-stopping of both embedding stages: an image leaves the batch
            when its loss improved by less than ``min_delta_db`` dB over ``patience`` steps
            (checked every ``check_every`` steps).
        w_offset_weight, pnorm_weight: W-closeness penalties of the embedding's W+ stage
            (:mod:`i2score.method.priors`; 0 = off).
    """

    name: str
    steps_w: int
    steps_n: int
    edit_steps_w: int
    edit_steps_n: int
    inpaint_steps_w: int
    inpaint_steps_n: int
    lr_w: float = 0.01
    lr_n: float = 5.0
    init: str = "auto"
    converge: bool = False
    patience: int = 100
    min_delta_db: float = 0.05
    check_every: int = 25
    w_offset_weight: float = 0.0
    pnorm_weight: float = 0.0

    def __post_init__(self) -> None:
        WCloseness(self.w_offset_weight, self.pnorm_weight)  # validates the weights
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if min(self.steps_w, self.steps_n, self.edit_steps_w, self.edit_steps_n, self.inpaint_steps_w,
               self.inpaint_steps_n) < 0:
            raise ValueError(f"schedule {self.name!r}: step counts must be >= 0")
        if self.converge and not (1 <= self.check_every <= self.patience):
            raise ValueError(f"schedule {self.name!r}: need 1 <= check_every <= patience")

    @staticmethod
    def parse(spec: str, *, init: str | None = None, w_closeness: str | None = None) -> Schedule:
        """A named schedule (:data:`SCHEDULES`) or ``"W+N"`` (every stage W + N steps) or
        ``"W+N/EW+EN"`` (embedding W + N, edits and inpainting EW + EN); ``init`` (one of
        :data:`INITS`, None = the schedule's own) overrides where embeddings start, and
        ``w_closeness`` (:meth:`WCloseness.parse`, None = the schedule's own) the W+ stage's
        penalties."""
        if spec in SCHEDULES:
            sched = SCHEDULES[spec]
        else:
            try:
                parts = [tuple(int(v) for v in p.split("+")) for p in spec.split("/")]
                if len(parts) not in (1, 2) or any(len(p) != 2 or min(p) < 0 for p in parts):
                    raise ValueError
            except ValueError:
                raise ValueError(f"schedule {spec!r}: use one of {sorted(SCHEDULES)} or 'W+N' or "
                                 "'W+N/EW+EN' (non-negative step counts)") from None
            (w, n), (ew, en) = parts[0], parts[-1]
            sched = Schedule(spec, w, n, ew, en, ew, en)
        if w_closeness is not None:
            c = WCloseness.parse(w_closeness)
            sched = replace(sched, w_offset_weight=c.offset_weight, pnorm_weight=c.pnorm_weight)
        return sched if init is None else replace(sched, init=init)

    @property
    def w_closeness(self) -> WCloseness:
        """The W+ stage's W-closeness penalties."""
        return WCloseness(self.w_offset_weight, self.pnorm_weight)

    def early_stop(self) -> EarlyStop | None:
        """The embedding's converge-stopping rule (None when off)."""
        if not self.converge:
            return None
        return EarlyStop(patience=self.patience, min_delta_db=self.min_delta_db, check_every=self.check_every)

    def resolved_init(self, domain: str) -> str:
        """``init`` with ``auto`` decided by the generator's ``domain`` (``face`` -> mean)."""
        if self.init != "auto":
            return self.init
        return "mean" if domain == "face" else "uniform"

    def reconstruct_params(self, seed: int, *, domain: str = "face",
                           encoder_sha256: str | None = None) -> dict[str, Any]:
        """What determines an embedding besides the image and the weights (the cache key):
        steps, learning rates, seed, the resolved ``init`` and the encoder's weights hash, and
        the converge-stopping rule. :data:`WARM_START_VARIES` lists the fields a warm start
        may differ in."""
        params: dict[str, Any] = {"steps_w": self.steps_w, "steps_n": self.steps_n, "lr_w": self.lr_w,
                                  "lr_n": self.lr_n, "seed": seed}
        # Older keys stay valid: the domain's default start (a function of the generator, whose
        # hash is in the key) and no stopping add nothing.
        init = self.resolved_init(domain)
        if init == "encoder":
            if not encoder_sha256:
                raise ValueError("an encoder start needs the encoder's weights hash in the cache key")
            params["init"], params["encoder_sha256"] = init, encoder_sha256
        elif init != Schedule("auto", 0, 0, 0, 0, 0, 0).resolved_init(domain):
            params["init"] = init
        if self.w_closeness.active:
            params["w_closeness"] = {"offset": self.w_offset_weight, "pnorm": self.pnorm_weight}
        if self.converge:
            params["converge"] = {"patience": self.patience, "min_delta_db": self.min_delta_db,
                                  "check_every": self.check_every}
        return params


#: Embedding parameters a cached embedding may have fewer of and still warm-start a longer one.
WARM_START_VARIES = ("steps_w", "steps_n")

SCHEDULES: dict[str, Schedule] = {
    # The paper: 5000 + 3000 embedding from the mean latent, 1000 + 1000 for edits (Sec. 7).
    "paper": Schedule("paper", 5000, 3000, 1000, 1000, 1000, 1000, init="auto"),
    # The demo: a few minutes on 2 CPU cores for the bundled 64 px model.
    "demo": Schedule("demo", 80, 80, 80, 80, 80, 80),
    # The encoder's code as it is: no optimisation (edits keep the demo's short schedule).
    "encoder": Schedule("encoder", 0, 0, 80, 80, 80, 80, init="encoder"),
    # Hybrid inversion: an encoder start, then both stages, each image stopping when it
    # converges. See README "Embedding: the quality-time frontier" for how it was chosen.
    "fast": Schedule("fast", FAST_STEPS_W, FAST_STEPS_N, 200, 200, 200, 200, lr_w=FAST_LR_W, lr_n=FAST_LR_N,
                     init="encoder", converge=True, patience=FAST_PATIENCE, min_delta_db=FAST_MIN_DELTA_DB,
                     check_every=FAST_CHECK_EVERY),
}


#: The embedding's W-closeness penalties by job kind when a job does not say
#: (:meth:`WCloseness.parse`).
DEFAULT_W_CLOSENESS = {"reconstruct": "none", "inpaint": "none", "edit": "none", "augment": "none"}

#: Arithmetic of the optimisation: ``auto`` (the device's default, see :func:`engine_options`),
#: ``fp32``, or ``bf16`` (autocast of the generator forward; loss and Adam stay float32).
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class JobConfig:
    """Everything that defines a run (the flows' parameters).

    Attributes:
        kind: ``reconstruct`` | ``inpaint`` | ``edit`` | ``augment``.
        manifest: manifest URL (CSV/TSV/Parquet/JSONL; see ``manifests/README.md``).
        root: storage root URL (cache and runs live below it).
        model: generator (registry name, path or URL); None = the bundled demo model.
        schedule: see :meth:`Schedule.parse`.
        batch_size: images per embedding/edit batch (one task each), or ``"auto"``: on CUDA the
            largest batch whose W+ step fits in the GPU's memory, on CPU 8.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        seed: seeds initial latents, inpainting offsets and augmentation draws.
        run_id: None = derived from the job (so a re-run resumes or is a no-op).
        k: inpainting solutions per row when the row's params do not say.
        n_per_image, ops, include_originals: augmentation (see :mod:`i2score.runs.augment`).
        init: where embeddings start (:data:`INITS`); None = the schedule's own.
        encoder: the encoder of ``init="encoder"`` (registry name, path or URL); None = the
            generator's default encoder.
        precision, channels_last, compile: the engine's fast path (:func:`engine_options`; None
            and ``auto`` = the device's default).
        allowed_inputs: URL prefixes the rows' files must be inside (README "Bad input"); None =
            the manifest's own folder only.
        max_input_bytes: the largest input file read; None = 64 MiB
            (:data:`i2score.data.inputs.DEFAULT_MAX_INPUT_BYTES`).
        w_closeness: the embedding's W-closeness penalties (:meth:`WCloseness.parse`: ``none``,
            ``offset=λ``, ``pnorm=λ``); None = the job kind's default
            (:data:`DEFAULT_W_CLOSENESS`).
        min_realism, realism_k, realism_reference: the realism gate of an augment job
            (:mod:`i2score.runs.realism_gate`): augmented rows scoring below ``min_realism`` are
            left out of ``dataset.csv`` (0 keeps all), ``realism_k`` is the score's neighbour
            rank, ``realism_reference`` a folder, glob or manifest of more real images for the
            reference set (None = the run's originals only).
        masks: the masks folder of a folder or glob ``manifest`` (``<masks>/<id>.<ext>`` is the
            mask of image ``<id>``; :mod:`i2score.data.manifest.discover`); None = the
            ``name_mask.<ext>`` rule. Inpaint jobs only.
        align: FFHQ-align every image (and ref) before embedding (:mod:`i2score.data.align`; the
            largest face, a mask warped with it); a row without a face is ``no_face``. The
            alignment is part of the embedding's cache key and stored with it.
        paste_back: write each output pasted into the original photo (the aligned square only;
            needs ``align``; not for augment jobs).

    ``manifest`` may be a folder or a glob of images instead of a manifest file (reconstruct,
    inpaint and augment jobs): the job's manifest is then the CSV of its images
    (:meth:`manifest_bytes`).
    """

    kind: str
    manifest: str
    root: str
    model: str | None = None
    schedule: str = "fast"
    batch_size: int | str = 8
    device: str = "auto"
    seed: int = 0
    run_id: str | None = None
    k: int = 1
    n_per_image: int = 4
    ops: tuple[str, ...] | None = None
    include_originals: bool = True
    init: str | None = None
    encoder: str | None = None
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    allowed_inputs: tuple[str, ...] | None = None
    max_input_bytes: int | None = None
    masks: str | None = None
    w_closeness: str | None = None
    align: bool = False
    paste_back: bool = False
    min_realism: float = DEFAULT_MIN_REALISM
    realism_k: int = DEFAULT_REALISM_K
    realism_reference: str | None = None

    def __post_init__(self) -> None:
        if self.w_closeness is not None:
            WCloseness.parse(self.w_closeness)
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, got {self.kind!r}")
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"batch_size must be >= 1 or 'auto', got {self.batch_size!r}")
        if not 1 <= self.k <= 16:
            raise ValueError(f"k must be in 1..16, got {self.k}")
        if self.n_per_image < 1:
            raise ValueError(f"n_per_image must be >= 1, got {self.n_per_image}")
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        Schedule.parse(self.schedule)
        if self.max_input_bytes is not None and self.max_input_bytes < 1:
            raise ValueError(f"max_input_bytes must be >= 1, got {self.max_input_bytes}")
        if self.allowed_inputs is not None:
            # the policy checks each prefix (no chained URLs, none empty)
            InputPolicy(tuple(self.allowed_inputs))
        if self.paste_back and not self.align:
            raise ValueError("paste_back puts outputs back into the photos they were aligned from: it needs align")
        if self.paste_back and self.kind == "augment":
            raise ValueError("paste_back is for reconstruct, inpaint and edit jobs (an augmentation mixes images)")
        folder = not is_manifest_source(self.manifest)
        if folder and self.kind == "edit":
            raise ValueError(f"an edit job needs a manifest (an op and its inputs per row), not the folder or glob "
                             f"{storage.redact(self.manifest)}: `i2s manifest init SRC -o edits.csv` writes one "
                             "to add the op column to (manifests/README.md)")
        if (isinstance(self.min_realism, bool) or not isinstance(self.min_realism, int | float)
                or not math.isfinite(self.min_realism) or self.min_realism < 0):
            raise ValueError(f"min_realism must be a finite number >= 0, got {self.min_realism!r}")
        if isinstance(self.realism_k, bool) or not isinstance(self.realism_k, int) or self.realism_k < 1:
            raise ValueError(f"realism_k must be an integer >= 1, got {self.realism_k!r}")
        if self.kind != "augment" and (self.min_realism != DEFAULT_MIN_REALISM or self.realism_k != DEFAULT_REALISM_K
                                       or self.realism_reference is not None):
            raise ValueError(f"min_realism, realism_k and realism_reference belong to augment jobs, "
                             f"not to a {self.kind} job")
        if self.masks is not None and not (folder and self.kind == "inpaint"):
            raise ValueError("masks (a masks folder) goes with an inpaint job of a folder or glob of images; "
                             f"the {self.kind} job of {storage.redact(self.manifest)} takes none")

    def resolved_schedule(self) -> Schedule:
        """The job's :class:`Schedule` with its ``init`` and W-closeness applied."""
        closeness = self.w_closeness if self.w_closeness is not None else DEFAULT_W_CLOSENESS[self.kind]
        return Schedule.parse(self.schedule, init=self.init, w_closeness=closeness)

    def aligns(self, row: ManifestRow) -> bool:
        """Whether ``row`` is FFHQ-aligned: its ``align`` column when the manifest has one and the
        row sets it (true/false, 1/0, yes/no), else the job's ``align``.

        Raises:
            RowError: ``invalid_params`` for another value.
        """
        value = row.extra.get("align")
        if value is None:
            return self.align
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "y", "1.0"):
            return True
        if text in ("false", "0", "no", "n", "0.0"):
            return False
        raise RowError(Reason.INVALID_PARAMS.value, f"align {value!r}: true or false (1/0, yes/no)", field="align")

    def input_policy(self) -> InputPolicy:
        """What this job's rows may name and how their files are read: the ``allowed_inputs``
        prefixes, or only the manifest's folder when None (:func:`policy_for_manifest`; a
        folder or glob input's folder and its masks folder)."""
        return policy_for_manifest(self.manifest, self.allowed_inputs, self.max_input_bytes, self.masks)

    def manifest_bytes(self, url: str | None = None) -> bytes:
        """The bytes of the job's manifest (``url``: the real manifest URL when ``manifest`` is
        the redacted one). For a folder or glob input, the CSV of its images
        (:func:`~i2score.data.manifest.read_manifest_bytes`): with their masks for inpaint jobs,
        without for the others."""
        return read_manifest_bytes(url or self.manifest, masks=self.masks, mask_column=self.kind == "inpaint")

    def read_manifest(self, url: str | None = None) -> Manifest:
        """The job's manifest parsed (see :meth:`manifest_bytes`)."""
        source = absolute_url(url or self.manifest)
        return Manifest.from_bytes(self.manifest_bytes(source), source)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("ops", "allowed_inputs"):
            d[name] = list(d[name]) if d[name] is not None else None
        return d

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> JobConfig:
        d = dict(d)
        for name in ("ops", "allowed_inputs"):
            d[name] = tuple(d[name]) if d.get(name) is not None else None
        return JobConfig(**d)


@dataclass(frozen=True)
class EngineOptions:
    """How a worker computes (recorded in the run's plan).

    Attributes:
        precision: ``fp32`` or ``bf16``.
        channels_last, compile: see :mod:`i2score.generator.fastpath`.
        bit_reproducible: the same seed gives the same bits on this device, whatever the batch
            (CPU, float32, the reproducible kernels: the default there). Otherwise results
            agree to float tolerance only.
    """

    precision: str
    channels_last: bool
    compile: bool
    bit_reproducible: bool

    @property
    def autocast_dtype(self) -> Any:
        import torch

        return torch.bfloat16 if self.precision == "bf16" else None


def engine_options(config: JobConfig, device: str) -> EngineOptions:
    """The fast-path options of ``config`` on ``device`` (a resolved device string).

    Defaults: on CPU float32 with the reproducible kernels, no channels_last, no compile (the
    ordinary kernels and batching buy little there, README "Engine options"); on CUDA bf16
    autocast (41 vs 33 images/hour in float32 on an H100 at 1024, batch 8, measured for issue 15;
    results then agree with float32 to float tolerance, not bit for bit). channels_last and
    compile stay opt-in on CUDA until they are measured there.
    """
    cuda = device.startswith("cuda")
    precision = config.precision if config.precision != "auto" else ("bf16" if cuda else "fp32")
    channels_last = bool(config.channels_last)
    reproducible = not cuda and precision == "fp32" and not channels_last and not config.compile
    return EngineOptions(precision, channels_last, config.compile, reproducible)


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
