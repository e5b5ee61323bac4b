"""What every application shares: input checks, the result record, rendering and metrics.

Images are ``[B, 3, R, R]`` in [-1, 1]; masks ``[B or 1, 1, R, R]`` in [0, 1]. Masks given to an
application are user-facing: white (1) marks the region the user names (the hole to fill, the
region taken from the other image, the scribbled region, the region to restyle); each
application derives the paper's masks from them in the terms of its algorithm box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from i2score.data.latents import Latents
from i2score.generator.network import StyleGAN2
from i2score.generator.stylegan3 import NoNoiseInputsError
from i2score.kernels import batch_invariant
from i2score.method.blocks import BlockResult, StepCallback
from i2score.method.metrics import psnr

#: Version of the algorithms' implementation; it enters every cache key, so bump it when an
#: application's result changes for the same inputs and parameters.
ALGORITHM_VERSION = 1


@dataclass
class EditResult:
    """Output of an edit.

    Attributes:
        latents: the edited embedding (``w [B, L, w_dim]``, noise ``[B, 1, r, r]`` each).
        images: renders ``[B, 3, R, R]`` in [-1, 1] (nominal).
        metrics: one dict per image (which keys depends on the edit; PSNRs in dB).
    """

    latents: Latents
    images: Tensor
    metrics: list[dict[str, Any]]


def images_to_tensor(images: Tensor | Sequence[Image.Image] | Image.Image, resolution: int,
                     device: torch.device | str | None = None) -> Tensor:
    """Accept ``[B, 3, R, R]`` floats in [-1, 1] or PIL images of size ``R x R``.

    Returns ``[B, 3, R, R]`` float32 in [-1, 1]. Resizing/cropping is the data plane's job, so a
    wrong size is an error here rather than a silent resample.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if not isinstance(images, Tensor):
        arrays = []
        for i, im in enumerate(images):
            if im.size != (resolution, resolution):
                raise ValueError(f"image {i} is {im.size[0]}x{im.size[1]}, the generator needs "
                                 f"{resolution}x{resolution}")
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (resolution, resolution):
        raise ValueError(f"images must be [B, 3, {resolution}, {resolution}], got {list(images.shape)}")
    return images.float().to(device) if device is not None else images.float()


def as_images(x: Tensor, G: StyleGAN2, name: str) -> Tensor:
    """``x`` as float ``[B, 3, R, R]`` on G's device; a wrong shape is an error naming ``name``."""
    r = G.resolution
    if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (r, r):
        raise ValueError(f"{name} must be [B, 3, {r}, {r}] in [-1, 1], got {list(x.shape)}")
    return x.float().to(G.device)


def check_batch(name: str, latents: Latents, batch: int) -> None:
    """ValueError unless ``latents`` holds exactly ``batch`` images."""
    if len(latents) != batch:
        raise ValueError(f"{name} has {len(latents)} latents for a batch of {batch} images")


def render(G: StyleGAN2, w: Tensor, noise: Sequence[Tensor]) -> Tensor:
    """``G(w, n)`` without gradients, with the batch-invariant kernels: ``[B, 3, R, R]``."""
    with torch.no_grad(), batch_invariant(G.device):
        return G.synthesize(w, noise)


def after_steps(callback: StepCallback | None, steps: int) -> StepCallback | None:
    """``callback`` with its step numbers shifted by ``steps`` (the noise stage continues the
    numbering of the W+ stage)."""
    if callback is None:
        return None
    return lambda step, loss: callback(steps + step, loss)


def require_noise(G: StyleGAN2, what: str) -> None:
    """Refuse, before any work, an application that optimises or resamples noise maps on a
    generator without noise inputs (StyleGAN3: W+ only); the error names the model family."""
    if not G.noise_shapes:
        raise NoNoiseInputsError(G.family, what)


def embedding(w: Tensor, noise: Sequence[Tensor], meta: dict[str, Any]) -> Latents:
    """The result of an optimisation as detached :class:`~i2score.data.latents.Latents`."""
    return Latents(w.detach(), [n.detach() for n in noise], meta)


def algorithm_id(name: str) -> str:
    """The id of application ``name`` in results' metadata and cache keys."""
    return f"image2stylegan++/{name}"


def algorithm_meta(G: StyleGAN2, name: str, **params: Any) -> dict[str, Any]:
    """The ``meta`` of a result: algorithm, its version, its parameters and the generator."""
    return {"algorithm": algorithm_id(name), "algorithm_version": ALGORITHM_VERSION, **params,
            "generator": getattr(G, "source", "unknown"), "generator_sha256": getattr(G, "weights_sha256", None)}


def locality_metrics(out: Tensor, before: Tensor, image: Tensor, mask: Tensor, blurred: Tensor,
                     res_w: BlockResult, res_n: BlockResult) -> list[dict[str, Any]]:
    """Per-image metrics of a local edit: ``psnr_outside`` (the edit vs the input image outside
    the blurred region), ``psnr_outside_before`` (the cached reconstruction there: the edit
    should lose at most a fraction of a dB), ``change_inside`` (mean absolute change from the
    reconstruction inside ``mask``, [0, 2] scale), and the steps each stage ran."""
    outside = (blurred < 0.01).float()
    p_out, p_before = psnr(out, image, outside).cpu(), psnr(before, image, outside).cpu()
    change_sum = ((out - before).abs().mean(dim=1, keepdim=True) * mask).flatten(1).sum(1)
    change = change_sum / mask.flatten(1).sum(1).clamp_min(1)
    return [{"psnr_outside": float(p_out[b]), "psnr_outside_before": float(p_before[b]),
             "change_inside": float(change[b]), "steps_w": int(res_w.steps[b]), "steps_n": int(res_n.steps[b])}
            for b in range(out.shape[0])]
