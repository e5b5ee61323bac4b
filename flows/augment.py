"""Dataset augmentation: new images from the cached latents of a dataset, with lineage."""

# No `from __future__ import annotations`: a deployment run validates the parameters against
# real annotations (a string "SecretStr" cannot be resolved where Prefect loads the flow).
from typing import Any

from prefect import State, flow
from pydantic import SecretStr

from i2score.flows._common import (
    DEFAULT_ROOT,
    called_for_state_data,
    inputs_tuple,
    local_task_runner,
    plain_url,
    run_job,
)
from i2score.runs.config import DEFAULT_MIN_REALISM, DEFAULT_REALISM_K, JobConfig


@called_for_state_data
@flow(name="augment", task_runner=local_task_runner(), validate_parameters=True)
def augment(manifest: str | SecretStr, root: str = DEFAULT_ROOT, n_per_image: int = 4, ops: list[str] | None = None,
            model: str | None = None, schedule: str = "fast", batch_size: int | str = 8, device: str = "auto",
            runner: str = "local", seed: int = 0, include_originals: bool = True,
            run_id: str | None = None, init: str | None = None, encoder: str | None = None,
                precision: str = "auto", w_closeness: str | None = None,
            channels_last: bool | None = None, compile: bool = False,
        allowed_inputs: list[str] | None = None, max_input_bytes: int | None = None,
        wait_for_lease: bool = False, align: bool = False, min_realism: float = DEFAULT_MIN_REALISM,
        realism_k: int = DEFAULT_REALISM_K, realism_reference: str | None = None) -> State[dict[str, Any]]:
    """``n_per_image`` variants of every image of ``manifest`` (a reconstruct manifest, or a folder
    or glob of images): style mixing and interpolation with other images of the set, crossover with a random partner
    through a random mask, noise resampling and latent jitter (``ops``, default all; see
    :mod:`i2score.method.applications.augment`). Writes ``runs/<run-id>/dataset.csv``, a manifest of the new
    dataset (the originals too unless ``include_originals`` is False) with each image's source,
    partner, op and parameters. Returns ids, counts and the report's URL.
    ``allowed_inputs`` (URL prefixes) confines the files rows may name (default: the manifest's
    folder), ``max_input_bytes`` caps each file (README "Bad input").
    ``wait_for_lease``: when another process is running the same job, wait for it (and resume
    or find the run finished) instead of failing with "run ... is active".
    ``align``: FFHQ-align every image first (README "Face alignment"; no face: a ``no_face`` row).
    ``min_realism``, ``realism_k``, ``realism_reference``: the realism gate (every image of
    ``dataset.csv`` gets a ``realism`` score; augmented rows below ``min_realism`` are left out and
    listed in the summary and report; :mod:`i2score.runs.realism_gate`).
    """
    return run_job(JobConfig("augment", plain_url(manifest), root, model, schedule, batch_size, device, seed, run_id,
                             n_per_image=n_per_image, ops=tuple(ops) if ops else None,
                             include_originals=include_originals,
                             init=init, encoder=encoder, w_closeness=w_closeness, precision=precision,
                             channels_last=channels_last,
                             compile=compile, allowed_inputs=inputs_tuple(allowed_inputs),
                             max_input_bytes=max_input_bytes, align=align, min_realism=min_realism,
                             realism_k=realism_k, realism_reference=realism_reference), runner, wait_for_lease)
