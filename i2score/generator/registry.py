"""Named pretrained StyleGAN2 and StyleGAN (v1) checkpoints, and resolution of any model source to a local file.

A *model source* is one of

* a registry name (``"ffhq-1024"``; see :data:`MODELS` or ``i2s models list``),
* a local path (``/data/ffhq.pkl``, ``file:///data/ffhq.pkl``), or
* any fsspec URL (``https://...``, ``s3://bucket/key.pkl``, ``memory://...``).

:func:`resolve_model_file` turns a source into a local file the loaders can open. Remote files
are copied once into a cache directory (by :func:`i2score.weights.download.download_file`) and
reused afterwards. Downloads are bounded by connect/read timeouts, so an offline machine gets a
clear :class:`ModelUnavailableError` within seconds instead of hanging.

Offline use
-----------
Nothing here needs the network if the file is already present. Either pass the local path of
the checkpoint, or copy the file into the cache under the name that :func:`model_cache_path`
returns (it is also printed in every :class:`ModelUnavailableError` and by
``i2s models fetch NAME``)::

    <cache dir>/<16 hex chars of sha256(url)>_<file name from the url>

The cache directory is ``$I2S_CACHE_DIR`` when set, else ``~/.cache/i2score/models``.

Checksums
---------
NVIDIA does not publish checksums for these pickles (none in the READMEs, docs or code of
NVlabs/stylegan, stylegan2, stylegan2-ada-pytorch or stylegan3), so every built-in ``sha256`` is ``None``
rather than a guessed value. Pass ``sha256=`` to :func:`resolve_model_file` to pin a file you
have verified yourself; the cached copy is then re-checked on every resolve.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from i2score.weights.download import ChecksumMismatchError, download_file, sha256_file

__all__ = [
    "DOMAINS",
    "FAMILIES",
    "FORMATS",
    "MODELS",
    "ChecksumMismatchError",
    "Domain",
    "Family",
    "ModelFormat",
    "ModelSpec",
    "ModelUnavailableError",
    "RegistryEntry",
    "UnknownModelError",
    "DEFAULT_MODEL",
    "DEMO_MODELS",
    "bundled_path",
    "cache_path_for_url",
    "default_cache_dir",
    "get_model_spec",
    "model_cache_path",
    "resolve_model_file",
    "sha256_file",
]

ModelFormat = Literal["nvidia-pkl", "nvidia-tf-pkl", "rosinality-pt", "i2score-pt"]
"""Checkpoint layouts the loaders understand.

