"""i2score: batch Image2StyleGAN++ embedding and editing on a pretrained StyleGAN2.

Small public API (kept stable for notebooks and checks)::

    G = i2score.load_generator("path/or/url/or/registry-name")
    result = i2score.reconstruct(images, G, steps_w=5000, steps_n=3000, seed=0)
    result.latents.save("embedding.npz")

    run = i2score.open_run("./i2s-data", "reconstruct-74bf3c6294cb")   # a finished run's results
    run.latents("heldout-00")                      # the cached (w, noise) it used for that row
    loader = torch.utils.data.DataLoader(run.dataset(), batch_size=8)
    i2score.open_cache("./i2s-data").entries()     # the latent cache, by source id

Names are imported on first use, so ``import i2score`` (and the CLI) start without loading
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Generator": "i2score.generator.network",
    "GeneratorConfig": "i2score.generator.network",
    "StyleGAN2": "i2score.generator.network",
    "load_generator": "i2score.generator.checkpoints",
    "Latents": "i2score.data.latents",
    "ReconstructionResult": "i2score.method.applications",
    "reconstruct": "i2score.method.applications",
    "open_run": "i2score.runs.results",
    "RunView": "i2score.runs.results",
    "RunDataset": "i2score.runs.dataset",
    "open_cache": "i2score.data.cache.view",
    "CacheView": "i2score.data.cache.view",
}

__all__ = [
    "CacheView",
    "Generator",
    "GeneratorConfig",
    "Latents",
    "ReconstructionResult",
    "RunDataset",
    "RunView",
    "StyleGAN2",
    "__version__",
    "load_generator",
    "open_cache",
    "open_run",
    "reconstruct",
]

if TYPE_CHECKING:
    from i2score.data.cache.view import CacheView, open_cache
    from i2score.data.latents import Latents
    from i2score.generator.checkpoints import load_generator
    from i2score.generator.network import Generator, GeneratorConfig, StyleGAN2
    from i2score.method.applications import ReconstructionResult, reconstruct
    from i2score.runs.dataset import RunDataset
    from i2score.runs.results import RunView, open_run


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'i2score' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
