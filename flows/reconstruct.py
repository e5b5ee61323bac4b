"""Bulk reconstruction: embed every image of a manifest (paper Alg. 2) into the latent cache and
write its reconstruction."""

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
from i2score.runs.config import JobConfig


@called_for_state_data
@flow(name="reconstruct", task_runner=local_task_runner(), validate_parameters=True)
def reconstruct(manifest: str | SecretStr, root: str = DEFAULT_ROOT, model: str | None = None, schedule: str = "fast",
                batch_size: int | str = 8, device: str = "auto", runner: str = "local", seed: int = 0,
                run_id: str | None = None, init: str | None = None, encoder: str | None = None,
                precision: str = "auto", w_closeness: str | None = None,
                channels_last: bool | None = None, compile: bool = False,
        allowed_inputs: list[str] | None = None, max_input_bytes: int | None = None,
        wait_for_lease: bool = False, align: bool = False, paste_back: bool = False) -> State[dict[str, Any]]:
    """Embed the images of ``manifest`` (columns ``id``, ``image``; or a folder or glob of images,
    README "Your own images") into ``(w, n)``.

    Validates the manifest, skips images already in the cache under ``root`` (same bytes,
    weights and schedule), embeds the rest one batch per task, renders every reconstruction to
    ``runs/<run-id>/outputs/<id>.png`` and writes the output manifest, errors, summary and
    report. ``schedule``: ``fast`` (an encoder start, then short converge-stopped stages),
    ``encoder`` (the encoder alone), ``paper`` (5000 + 3000 steps from the mean), ``demo`` or
    ``"W+N"``; ``init`` overrides where embeddings start (``mean``, ``uniform``, ``encoder``),
    ``encoder`` names the encoder (default: the generator's); ``w_closeness`` (``none``,
    ``offset=λ``, ``pnorm=λ``) the embedding's W-closeness penalties (default: the job kind's).
    ``precision`` (``fp32``/``bf16``), ``channels_last``, ``compile`` and ``batch_size="auto"``
    select the engine's fast path (the device decides when unset). Returns ids, counts and the report's URL.
    ``allowed_inputs`` (URL prefixes) confines the files rows may name (default: the manifest's
    folder), ``max_input_bytes`` caps each file (README "Bad input").
    ``wait_for_lease``: when another process is running the same job, wait for it (and resume
    or find the run finished) instead of failing with "run ... is active".
    ``align``: FFHQ-align every image first (README "Face alignment"; no face: a ``no_face`` row);
    ``paste_back``: write each output pasted into the original photo.
    """
    return run_job(JobConfig("reconstruct", plain_url(manifest), root, model, schedule, batch_size, device, seed,
                             run_id,
                             init=init, encoder=encoder, w_closeness=w_closeness, precision=precision,
                             channels_last=channels_last,
                             compile=compile, allowed_inputs=inputs_tuple(allowed_inputs),
                             max_input_bytes=max_input_bytes, align=align, paste_back=paste_back),
                   runner, wait_for_lease)
