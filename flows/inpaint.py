"""Manifest-driven inpainting (paper Alg. 4): ``k`` solutions per image and mask."""

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
@flow(name="inpaint", task_runner=local_task_runner(), validate_parameters=True)
def inpaint(manifest: str | SecretStr, root: str = DEFAULT_ROOT, k: int = 1, model: str | None = None,
            schedule: str = "fast",
            batch_size: int | str = 8, device: str = "auto", runner: str = "local", seed: int = 0,
            run_id: str | None = None, init: str | None = None, encoder: str | None = None,
                precision: str = "auto", w_closeness: str | None = None,
            channels_last: bool | None = None, compile: bool = False,
        allowed_inputs: list[str] | None = None, max_input_bytes: int | None = None,
        wait_for_lease: bool = False, masks: str | None = None, align: bool = False,
        paste_back: bool = False) -> State[dict[str, Any]]:
    """Fill the white region of each row's mask (columns ``id``, ``image``, ``mask``; a row's
    ``params`` may set ``k`` and ``seed``). Writes ``outputs/<id>-k<j>.png`` (the known pixels
    pasted back) and caches every solution's latents. Returns ids, counts and the report's URL.
    ``allowed_inputs`` (URL prefixes) confines the files rows may name (default: the manifest's
    folder), ``max_input_bytes`` caps each file (README "Bad input").
    ``wait_for_lease``: when another process is running the same job, wait for it (and resume
    or find the run finished) instead of failing with "run ... is active".
    ``manifest`` may be a folder or glob of images (``photos/``, ``s3://b/faces/*.png``): the mask
    of ``name.png`` is ``name_mask.png`` next to it, or ``<masks>/name.png`` with ``masks``
    (README "Your own images").
    ``align``: FFHQ-align every image (and its mask with it) first (README "Face alignment"; no
    face: a ``no_face`` row); ``paste_back``: write each output pasted into the original photo.
    """
    return run_job(JobConfig("inpaint", plain_url(manifest), root, model, schedule, batch_size, device, seed,
                             run_id, k=k,
                             init=init, encoder=encoder, w_closeness=w_closeness, precision=precision,
                             channels_last=channels_last,
                             compile=compile, allowed_inputs=inputs_tuple(allowed_inputs),
                             max_input_bytes=max_input_bytes, align=align, paste_back=paste_back, masks=masks),
                   runner, wait_for_lease)
