"""Deployments of the flows for one machine (``i2s serve``); ``infra/prefect.yaml`` declares the
same deployments for a work pool."""

from __future__ import annotations

from typing import Any

from i2score.flows.augment import augment
from i2score.flows.edit import edit
from i2score.flows.inpaint import inpaint
from i2score.flows.reconstruct import reconstruct


def deployments(*, manifest: str, root: str, cron: str = "0 3 * * *", model: str | None = None,
                schedule: str = "fast", device: str = "auto", allowed_inputs: list[str] | None = None) -> list[Any]:
    """A nightly ``reconstruct`` of ``manifest`` on ``cron`` (re-runs of an unchanged manifest
    finish at once; new images are embedded) plus on-demand ``inpaint``, ``edit`` and
    ``augment`` deployments writing under ``root``. Every run is confined to ``allowed_inputs``
    (None: each run's manifest folder)."""
    common: dict[str, Any] = {"root": root, "model": model, "schedule": schedule, "device": device}
    if allowed_inputs is not None:
        common["allowed_inputs"] = list(allowed_inputs)
    return [
        reconstruct.to_deployment(name="nightly", cron=cron, parameters={"manifest": manifest, **common},
                                  tags=["i2score", "nightly"]),
        inpaint.to_deployment(name="inpaint", parameters=common, tags=["i2score"]),
        edit.to_deployment(name="edit", parameters=common, tags=["i2score"]),
        augment.to_deployment(name="augment", parameters=common, tags=["i2score"]),
    ]
