"""What a worker process keeps between batches: the generator and the VGG16/LPIPS it is
optimised and measured with, loaded once per (model, device)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from i2score.encoders import Encoder
from i2score.encoders.checkpoints import load_encoder
from i2score.features import LPIPS, VGG16Features, VGGWeightsNotFoundError, load_lpips, load_vgg16
from i2score.generator.checkpoints import load_generator
from i2score.generator.network import StyleGAN2
from i2score.generator.registry import DEFAULT_MODEL
from i2score.runs.config import resolve_device


@dataclass
class WorkerContext:
    """What a batch needs besides its spec. One per (model, device) and process."""

    G: StyleGAN2
    vgg: VGG16Features
    lpips: LPIPS | None
    device: str
    model: str
    encoders: dict[str, Encoder] = field(default_factory=dict)

    @property
    def generator_sha256(self) -> str:
        return str(self.G.weights_sha256)

    def encoder(self, source: str, sha256: str) -> Encoder:
        """The encoder ``source`` on this worker's device, loaded once; its weights must be the
        ones the run was planned with (``sha256``)."""
        with _CONTEXT_LOCK:
            enc = self.encoders.get(source)
            if enc is None:
                enc = self.encoders[source] = load_encoder(source, device=self.device)
        if enc.weights_sha256 != sha256:
            raise RuntimeError(f"encoder {source!r} changed since the run was planned "
                               f"({str(enc.weights_sha256)[:12]} != {sha256[:12]})")
        return enc


_CONTEXTS: dict[tuple[str, str], WorkerContext] = {}
_CONTEXT_LOCK = threading.Lock()


def worker_context(model: str | None, device: str) -> WorkerContext:
    """The generator (and the VGG16/LPIPS it is optimised with) on ``device``, loaded on first
    use and kept for the life of the process, so a worker loads each model once however many
    batches it runs. Threads share it (the lock serialises the first load)."""
    model = model or DEFAULT_MODEL
    device = resolve_device(device)
    with _CONTEXT_LOCK:
        ctx = _CONTEXTS.get((model, device))
        if ctx is None:
            G = load_generator(model, device=device)
            vgg = load_vgg16(device=device)
            try:
                lp: LPIPS | None = load_lpips(device=device)
            except VGGWeightsNotFoundError:
                lp = None
            ctx = _CONTEXTS[(model, device)] = WorkerContext(G, vgg, lp, device, model)
        return ctx
