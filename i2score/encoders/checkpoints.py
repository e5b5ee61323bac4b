"""Load encoders: registry names, paths and URLs; i2score's format and the official ``.pt`` files.

Formats (detected from the content, never the file name; every file is read with
``torch.load(weights_only=True)`` through :func:`i2score.weights.torchfile.safe_torch_load`):

``i2score-encoder``
    Our own checkpoint (:mod:`i2score.encoders.native`): config, state dict, meta.
``official``
    What the training code of pSp (eladrich/pixel2style2pixel), e4e (omertov/encoder4editing) and
    ReStyle (yuval-alaluf/restyle-encoder) saves: ``{"state_dict": {...}, "opts": {...},
    "latent_avg": tensor}`` (their ``training/coach*.py``, ``__get_save_dict``).

    * The architecture comes from ``opts``: ``encoder_type`` (``GradualStyleEncoder`` -> pSp,
      ``Encoder4Editing`` -> e4e, ``BackboneEncoder`` -> ReStyle-pSp,
      ``ProgressiveBackboneEncoder`` -> ReStyle-e4e; ReStyle's files are told apart by the
      ``n_iters_per_batch`` option, which only ReStyle's training options define), the number of
      styles from ``output_size`` (pSp, ReStyle) or ``stylegan_size`` (e4e) as
      ``2 log2(size) - 2`` (1024 when absent, the references' default), the input channels from
      ``input_nc``, ReStyle's default iterations from ``n_iters_per_batch``.
    * ``state_dict`` holds the encoder under ``encoder.*`` and the whole rosinality StyleGAN2
      generator under ``decoder.*``. Only ``encoder.*`` is read: the decoder is the generator
      the encoder was trained against, which i2score loads from the generator registry
      (:attr:`~i2score.encoders.registry.EncoderSpec.generator`), so those keys are ignored. The
      encoder keys are checked strictly: every key the architecture needs must be there with
      its shape and no other ``encoder.*`` key may be (the error names the key and the file).
    * ``latent_avg`` is ``[n_styles, 512]`` (pSp, e4e and ReStyle repeat the generator's mean
      W over the styles before saving) or ``[512]`` (ReStyle-e4e's fallback, a sampled mean);
      both load. pSp and e4e add it only when ``opts.start_from_latent_avg`` is set (else the
      encoder's output is the code, and i2score's ``latent_avg`` is zeros); ReStyle always
      starts from it.

Supported: the four IR-SE50 encoders above (all the official FFHQ ones). Refused with a clear
:class:`UnsupportedEncoderError`: ReStyle's ResNet-34 variants, ReStyle over the FPN encoder,
pSp's ``learn_in_w`` / single-W encoders and pSp's non-RGB inputs (sketches, segmentation maps).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from i2score.encoders.base import Arch, Encoder, EncoderConfig
from i2score.encoders.build import build_net
from i2score.encoders.native import encoder_from_native, is_native
from i2score.encoders.registry import ENCODERS
from i2score.generator.checkpoints.errors import CheckpointError
from i2score.generator.registry import resolve_model_file
from i2score.weights.download import sha256_file
from i2score.weights.torchfile import safe_torch_load

__all__ = [
    "EncoderCheckpointError",
    "EncoderStateMismatchError",
    "UnsupportedEncoderError",
    "encoder_from_official",
    "infer_official_config",
    "load_encoder",
    "load_encoder_file",
    "load_state_strict",
]

#: ``opts.encoder_type`` of the official IR-SE50 encoders -> our arch (ReStyle's are told apart
#: from pSp's/e4e's by :data:`_RESTYLE_OPTION`).
_OFFICIAL_TYPES: dict[str, Arch] = {
    "GradualStyleEncoder": "psp",
    "Encoder4Editing": "e4e",
    "BackboneEncoder": "restyle-psp",
    "ProgressiveBackboneEncoder": "restyle-e4e",
}
_RESTYLE_OPTION = "n_iters_per_batch"
_ENCODER_PREFIX = "encoder."


class EncoderCheckpointError(CheckpointError):
    """A file that cannot be turned into an encoder."""


class UnsupportedEncoderError(EncoderCheckpointError):
    """A checkpoint of a kind or an architecture i2score does not load."""


class EncoderStateMismatchError(EncoderCheckpointError):
    """The encoder weights of a checkpoint do not fit the architecture its opts describe.

    ``missing`` and ``unexpected`` list full keys (``encoder.`` included), ``mismatched`` maps a
    key to ``(shape in the file, shape expected)``; all are in the message.
    """

    def __init__(self, context: str, config: EncoderConfig, missing: list[str], unexpected: list[str],
                 mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f"{context}: the encoder weights do not match the {config.arch} architecture inferred "
                 f"from the checkpoint (n_styles={config.n_styles}, {config.in_channels} input channels)"]
        lines += [f"  missing key {k}" for k in missing[:20]]
        lines += [f"  unexpected key {k}" for k in unexpected[:20]]
        lines += [f"  {k}: shape {list(got)} in the file, {list(want)} expected" for k, (got, want) in
                  list(mismatched.items())[:20]]
        hidden = max(len(missing) - 20, 0) + max(len(unexpected) - 20, 0) + max(len(mismatched) - 20, 0)
        if hidden:
            lines.append(f"  ... and {hidden} more")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Entry points


def load_encoder(source: str | os.PathLike[str], *, device: str | torch.device | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, sha256: str | None = None) -> Encoder:
    """Load an encoder from a registry name (:data:`~i2score.encoders.registry.ENCODERS`), a local
    path or a URL.

    The file is resolved (downloaded once into the cache, verified when ``sha256`` or the
    registry gives a digest) by :func:`~i2score.generator.registry.resolve_model_file`, so a
    missing file offline raises the same :class:`~i2score.generator.registry.ModelUnavailableError`
    as for generators, naming the URL and where to put a copy by hand.

    Returns:
        An eval-mode, ``requires_grad=False`` :class:`Encoder` on ``device`` (default CPU) with
        ``source`` = ``str(source)``, ``weights_sha256`` the file's sha256, and for registry
        names ``meta["generator"]`` the generator it belongs to.
    """
    src = os.fspath(source)
    path = resolve_model_file(src, cache_dir=cache_dir, sha256=sha256, registry=ENCODERS)
    spec = ENCODERS.get(src)
    encoder = load_encoder_file(path, device=device, page=spec.page if spec is not None else "")
    encoder.source = src
    if spec is not None:
        cfg = encoder.config
        if (cfg.arch, cfg.backbone, cfg.n_styles) != (spec.arch, spec.backbone, spec.n_styles):
            raise EncoderCheckpointError(
                f"{src}: the registry says {spec.arch}/{spec.backbone} with {spec.n_styles} styles, the file "
                f"{path} holds {cfg.arch}/{cfg.backbone} with {cfg.n_styles}")
        encoder.meta.setdefault("generator", spec.generator)
    return encoder


def load_encoder_file(path: str | os.PathLike[str], *, device: str | torch.device | None = None,
                      page: str = "") -> Encoder:
    """Load a local encoder checkpoint of either format (see the module docstring).

    ``page`` is where the file can be downloaded by hand (named when the file turns out to be a
    web page instead of a checkpoint).
    """
    path = Path(path)
    _refuse_web_page(path, page)
    obj = safe_torch_load(path)
    if is_native(obj):
        encoder = encoder_from_native(obj)
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and "opts" in obj:
        encoder = encoder_from_official(obj, context=str(path))
    else:
        top = list(obj)[:12] if isinstance(obj, Mapping) else type(obj).__name__
        raise UnsupportedEncoderError(
            f"{path}: a torch.save file, but neither an i2score encoder nor an official pSp/e4e/ReStyle "
            f"checkpoint (those hold state_dict, opts, latent_avg; top level here: {top})")
    encoder.source = str(path)
    encoder.weights_sha256 = sha256_file(path)
    encoder.eval().requires_grad_(False)
    if device is not None:
        encoder.to(device)
    return encoder


# --------------------------------------------------------------------------------------------
# The official format


def _plain_opts(opts: Any, context: str) -> dict[str, Any]:
    if isinstance(opts, argparse.Namespace):
        return dict(vars(opts))
    if isinstance(opts, Mapping):
        return dict(opts)
    raise UnsupportedEncoderError(f"{context}: 'opts' is a {type(opts).__name__}, expected the dict of "
                                  "training options the reference code saves")


def infer_official_config(opts: Mapping[str, Any], *, context: str = "checkpoint") -> EncoderConfig:
    """The :class:`EncoderConfig` an official checkpoint's ``opts`` describe (see the module
    docstring for the rules); :class:`UnsupportedEncoderError` for the variants we do not load."""
    encoder_type = opts.get("encoder_type")
    restyle = _RESTYLE_OPTION in opts
    arch = _OFFICIAL_TYPES.get(str(encoder_type))
    if arch is None:
        known = ", ".join(_OFFICIAL_TYPES)
        raise UnsupportedEncoderError(
            f"{context}: opts.encoder_type={encoder_type!r} is not supported (supported: {known}; "
            "ReStyle's ResNet-34 encoders and pSp's single-W encoders are not)")
    if arch in ("psp", "e4e") and restyle:
        raise UnsupportedEncoderError(
            f"{context}: ReStyle over the {encoder_type} (feature pyramid) encoder is not supported; "
            "ReStyle's published encoders use BackboneEncoder / ProgressiveBackboneEncoder")
    if opts.get("learn_in_w"):
        raise UnsupportedEncoderError(f"{context}: opts.learn_in_w is set (one W for all styles): not supported")
    size = int(opts.get("output_size") or opts.get("stylegan_size") or 1024)
    if size < 4 or size & (size - 1):
        raise UnsupportedEncoderError(f"{context}: generator size {size} from opts is not a power of two")
    n_styles = 2 * int(math.log2(size)) - 2
    expected_nc = 6 if arch.startswith("restyle") else 3
    input_nc = int(opts.get("input_nc", expected_nc))
    if input_nc != expected_nc:
        raise UnsupportedEncoderError(
            f"{context}: opts.input_nc={input_nc}, but {arch} reads {expected_nc} channels "
            "(pSp's sketch / segmentation-map encoders are not supported)")
    iterations = int(opts.get(_RESTYLE_OPTION, 5)) if arch.startswith("restyle") else 1
    return EncoderConfig(arch=arch, backbone="ir_se50", n_styles=n_styles, iterations=max(iterations, 1))


def load_state_strict(net: nn.Module, state: Mapping[str, Any], config: EncoderConfig, *,
                      context: str, prefix: str = _ENCODER_PREFIX) -> None:
    """Copy ``state`` (keys without ``prefix``) into ``net``: every key of ``net`` must be there
    with its shape and nothing else may be; :class:`EncoderStateMismatchError` names the keys."""
    expected = net.state_dict()
    missing = [prefix + k for k in expected if k not in state]
    unexpected = [prefix + k for k in state if k not in expected]
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for key, want in expected.items():
        got = state.get(key)
        if got is None:
            continue
        if not isinstance(got, Tensor):
            raise EncoderCheckpointError(f"{context}: {prefix}{key} is a {type(got).__name__}, not a tensor")
        if tuple(got.shape) != tuple(want.shape):
            mismatched[prefix + key] = (tuple(got.shape), tuple(want.shape))
    if missing or unexpected or mismatched:
        raise EncoderStateMismatchError(context, config, missing, unexpected, mismatched)
    net.load_state_dict(dict(state), strict=True)


def _official_latent_avg(ckpt: Mapping[str, Any], opts: Mapping[str, Any], config: EncoderConfig,
                         context: str) -> Tensor | None:
    avg = ckpt.get("latent_avg")
    # pSp/e4e add latent_avg only under start_from_latent_avg; ReStyle's first pass always does.
    if not (config.restyle or opts.get("start_from_latent_avg")):
        return None
    if not isinstance(avg, Tensor):
        raise EncoderCheckpointError(
            f"{context}: the encoder starts from latent_avg, but the file has none (the reference would "
            "estimate it by sampling its generator); not supported")
    avg = avg.detach().float()
    while avg.ndim > 2 and avg.shape[0] == 1:  # a saved [1, n, 512] batch of one
        avg = avg[0]
    if avg.ndim == 2 and avg.shape[0] == 1:
        avg = avg[0]
    rows_ok = avg.ndim == 1 or (avg.ndim == 2 and avg.shape[0] == config.n_styles)
    if not rows_ok or avg.shape[-1] != config.w_dim:
        raise EncoderCheckpointError(
            f"{context}: latent_avg has shape {list(avg.shape)}; expected [{config.w_dim}] or "
            f"[{config.n_styles}, {config.w_dim}]")
    return avg


def encoder_from_official(ckpt: Mapping[str, Any], *, context: str = "checkpoint") -> Encoder:
    """Build an :class:`Encoder` from an official pSp / e4e / ReStyle checkpoint dict (already
    loaded); ``context`` (the file) prefixes every error message."""
    opts = _plain_opts(ckpt.get("opts"), context)
    config = infer_official_config(opts, context=context)
    state = ckpt["state_dict"]
    encoder_state = {k[len(_ENCODER_PREFIX):]: v for k, v in state.items() if str(k).startswith(_ENCODER_PREFIX)}
    if not encoder_state:
        raise EncoderCheckpointError(f"{context}: state_dict has no '{_ENCODER_PREFIX}*' keys")
    net = build_net(config)
    load_state_strict(net, encoder_state, config, context=context)
    encoder = Encoder(config, net, _official_latent_avg(ckpt, opts, config, context))
    encoder.meta = {
        "format": "official",
        "encoder_type": str(opts.get("encoder_type")),
        "dataset_type": str(opts.get("dataset_type", "")),
        "generator_size": int(opts.get("output_size") or opts.get("stylegan_size") or 1024),
    }
    return encoder


def _refuse_web_page(path: Path, page: str) -> None:
    # Google Drive answers some downloads (quota, confirmation pages) with HTML and status 200.
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        where = f" download it by hand from {page} and" if page else ""
        raise EncoderCheckpointError(
            f"{path} is a web page, not a checkpoint (the server sent HTML, e.g. a Google Drive quota or "
            f"confirmation page):{where} replace this file with the real one")
