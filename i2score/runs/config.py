"""What defines a run: its schedule of optimisation steps and its job configuration (the flows'
parameters), and the device a worker computes on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

#: The kinds of job (a flow each).
JOB_KINDS = ("reconstruct", "inpaint", "edit", "augment")


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
        n_per_image, ops, include_originals: augmentation (see :mod:`i2score.runs.augment`).
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
