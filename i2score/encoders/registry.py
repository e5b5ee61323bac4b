"""Named pretrained encoders (pSp, e4e, ReStyle for FFHQ), resolved like the generators.

Each :class:`EncoderSpec` says where the official checkpoint is published, what it is
(architecture, backbone) and which generator of :data:`i2score.generator.registry.MODELS` it
was trained against. Files are resolved by the generators' resolver,
:func:`~i2score.generator.registry.resolve_model_file` with ``registry=ENCODERS``: same cache
directory (``$I2S_CACHE_DIR``), same timeouts, and the same :class:`ModelUnavailableError` telling
an offline user where to put a hand-downloaded copy (:func:`encoder_cache_path`).

Where the files are
-------------------
The authors publish the checkpoints on Google Drive only, as ``drive.google.com/file/d/<id>/view``
links in their READMEs (recorded verbatim in :attr:`EncoderSpec.page`, with the README section in
:attr:`EncoderSpec.reference`). :attr:`EncoderSpec.url` is the direct-download form of the same
file id (``drive.usercontent.google.com/download?id=<id>&export=download&confirm=t``, which skips
the "cannot scan for viruses" page of large files). That URL form could not be tried from the
development machine (no internet); when Drive answers with an HTML page instead (quota, changed
endpoint), :func:`~i2score.encoders.checkpoints.load_encoder` says so and names the page to
download from by hand. The file names are the ones the authors' notebooks save to
(``MODEL_PATHS`` in each repository's ``notebooks/inference_playground.ipynb``); the ReStyle-e4e
notebook entry is not in the restyle-encoder repository, so its name follows the README's
``--exp_dir=experiment/restyle_e4e_ffhq_encode``. No checksums are published: ``sha256`` is None.

All four were trained against rosinality's conversion of NVIDIA's StyleGAN2 config-f FFHQ
network (``stylegan2-ffhq-config-f.pt``), the network of the registry's ``ffhq-1024`` (and
``ffhq-1024-tf``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from i2score.encoders.base import ARCHS, BACKBONES, Arch, Backbone
from i2score.generator.registry import BUNDLED_SCHEME, MODELS, model_cache_path

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "EncoderSpec",
    "UnknownEncoderError",
    "default_encoder_for",
    "encoder_cache_path",
    "get_encoder_spec",
]


class UnknownEncoderError(KeyError):
    """A name that is not in :data:`ENCODERS`."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return f"unknown encoder {self.name!r}; known encoders: {', '.join(self.known)}"


