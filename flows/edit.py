"""Edits from cached latents: crossover, scribbles, local style transfer, attribute transfer,
morphing, style mixing, expression transfer and inpainting, one manifest row per edit."""

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
@flow(name="edit", task_runner=local_task_runner(), validate_parameters=True)
def edit(manifest: str | SecretStr, root: str = DEFAULT_ROOT, model: str | None = None, schedule: str = "fast",
         batch_size: int | str = 8, device: str = "auto", runner: str = "local", seed: int = 0,
         run_id: str | None = None, init: str | None = None, encoder: str | None = None,
                precision: str = "auto", w_closeness: str | None = None,
         channels_last: bool | None = None, compile: bool = False,
        allowed_inputs: list[str] | None = None, max_input_bytes: int | None = None,
        wait_for_lease: bool = False, align: bool = False, paste_back: bool = False) -> State[dict[str, Any]]:
    """Run the edit manifest (columns ``id``, ``op``, ``image``, and ``ref``/``mask``/``params``
    as each op needs; see ``manifests/README.md``). Source images missing from the cache are
    embedded first, through the same batches as :func:`i2score.flows.reconstruct.reconstruct` (so a
    dataset reconstructed before costs no embedding steps); then one task per batch of rows with
    the same op and parameters. Returns ids, counts and the report's URL.
    ``allowed_inputs`` (URL prefixes) confines the files rows may name (default: the manifest's
    folder), ``max_input_bytes`` caps each file (README "Bad input").
    ``wait_for_lease``: when another process is running the same job, wait for it (and resume
    or find the run finished) instead of failing with "run ... is active".
    ``align``: FFHQ-align every image first (README "Face alignment"; no face: a ``no_face`` row);
    ``paste_back``: write each output pasted into the original photo.
    """
    return run_job(JobConfig("edit", plain_url(manifest), root, model, schedule, batch_size, device, seed, run_id,
                             init=init, encoder=encoder, w_closeness=w_closeness, precision=precision,
                             channels_last=channels_last,
                             compile=compile, allowed_inputs=inputs_tuple(allowed_inputs),
                             max_input_bytes=max_input_bytes, align=align, paste_back=paste_back),
                   runner, wait_for_lease)
