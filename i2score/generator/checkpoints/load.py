"""Load StyleGAN2 generators from the checkpoint formats people actually have.

Supported formats (detected from the file's *content*, never from its name):

``i2score-pt``
    Our own ``torch.save`` file (:func:`save_generator`): ``{"format": "i2score-stylegan2",
    "version": 1, "config": asdict(GeneratorConfig), "state_dict": ...}``.
``rosinality-pt``
    rosinality/stylegan2-pytorch checkpoints: a ``torch.save`` dict with the generator state
    under ``g_ema`` (or a bare state dict) and, in converted official weights, ``latent_avg``.
    The architecture is inferred from tensor shapes and checked key by key.
``nvidia-pkl``
    NVIDIA stylegan2-ada-pytorch / stylegan3 pickles (``G_ema`` of a StyleGAN2 generator).
    These pickles embed the Python source of NVIDIA's network modules and *execute* it on a
    normal ``pickle.load``. We read them with a restricted unpickler that allows only inert
    globals (tensor/storage rebuilders, ``OrderedDict``, a few numpy scalar helpers) and
    replaces NVIDIA's persistence hook by a stub that merely records the class name and the
    state, so no code from the file runs and NVIDIA's packages are not needed.
    StyleGAN3 (alias-free, configs T and R) pickles of the same kind load as
    :class:`~i2score.generator.stylegan3.StyleGAN3` (:mod:`.stylegan3`): no noise inputs.
``nvidia-tf-pkl``
    The original TensorFlow StyleGAN2 pickles (``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``)
    read the same way (only their variable arrays are used), converted like
    stylegan2-ada-pytorch's ``legacy.py`` does; and the StyleGAN (v1) pickles of the same
    container (``karras2019stylegan-*.pkl``), told apart by their variables, which load as a
    :class:`~i2score.generator.stylegan1.StyleGAN1` (:mod:`.tensorflow_v1`).

All loaders produce an :class:`~i2score.generator.network.StyleGAN2` whose state dict uses our
canonical names, with ``w_avg``/``has_w_avg``, ``source``, ``weights_sha256`` set, and
``checkpoint_noise`` holding the checkpoint's fixed noise maps when it has them (NVIDIA's
``noise_const`` buffers, rosinality's ``noises.*``): a list of ``[1, 1, r, r]`` tensors in
synthesis order, so ``G.synthesize(w, G.checkpoint_noise)`` reproduces NVIDIA's
``noise_mode='const'`` renders and rosinality's ``randomize_noise=False``.

NVIDIA pickles trained with ``num_fp16_res > 0`` run their top blocks in float16 on GPU; we
always compute in float32, so renders match theirs to float16 precision, not bitwise.

This module holds the entry points and the dispatch on the detected format; each format has
its own module in this package (:mod:`.native`, :mod:`.rosinality`, :mod:`.nvidia`,
:mod:`.tensorflow`), next to :mod:`.detect` and the pickle allow-list :mod:`.pickles`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from i2score.generator.checkpoints.detect import detect_format
from i2score.generator.checkpoints.errors import (
    CheckpointError,
    CheckpointMismatchError,
    UnsupportedCheckpointError,
)
from i2score.generator.checkpoints.native import NATIVE_FORMAT, from_native, save_generator
from i2score.generator.checkpoints.nvidia import nvidia_from_pickle, read_nvidia_pickle
from i2score.generator.checkpoints.pickles import PickledObject, restricted_pickle_load
from i2score.generator.checkpoints.rosinality import (
    from_rosinality,
    infer_rosinality_config,
    rosinality_state_shapes,
    save_rosinality,
    to_rosinality_state,
)
from i2score.generator.checkpoints.stylegan3 import is_stylegan3_pickle, stylegan3_from_pickle
from i2score.generator.checkpoints.tensorflow import tf_from_pickle
from i2score.generator.network import StyleGAN2
from i2score.generator.registry import DEFAULT_MODEL, MODELS, resolve_model_file, sha256_file
from i2score.weights.torchfile import safe_torch_load
from i2score.weights.unpickle import UnsafePickleError

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "UnsafePickleError",
    "UnsupportedCheckpointError",
    "PickledObject",
    "NATIVE_FORMAT",
    "detect_format",
    "load_generator",
    "load_generator_file",
    "save_generator",
    "save_rosinality",
    "to_rosinality_state",
    "rosinality_state_shapes",
    "infer_rosinality_config",
    "read_nvidia_pickle",
    "nvidia_noise_const",
    "restricted_pickle_load",
]

log = logging.getLogger(__name__)


def load_generator(source: str | os.PathLike[str] = DEFAULT_MODEL, *, device: str | torch.device | None = None,
                   cache_dir: str | os.PathLike[str] | None = None, sha256: str | None = None) -> StyleGAN2:
    """Load a generator from a registry name, a local path or a URL (default: the bundled
    demo model, :data:`~i2score.generator.registry.DEFAULT_MODEL`).

    The file is resolved (and, when the registry or ``sha256`` gives a checksum, verified) by
    :func:`~i2score.generator.registry.resolve_model_file`; its format is detected from its
    content. Returns an eval-mode, ``requires_grad=False`` :class:`StyleGAN2` on ``device``
    (default CPU) with ``source`` = ``str(source)`` and ``weights_sha256`` set.
    """
    src = os.fspath(source)
    path = resolve_model_file(src, cache_dir=cache_dir, sha256=sha256)
    G = load_generator_file(path, device=device)
    G.source = src
    spec = MODELS.get(src)
    if spec is not None and spec.format != G.checkpoint_format:
        # Content wins (the file is what it is); the registry entry may deserve a look.
        log.warning("%s: registry says format %s, the file is %s", src, spec.format, G.checkpoint_format)
    if spec is not None and spec.resolution != G.resolution:
        raise CheckpointError(f"{src}: registry says {spec.resolution}x{spec.resolution}, "
                              f"the file {path} holds a {G.resolution}x{G.resolution} generator")
    if spec is not None and spec.family != getattr(G, "family", "stylegan2"):
        raise CheckpointError(f"{src}: registry says a {spec.family} generator, the file {path} holds a "
                              f"{getattr(G, 'family', 'stylegan2')} one")
    if spec is not None:
        G.domain = spec.domain  # decides the W+ initialisation (face: mean latent)
    return G


def load_generator_file(path: str | os.PathLike[str], *, device: str | torch.device | None = None) -> StyleGAN2:
    """Load a local checkpoint file of any supported format (see the module docstring)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "torch-save":
        G = _load_torch_save(path)
    elif fmt == "nvidia-pkl":
        with open(path, "rb") as f:
            data = restricted_pickle_load(f, context=f"NVIDIA pickle {path.name}")
        G = stylegan3_from_pickle(data) if is_stylegan3_pickle(data) else nvidia_from_pickle(data)
    elif fmt == "nvidia-tf-pkl":
        with open(path, "rb") as f:
            G = tf_from_pickle(restricted_pickle_load(f, context=f"TensorFlow pickle {path.name}"))
    else:  # pragma: no cover - detect_format only returns the above
        raise UnsupportedCheckpointError(fmt)
    G.source = str(path)
    G.weights_sha256 = sha256_file(path)
    if device is not None:
        G.to(device)
        if G.checkpoint_noise is not None:
            G.checkpoint_noise = [n.to(device) for n in G.checkpoint_noise]
    return G