@dataclass(frozen=True)
class EncoderSpec:
    """A named pretrained encoder checkpoint.

    Attributes:
        name: registry name (lowercase ``[a-z0-9._-]``).
        url: direct-download URL of the file.
        filename: the published file name (the readable part of the cache file name).
        sha256: expected hex digest, or None where none is published.
        arch, backbone: the :class:`~i2score.encoders.base.EncoderConfig` fields it loads as
            (the loader infers them from the file and checks them against these).
        generator: registry name of the generator it belongs to (:data:`MODELS`).
        resolution: that generator's output size (``n_styles = 2 log2(resolution) - 2``).
        description: one line for listings.
        page: the download link exactly as the authors' README gives it.
        reference: where ``page`` (and the file name) are published.
    """

    name: str
    url: str
    filename: str
    sha256: str | None
    arch: Arch
    backbone: Backbone
    generator: str
    resolution: int
    description: str
    page: str = ""
    reference: str = ""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            problems.append(f"name {self.name!r} must be lowercase [a-z0-9._-]")
        if "://" not in self.url:
            problems.append(f"url {self.url!r} is not a URL")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.filename):
            problems.append(f"filename {self.filename!r} is not a plain file name")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            problems.append(f"sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if self.arch not in ARCHS:
            problems.append(f"arch {self.arch!r} not in {ARCHS}")
        if self.backbone not in BACKBONES:
            problems.append(f"backbone {self.backbone!r} not in {BACKBONES}")
        if self.resolution < 4 or self.resolution & (self.resolution - 1):
            problems.append(f"resolution {self.resolution} is not a power of two >= 4")
        if problems:
            raise ValueError(f"invalid EncoderSpec {self.name!r}: " + "; ".join(problems))

    @property
    def n_styles(self) -> int:
        """Rows of the W+ code it predicts (18 at 1024)."""
        return 2 * int(math.log2(self.resolution)) - 2


def _drive(file_id: str) -> str:
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _view(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?usp=sharing"


#: sha256 of the bundled demo encoder (checked whenever it is resolved).
DEMO_ENCODER_SHA256 = "37bed10cab1e7f3ad0dc53faf78066b8079e0b20645164b610df870e094e0504"
#: sha256 of the bundled encoder of demo-faces-64-v2.
DEMO_V2_ENCODER_SHA256 = "3fc22aca7c303b90058d8909a87ca44b1b6feaa12614aee32048aff2a9f5b956"

_PSP_ID = "1bMTNWkh5LArlaWSc_wa8VKyq2V42T2z0"
_E4E_ID = "1cUv_reLE6k3604or78EranS7XzuVMWeO"
_RESTYLE_PSP_ID = "1sw6I2lRIB0MpuJkpc8F5BJiSZrc0hjfE"
_RESTYLE_E4E_ID = "1e2oXVeBPXMQoUoC_4TNwAWpOPpSEhE_e"



def _bundled_demo_encoder(generator: str, sha256: str) -> EncoderSpec:
    """The e4e encoder ``<generator>-e4e`` that i2score trained for a bundled demo generator."""
    name = f"{generator}-e4e"
    return EncoderSpec(
        name=name, url=f"{BUNDLED_SCHEME}i2score/models/{name}.pt", filename=f"{name}.pt", sha256=sha256,
        arch="e4e", backbone="small", generator=generator, resolution=64,
        description=f"demo: e4e (small backbone) for {generator}, trained by i2score, bundled",
        reference="i2score README, 'Demo encoder'")


_SPECS: tuple[EncoderSpec, ...] = (
    # --- bundled with the package ---------------------------------------------------------------
    # Trained by this project for the bundled demo generators (``i2s train-encoder``; README
    # "Demo encoder"): e4e-style, small backbone, 6.4 MiB, one per generator, same recipe.
    _bundled_demo_encoder("demo-faces-64", DEMO_ENCODER_SHA256),
    _bundled_demo_encoder("demo-faces-64-v2", DEMO_V2_ENCODER_SHA256),
    # --- FFHQ (the authors' checkpoints) ----------------------------------------------------------
    EncoderSpec(
        name="psp-ffhq", url=_drive(_PSP_ID), filename="psp_ffhq_encode.pt", sha256=None, arch="psp",
        backbone="ir_se50", generator="ffhq-1024", resolution=1024,
        description="pSp (GradualStyleEncoder, IR-SE50) for FFHQ 1024 inversion",
        page=_view(_PSP_ID),
        reference="eladrich/pixel2style2pixel README.md, 'Pretrained Models' table, row 'StyleGAN Inversion'; "
                  "file name from notebooks/inference_playground.ipynb MODEL_PATHS['ffhq_encode']"),
    EncoderSpec(
        name="e4e-ffhq", url=_drive(_E4E_ID), filename="e4e_ffhq_encode.pt", sha256=None, arch="e4e",
        backbone="ir_se50", generator="ffhq-1024", resolution=1024,
        description="e4e (Encoder4Editing, IR-SE50) for FFHQ 1024: editable codes",
        page=_view(_E4E_ID),
        reference="omertov/encoder4editing README.md, 'Pretrained Models' table, row 'FFHQ Inversion'; "
                  "file name from notebooks/inference_playground.ipynb MODEL_PATHS['ffhq_encode']"),
    EncoderSpec(
        name="restyle-psp-ffhq", url=_drive(_RESTYLE_PSP_ID), filename="restyle_psp_ffhq_encode.pt", sha256=None,
        arch="restyle-psp", backbone="ir_se50", generator="ffhq-1024", resolution=1024,
        description="ReStyle over pSp (BackboneEncoder, IR-SE50, 5 iterations) for FFHQ 1024",
        page=_view(_RESTYLE_PSP_ID),
        reference="yuval-alaluf/restyle-encoder README.md, 'ReStyle-pSp' table, row 'FFHQ - ReStyle + pSp'; "
                  "file name from notebooks/inference_playground.ipynb MODEL_PATHS['ffhq_encode']"),
    EncoderSpec(
        name="restyle-e4e-ffhq", url=_drive(_RESTYLE_E4E_ID), filename="restyle_e4e_ffhq_encode.pt", sha256=None,
        arch="restyle-e4e", backbone="ir_se50", generator="ffhq-1024", resolution=1024,
        description="ReStyle over e4e (ProgressiveBackboneEncoder, IR-SE50, 5 iterations) for FFHQ 1024",
        page=_view(_RESTYLE_E4E_ID),
        reference="yuval-alaluf/restyle-encoder README.md, 'ReStyle-e4e' table, row 'FFHQ - ReStyle + e4e'; "
                  "file name after the README's --exp_dir=experiment/restyle_e4e_ffhq_encode"),
)

ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in _SPECS}
"""Registry of named pretrained encoders, keyed by :attr:`EncoderSpec.name`."""

#: The encoder a generator uses when none is named. pSp: the most faithful single pass, a
#: good start for the optimisation that follows (e4e trades fidelity for editability; ReStyle
#: costs five generator passes). ``ffhq-1024-tf`` is the same network as ``ffhq-1024``.
DEFAULT_ENCODER: dict[str, str] = {
    "demo-faces-64": "demo-faces-64-e4e",
    "demo-faces-64-v2": "demo-faces-64-v2-e4e",
    "ffhq-1024": "psp-ffhq",
    "ffhq-1024-tf": "psp-ffhq",
}


def get_encoder_spec(name: str) -> EncoderSpec:
    """The registry entry ``name``; :class:`UnknownEncoderError` lists the known names."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise UnknownEncoderError(name, sorted(ENCODERS)) from None


def default_encoder_for(generator: str) -> str | None:
    """The registry name of ``generator``'s default encoder, or None when it has none."""
    return DEFAULT_ENCODER.get(generator)


def encoder_cache_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the cached copy of encoder ``name`` lives: an offline user copies the file there."""
    return model_cache_path(get_encoder_spec(name).name, cache_dir, registry=ENCODERS)


def _check_registry() -> None:
    # Keep the table honest at import: every encoder points at a known generator of its size.
    for spec in _SPECS:
        gen = MODELS.get(spec.generator)
        if gen is None or gen.resolution != spec.resolution:
            raise ValueError(f"encoder {spec.name}: generator {spec.generator!r} is not a "
                             f"{spec.resolution}px entry of MODELS")
    for gen_name, enc_name in DEFAULT_ENCODER.items():
        if gen_name not in MODELS or enc_name not in ENCODERS:
            raise ValueError(f"DEFAULT_ENCODER[{gen_name!r}] = {enc_name!r}: unknown generator or encoder")


_check_registry()