* ``nvidia-pkl``: stylegan2-ada-pytorch / stylegan3 pickles (PyTorch, dict with ``G_ema``).
* ``nvidia-tf-pkl``: original TensorFlow StyleGAN2 and StyleGAN (v1) pickles (tuple ``G, D, Gs``).
* ``rosinality-pt``: rosinality/stylegan2-pytorch ``torch.save`` dicts with ``g_ema``.
* ``i2score-pt``: this project's own format (:func:`~i2score.generator.checkpoints.load.save_generator`).
"""

Family = Literal["stylegan1", "stylegan2", "stylegan3-t", "stylegan3-r"]
"""Generator architecture: ``stylegan1`` (Karras et al. 2019, :class:`~i2score.generator.stylegan1.StyleGAN1`),
``stylegan2`` (:class:`~i2score.generator.network.StyleGAN2`: any StyleGAN2 file, TF,
stylegan2-ada-pytorch, the stylegan3 repository's ``networks_stylegan2``, rosinality, ours) or the
alias-free ``stylegan3-t`` / ``stylegan3-r`` (:class:`~i2score.generator.stylegan3.StyleGAN3`: no
noise inputs, W+ only)."""

Domain = Literal["face", "other"]
"""``face`` models are embedded starting from the mean latent (the paper's choice for FFHQ);
``other`` models need a different initialisation (random or per-domain)."""

FORMATS: tuple[str, ...] = get_args(ModelFormat)
FAMILIES: tuple[str, ...] = get_args(Family)
DOMAINS: tuple[str, ...] = get_args(Domain)

ENV_CACHE_DIR = "I2S_CACHE_DIR"
BUNDLED_SCHEME = "bundled://"
"""URL scheme of checkpoints shipped inside the package: ``bundled://i2score/models/x.pt``
is the file ``models/x.pt`` of the installed ``i2score`` package (no download, no cache)."""
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------------
# Errors


class UnknownModelError(KeyError):
    """A registry name that is not in :data:`MODELS`."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return f"unknown model {self.name!r}; known models: {', '.join(self.known)}"


class ModelUnavailableError(RuntimeError):
    """The checkpoint could not be obtained (offline, unreachable, missing local file).

    ``url`` is the location that failed (``None`` for a missing local path) and
    ``cache_path`` is where a manually downloaded copy would be picked up.
    """

    def __init__(self, message: str, *, url: str | None = None,
                 cache_path: Path | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.cache_path = cache_path


# --------------------------------------------------------------------------------------------
# Specs


class RegistryEntry(Protocol):
    """What :func:`resolve_model_file` needs of a registry entry: :class:`ModelSpec` here, and
    the encoder registry's ``EncoderSpec`` (one resolver for every kind of named weights)."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def sha256(self) -> str | None: ...

    @property
    def filename(self) -> str:
        """File name of the cached copy (after the URL-hash prefix)."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    """A named pretrained generator: where to get it and what a loader should expect.

    The architecture fields are what the checkpoint was trained with; loaders should still
    prefer the values stored in the checkpoint itself and may use these to cross-check.
    """

    name: str
    url: str
    sha256: str | None
    format: ModelFormat
    resolution: int
    domain: Domain
    description: str
    # rosinality's convention: config-f and the ADA "stylegan2"/"paper512" configs are 2,
    # ADA "paper256" (channel_base 16384) is 1.
    channel_multiplier: float = 2
    n_mapping: int = 8
    w_dim: int = 512
    z_dim: int = 512
    img_channels: int = 3
    # (height, width) of the real content, centred in the square output, when the training
    # images were letterboxed (LSUN Car is 512x384 padded to 512x512); None = whole frame.
    valid_hw: tuple[int, int] | None = None
    # Where the URL is documented, so an entry can be re-checked later.
    reference: str = ""
    family: Family = "stylegan2"
    # The published file name where the URL does not end in it (Google Drive's ``uc?id=``
    # links); it names the cached copy.
    file_name: str = ""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.name or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            problems.append(f"name {self.name!r} must be lowercase [a-z0-9._-]")
        if "://" not in self.url:
            problems.append(f"url {self.url!r} is not a URL")
        if self.sha256 is not None and not _HEX64.match(self.sha256):
            problems.append(f"sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if self.format not in FORMATS:
            problems.append(f"format {self.format!r} not in {FORMATS}")
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r} not in {FAMILIES}")
        if self.file_name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.file_name):
            problems.append(f"file_name {self.file_name!r} is not a plain file name")
        if self.domain not in DOMAINS:
            problems.append(f"domain {self.domain!r} not in {DOMAINS}")
        if self.resolution < 4 or self.resolution & (self.resolution - 1):
            problems.append(f"resolution {self.resolution} is not a power of two >= 4")
        if self.valid_hw is not None and not all(
                0 < v <= self.resolution for v in self.valid_hw):
            problems.append(f"valid_hw {self.valid_hw} outside the {self.resolution} frame")
        if problems:
            raise ValueError(f"invalid ModelSpec {self.name!r}: " + "; ".join(problems))

    @property
    def num_ws(self) -> int:
        """Number of per-layer w vectors the synthesis network consumes (18 at 1024 for StyleGAN2;
        StyleGAN3's 16 at every resolution: 14 layers, the input and the ToRGB)."""
        if self.family.startswith("stylegan3"):
            return 16
        return 2 * int(math.log2(self.resolution)) - 2

    @property
    def filename(self) -> str:
        """File name of the checkpoint as published (``file_name``, else the last URL path component)."""
        return self.file_name or _url_basename(self.url)


DEFAULT_MODEL = "demo-faces-64-v2"
"""The model used when none is named: bundled, so it works offline."""
DEMO_SHA256 = "e7ca94f73a6c1b5695e50da952c94ac51bc6eb6a897954846ae8bc0d1c6d4756"
DEMO_V2_SHA256 = "b4001c8565fd2e40fcb3d3c1e5cecd5ad7045e618c6e5c4942b6c0f56028dfb6"

_ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained"
_ADA_TL = f"{_ADA}/transfer-learning-source-nets"
_SG2 = "https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks"
# NVIDIA's current downloads (NGC), listed in NVlabs/stylegan3's README "Additional material".
_NGC_SG2 = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files"
_NGC_SG3 = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files"

# Where the URLs are published (checked in the upstream repositories):
_REF_ADA_README = "NVlabs/stylegan2-ada-pytorch README.md, 'Data repository' table"
_REF_ADA_TRAIN = "NVlabs/stylegan2-ada-pytorch train.py, resume_specs"
_REF_SG2 = "NVlabs/stylegan2 README.md 'networks' table + pretrained_networks.py gdrive_urls"
_REF_NGC = "NVlabs/stylegan3 README.md, 'Additional material' (StyleGAN2 / StyleGAN3 pre-trained models)"


def _ngc_stylegan2(data: str, res: int, domain: Domain, what: str, channel_multiplier: float = 2) -> ModelSpec:
    """A StyleGAN2 pickle of NVIDIA's stylegan3 repository (``networks_stylegan2``: synthesis
    settings as top-level kwargs, clamp 256 unless trained in fp32)."""
    return ModelSpec(
        name=f"stylegan2-{data}-{res}", url=f"{_NGC_SG2}/stylegan2-{data}-{res}x{res}.pkl", sha256=None,
        format="nvidia-pkl", resolution=res, domain=domain, channel_multiplier=channel_multiplier,
        description=f"{what} {res}, StyleGAN2 (NGC, stylegan3-repository pickle)", reference=_REF_NGC)


def _ngc_stylegan3(cfg: Literal["t", "r"], data: str, res: int, domain: Domain, what: str) -> ModelSpec:
    """A StyleGAN3 (alias-free) pickle: config ``t`` (translation) or ``r`` (rotation equivariant)."""
    return ModelSpec(
        name=f"stylegan3-{cfg}-{data}-{res}", url=f"{_NGC_SG3}/stylegan3-{cfg}-{data}-{res}x{res}.pkl",
        sha256=None, format="nvidia-pkl", resolution=res, domain=domain, n_mapping=2,
        family="stylegan3-t" if cfg == "t" else "stylegan3-r",
        description=f"{what} {res}, StyleGAN3-{cfg.upper()} (NGC)", reference=_REF_NGC)


_NGC_SG3_MODELS: tuple[tuple[str, int, Domain, str], ...] = (
    ("ffhq", 1024, "face", "FFHQ"), ("ffhqu", 1024, "face", "FFHQ-U (unaligned)"),
    ("ffhqu", 256, "face", "FFHQ-U (unaligned)"), ("metfaces", 1024, "face", "MetFaces"),
    ("metfacesu", 1024, "face", "MetFaces-U (unaligned)"), ("afhqv2", 512, "other", "AFHQv2"))

_SPECS: tuple[ModelSpec, ...] = (
    # --- bundled with the package -------------------------------------------------------------
    # Trained by this project on procedural portraits (i2score.demo.portraits, i2score.demo.training):
    # the default model of the demo and the tests, usable offline. See README "Demo model".
    ModelSpec(
        name="demo-faces-64", url=f"{BUNDLED_SCHEME}i2score/models/demo-faces-64.pt",
        sha256=DEMO_SHA256, format="i2score-pt", resolution=64, domain="face",
        channel_multiplier=0.125, description="demo: procedural portraits 64x64, trained by "
        "i2score (`i2s train`, 64 kimg), bundled", reference="i2score README, 'Demo model'"),
    # The same recipe with path-length regularisation, trained 244 kimg: far more real samples
    # (README "Demo generator v2"); the default since issue 19.
    ModelSpec(
        name="demo-faces-64-v2", url=f"{BUNDLED_SCHEME}i2score/models/demo-faces-64-v2.pt",
        sha256=DEMO_V2_SHA256, format="i2score-pt", resolution=64, domain="face",
        channel_multiplier=0.125, description="demo v2: procedural portraits 64x64, path-length "
        "regularised, 244 kimg (`i2s train`), bundled", reference="i2score README, 'Demo generator v2'"),
    # --- faces ------------------------------------------------------------------------------
    # README: "ffhq.pkl | FFHQ at 1024x1024, trained using original StyleGAN2", i.e. the
    # StyleGAN2 paper's config-f network re-saved as a PyTorch pickle.
    ModelSpec(
        name="ffhq-1024", url=f"{_ADA}/ffhq.pkl", sha256=None, format="nvidia-pkl",
        resolution=1024, domain="face",
        description="FFHQ 1024, original StyleGAN2 config-f (PyTorch pickle)",
        reference=_REF_ADA_README),
    # Same network in its original TensorFlow pickle.
    ModelSpec(
        name="ffhq-1024-tf", url=f"{_SG2}/stylegan2-ffhq-config-f.pkl", sha256=None,
        format="nvidia-tf-pkl", resolution=1024, domain="face",
        description="FFHQ 1024, StyleGAN2 config-f (original TensorFlow pickle)",
        reference=_REF_SG2),
    # resume_specs['ffhq1024']: retrained with the ADA code, cfg=stylegan2, no augmentation.
    ModelSpec(
        name="ffhq-1024-noaug", url=f"{_ADA_TL}/ffhq-res1024-mirror-stylegan2-noaug.pkl",
        sha256=None, format="nvidia-pkl", resolution=1024, domain="face",
        description="FFHQ 1024, stylegan2-ada-pytorch cfg=stylegan2, no aug (transfer source)",
        reference=_REF_ADA_TRAIN),
    # resume_specs['ffhq512']
    ModelSpec(
        name="ffhq-512", url=f"{_ADA_TL}/ffhq-res512-mirror-stylegan2-noaug.pkl",
        sha256=None, format="nvidia-pkl", resolution=512, domain="face",
        description="FFHQ 512, stylegan2-ada-pytorch cfg=stylegan2, no aug (transfer source)",
        reference=_REF_ADA_TRAIN),
    # resume_specs['ffhq256']; cfg=paper256 halves the channel count (fmaps=0.5).
    ModelSpec(
        name="ffhq-256", url=f"{_ADA_TL}/ffhq-res256-mirror-paper256-noaug.pkl",
        sha256=None, format="nvidia-pkl", resolution=256, domain="face", channel_multiplier=1,
        description="FFHQ 256, stylegan2-ada-pytorch cfg=paper256, no aug (transfer source)",
        reference=_REF_ADA_TRAIN),
    # README: "metfaces.pkl | MetFaces at 1024x1024, transfer learning from FFHQ using ADA".
    ModelSpec(
        name="metfaces-1024", url=f"{_ADA}/metfaces.pkl", sha256=None, format="nvidia-pkl",
        resolution=1024, domain="face",
        description="MetFaces 1024 (art portraits), ADA transfer from FFHQ",
        reference=_REF_ADA_README),
    # --- animals (AFHQ, README: "trained from scratch using ADA", 512x512) -----------------
    ModelSpec(
        name="afhq-cat-512", url=f"{_ADA}/afhqcat.pkl", sha256=None, format="nvidia-pkl",
        resolution=512, domain="other", description="AFHQ Cat 512, StyleGAN2-ADA",
        reference=_REF_ADA_README),
    ModelSpec(
        name="afhq-dog-512", url=f"{_ADA}/afhqdog.pkl", sha256=None, format="nvidia-pkl",
        resolution=512, domain="other", description="AFHQ Dog 512, StyleGAN2-ADA",
        reference=_REF_ADA_README),
    ModelSpec(
        name="afhq-wild-512", url=f"{_ADA}/afhqwild.pkl", sha256=None, format="nvidia-pkl",
        resolution=512, domain="other", description="AFHQ Wild 512, StyleGAN2-ADA",
        reference=_REF_ADA_README),
    # --- LSUN: NVIDIA publishes these only as the original TF pickles ----------------------
    # (no PyTorch versions in stylegan2-ada-pytorch's or stylegan3's model lists; the ADA
    # README converts stylegan2-cat-config-f.pkl with legacy.py as its example).
    ModelSpec(
        name="lsun-car-512", url=f"{_SG2}/stylegan2-car-config-f.pkl", sha256=None,
        format="nvidia-tf-pkl", resolution=512, domain="other", valid_hw=(384, 512),
        description="LSUN Car 512x384 (letterboxed in 512x512), StyleGAN2 config-f",
        reference=_REF_SG2),
    ModelSpec(
        name="lsun-cat-256", url=f"{_SG2}/stylegan2-cat-config-f.pkl", sha256=None,
        format="nvidia-tf-pkl", resolution=256, domain="other",
        description="LSUN Cat 256, StyleGAN2 config-f", reference=_REF_SG2),
    ModelSpec(
        name="lsun-church-256", url=f"{_SG2}/stylegan2-church-config-f.pkl", sha256=None,
        format="nvidia-tf-pkl", resolution=256, domain="other",
        description="LSUN Church 256, StyleGAN2 config-f", reference=_REF_SG2),
    ModelSpec(
        name="lsun-horse-256", url=f"{_SG2}/stylegan2-horse-config-f.pkl", sha256=None,
        format="nvidia-tf-pkl", resolution=256, domain="other",
        description="LSUN Horse 256, StyleGAN2 config-f", reference=_REF_SG2),
    # --- NGC StyleGAN2 (stylegan3 repository layout). Widths, clamp and mapping depth are read
    # from each file; channel_multiplier here is informative (cbase 16384 for the 256 px FFHQ
    # ones per the stylegan3 configs). stylegan2-cifar10-32x32 is conditional (10 classes): not
    # listed, the loader refuses class-conditional generators.
    _ngc_stylegan2("ffhq", 1024, "face", "FFHQ"),
    _ngc_stylegan2("ffhq", 512, "face", "FFHQ"),
    _ngc_stylegan2("ffhq", 256, "face", "FFHQ", channel_multiplier=1),
    _ngc_stylegan2("ffhqu", 1024, "face", "FFHQ-U (unaligned)"),
    _ngc_stylegan2("ffhqu", 256, "face", "FFHQ-U (unaligned)", channel_multiplier=1),
    _ngc_stylegan2("metfaces", 1024, "face", "MetFaces"),
    _ngc_stylegan2("metfacesu", 1024, "face", "MetFaces-U (unaligned)"),
    _ngc_stylegan2("afhqv2", 512, "other", "AFHQv2 (cats, dogs, wild)"),
    _ngc_stylegan2("afhqcat", 512, "other", "AFHQ Cat"),
    _ngc_stylegan2("afhqdog", 512, "other", "AFHQ Dog"),
    _ngc_stylegan2("afhqwild", 512, "other", "AFHQ Wild"),
    _ngc_stylegan2("brecahad", 512, "other", "BreCaHAD (histology)"),
    _ngc_stylegan2("celebahq", 256, "face", "CelebA-HQ"),
    _ngc_stylegan2("lsundog", 256, "other", "LSUN Dog"),
    # --- StyleGAN3 (alias-free): no noise inputs, so W+ only (see README "StyleGAN3") ---------
    *(_ngc_stylegan3("t", *model) for model in _NGC_SG3_MODELS),
    *(_ngc_stylegan3("r", *model) for model in _NGC_SG3_MODELS),
)

# --- StyleGAN (v1): the networks of the StyleGAN paper, TF pickles on Google Drive only ---------
# NVlabs/stylegan README.md ("networks" folder) and pretrained_example.py / generate_figures.py
# give these drive.google.com/uc?id= links; the file names are the ones generate_figures.py
# comments. Drive may answer a large file with an HTML page (quota, virus-scan notice): the
# loader then refuses it as "not a pickle"; download it by hand into the path the error names.
_REF_SG1 = "NVlabs/stylegan README.md 'networks' table + generate_figures.py url_* lines"


def _sg1(name: str, drive_id: str, file_name: str, resolution: int, domain: Domain, description: str,
         valid_hw: tuple[int, int] | None = None) -> ModelSpec:
    return ModelSpec(name=name, url=f"https://drive.google.com/uc?id={drive_id}", sha256=None,
                     format="nvidia-tf-pkl", resolution=resolution, domain=domain, valid_hw=valid_hw,
                     description=description, reference=_REF_SG1, family="stylegan1", file_name=file_name)


_SPECS += (
    _sg1("ffhq-1024-stylegan1", "1MEGjdvVpUsu1jB4zrXZN7Y4kBBOzizDQ", "karras2019stylegan-ffhq-1024x1024.pkl",
         1024, "face", "FFHQ 1024, StyleGAN (v1): the network of Image2StyleGAN(++)'s experiments"),
    _sg1("celebahq-1024-stylegan1", "1MGqJl28pN4t7SAtSrPdSRJSQJqahkzUf",
         "karras2019stylegan-celebahq-1024x1024.pkl", 1024, "face", "CelebA-HQ 1024, StyleGAN (v1)"),
    _sg1("lsun-bedroom-256-stylegan1", "1MOSKeGF0FJcivpBI7s63V9YHloUTORiF",
         "karras2019stylegan-bedrooms-256x256.pkl", 256, "other", "LSUN Bedroom 256, StyleGAN (v1)"),
    _sg1("lsun-car-512-stylegan1", "1MJ6iCfNtMIRicihwRorsM3b7mmtmK9c3", "karras2019stylegan-cars-512x384.pkl",
         512, "other", "LSUN Car 512x384 (letterboxed in 512x512), StyleGAN (v1)", valid_hw=(384, 512)),
    _sg1("lsun-cat-256-stylegan1", "1MQywl0FNt6lHu8E_EUqnRbviagS7fbiJ", "karras2019stylegan-cats-256x256.pkl",
         256, "other", "LSUN Cat 256, StyleGAN (v1)"),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
"""Registry of named pretrained generators, keyed by :attr:`ModelSpec.name`."""

DEMO_MODELS: tuple[str, ...] = tuple(name for name, spec in MODELS.items() if spec.url.startswith(BUNDLED_SCHEME))
"""The bundled models: trained by i2score on the procedural portraits (``i2score.demo``), so
held-out portraits are real images for them (realism references, ground-truth benchmarks)."""


def get_model_spec(name: str) -> ModelSpec:
    """Return the registry entry ``name``; :class:`UnknownModelError` lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(name, sorted(MODELS)) from None


# --------------------------------------------------------------------------------------------
# Cache layout


def default_cache_dir() -> Path:
    """``$I2S_CACHE_DIR`` if set, else ``~/.cache/i2score/models``."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "i2score" / "models"


def _url_basename(url: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    # Keep the name a plain, portable file name whatever the URL contains.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "model"


def cache_path_for_url(url: str, cache_dir: str | os.PathLike[str] | None = None, *,
                       filename: str | None = None) -> Path:
    """Where the cached copy of ``url`` lives.

    The URL hash prefix keeps equally named files from different places (several
    ``ffhq.pkl``) apart; the readable suffix (``filename``, default the URL's last path
    component) lets a person recognise the file.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    name = _url_basename(f"/{filename}") if filename else _url_basename(url)
    return root / f"{digest}_{name}"


def model_cache_path(source: str, cache_dir: str | os.PathLike[str] | None = None, *,
                     registry: Mapping[str, RegistryEntry] | None = None) -> Path:
    """Cache location for a registry name or remote URL (where an offline copy goes).

    ``registry`` is where names are looked up (default :data:`MODELS`; the encoders pass theirs).
    """
    entries: Mapping[str, RegistryEntry] = MODELS if registry is None else registry
    spec = entries.get(source)
    url = spec.url if spec is not None else source
    if url.startswith(BUNDLED_SCHEME):
        return bundled_path(url)
    if not _is_remote(url):
        raise ValueError(f"{source!r} is neither a registry name nor a remote URL")
    return cache_path_for_url(url, cache_dir, filename=spec.filename if spec is not None else None)


# --------------------------------------------------------------------------------------------
# Hashing


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _HEX64.match(value):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value


# --------------------------------------------------------------------------------------------
# Resolution


def _protocol(source: str) -> str | None:
    # Windows drive letters ("C:\\x") have no "://", so they stay local paths.
    if "://" not in source:
        return None
    return source.split("://", 1)[0].lower()


def bundled_path(url: str) -> Path:
    """Local file of a ``bundled://PACKAGE/RELATIVE/PATH`` URL (inside the installed package)."""
    import importlib.resources

    rest = url[len(BUNDLED_SCHEME):]
    package, _, rel = rest.partition("/")
    if not package or not rel or ".." in Path(rel).parts:
        raise ValueError(f"malformed bundled URL {url!r}; expected bundled://package/path")
    return Path(str(importlib.resources.files(package).joinpath(rel)))


def _is_remote(source: str) -> bool:
    return _protocol(source) not in (None, "file", "local")


def resolve_model_file(
    source: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
    storage_options: Mapping[str, Any] | None = None,
    registry: Mapping[str, RegistryEntry] | None = None,
) -> Path:
    """Return a local file for ``source``: a registry name, a local path or an fsspec URL.

    Local paths are returned as given (checked against ``sha256`` when one is passed, and
    never modified). Remote files are downloaded into ``cache_dir`` (default
    :func:`default_cache_dir`) under :func:`cache_path_for_url`, through a temporary file that
    is renamed into place only once complete and verified, so a reader never sees a partial
    checkpoint. A cached copy is reused without network access.

    Args:
        source: registry name, local path (``file://`` allowed) or fsspec URL.
        cache_dir: cache directory for remote files.
        sha256: expected hex digest; overrides the registry's. ``None`` = do not verify.
        timeout: seconds allowed for connecting / DNS and for each read; not a limit on the
            whole transfer, so a slow but live download of a large file still completes.
        storage_options: extra fsspec options for the remote filesystem (e.g.
            ``{"endpoint_url": ...}`` for S3-compatible stores).
        registry: where registry names are looked up (default :data:`MODELS`, the generators;
            :data:`i2score.encoders.registry.ENCODERS` for the encoders).

    Raises:
        ModelUnavailableError: the file cannot be fetched or the local path does not exist;
            the message names the URL, the cause, and where to put the file by hand.
        ChecksumMismatchError: the file's sha256 differs from the expected one (a bad cached
            or downloaded copy is deleted first).
    """
    expected = _normalise_sha256(sha256)
    entries: Mapping[str, RegistryEntry] = MODELS if registry is None else registry
    spec = entries.get(source)
    if spec is not None and spec.url.startswith(BUNDLED_SCHEME):
        path = bundled_path(spec.url)
        if not path.is_file():
            raise ModelUnavailableError(
                f"{source}: the bundled checkpoint {path} is missing from this installation "
                "(reinstall i2score, or check out the repository with its models/ folder)")
        expected = expected or spec.sha256
        if expected is not None:
            actual = sha256_file(path)
            if actual != expected:
                raise ChecksumMismatchError(path, expected, actual, "the bundled file was modified")
        return path
    if spec is not None:
        url = spec.url
        expected = expected or spec.sha256
    elif _is_remote(source):
        url = source
    else:
        return _resolve_local(source, expected, entries)

    dest = cache_path_for_url(url, cache_dir, filename=spec.filename if spec is not None else None)
    if dest.is_file():
        if expected is not None:
            _verify_or_delete(dest, expected, "the cached copy was deleted; resolve again to "
                                              "download a fresh one")
        return dest

    try:
        return download_file(url, dest, sha256=expected, timeout=timeout, storage_options=storage_options)
    except ChecksumMismatchError:
        raise
    except Exception as exc:  # any transport failure means "unavailable"; cause is chained
        raise ModelUnavailableError(
            _unavailable_message(source, url, dest, exc, expected, named=spec is not None),
            url=url, cache_path=dest) from exc


def _resolve_local(source: str, expected: str | None, entries: Mapping[str, RegistryEntry]) -> Path:
    if _protocol(source) in ("file", "local"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(source).path))
    else:
        path = Path(source).expanduser()
    if not path.is_file():
        raise ModelUnavailableError(
            f"model source {source!r} is neither a registry name (known: "
            f"{', '.join(sorted(entries))}) nor an existing file ({path} not found)")
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            # The user's own file: report, never delete.
            raise ChecksumMismatchError(path, expected, actual)
    return path


def _verify_or_delete(path: Path, expected: str, note: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise ChecksumMismatchError(path, expected, actual, note)


def _unavailable_message(source: str, url: str, dest: Path, exc: BaseException,
                         expected: str | None, *, named: bool) -> str:
    lines = [
        f"could not fetch model file {url}: {type(exc).__name__}: {exc}",
        "To use it without network access, download it elsewhere and either",
        f"  - copy it to {dest}",
        f"  - or pass the local file path instead of {source!r}.",
    ]
    if named:
        lines.append(f"(The cache directory can be changed with ${ENV_CACHE_DIR}.)")
    if expected is not None:
        lines.append(f"Its sha256 must be {expected}.")
    return "\n".join(lines)