def nvidia_noise_const(source: str | os.PathLike[str] | StyleGAN2) -> list[Tensor]:
    """The fixed noise maps of a checkpoint (NVIDIA's ``noise_const``), ``[1, 1, r, r]`` each.

    Accepts a loaded generator or anything :func:`load_generator` accepts. With them,
    ``G.synthesize(w, maps)`` equals NVIDIA's ``G.synthesis(w, noise_mode='const')``.
    """
    G = source if isinstance(source, StyleGAN2) else load_generator(source)
    noise = getattr(G, "checkpoint_noise", None)
    if noise is None:
        raise CheckpointError(f"{G.source}: the checkpoint has no stored noise maps")
    return list(noise)


def _load_torch_save(path: Path) -> StyleGAN2:
    obj = safe_torch_load(path)  # weights_only=True: see i2score.weights.torchfile
    if isinstance(obj, dict) and obj.get("format") == NATIVE_FORMAT:
        return from_native(obj)
    if isinstance(obj, dict) and isinstance(obj.get("g_ema"), Mapping):
        return from_rosinality(obj["g_ema"], obj.get("latent_avg"))
    if isinstance(obj, Mapping) and any(str(k).startswith(("style.", "input.input", "conv1.")) for k in obj):
        return from_rosinality(obj, None)
    keys = list(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
    raise UnsupportedCheckpointError(
        f"{path}: a torch.save file, but neither an i2score checkpoint nor a rosinality "
        f"stylegan2-pytorch one (top level: {keys})")
