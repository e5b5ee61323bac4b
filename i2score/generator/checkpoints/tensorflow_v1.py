"""The original TensorFlow StyleGAN (v1) pickles, e.g. ``karras2019stylegan-ffhq-1024x1024.pkl``.

The file is ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``, like the StyleGAN2 TF pickles,
and is read by the same restricted unpickler and variable collector
(:mod:`i2score.generator.checkpoints.tensorflow`, which hands v1 files to this module): only the
``variables`` arrays and ``static_kwargs`` are used, the embedded network source is never run.

``Gs`` (the moving average) is converted. Its variables, NVIDIA's ``networks_stylegan.py``
names and shapes (``L = 2 log2 R - 2`` layers, ``C(r)`` the width at ``r``, TF layouts
``[kh, kw, in, out]`` and ``[in, out]``):

=====================================================  ===============================
``dlatent_avg``, ``lod``                               ``[w_dim]``, scalar (must be 0)
``mapping/Dense{i}/weight``, ``.../bias``              ``[in, out]``, ``[out]``
``synthesis/noise{i}``                                 ``[1, 1, r, r]``, ``i < L``
``synthesis/4x4/Const/const``                          ``[1, C(4), 4, 4]``
``synthesis/{r}x{r}/{Const|Conv|Conv0_up|Conv1}/...``  ``weight`` (not Const) ``[3, 3, in, out]``,
                                                       ``bias``, ``Noise/weight`` ``[C]``,
                                                       ``StyleMod/weight`` ``[w_dim, 2C]``,
                                                       ``StyleMod/bias`` ``[2C]``
``synthesis/ToRGB_lod{k}/weight``, ``.../bias``        ``[1, 1, C, 3]``, ``[3]``, every ``k``
=====================================================  ===============================

Only ``ToRGB_lod0`` draws the image of a fully grown network; the other ToRGB layers are
checked for shape and otherwise unused. The architecture comes from ``static_kwargs`` with
NVIDIA's defaults for what a file leaves out (the official files store only ``num_channels``,
``resolution`` and ``label_size``); settings this port does not implement are refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from i2score.generator.checkpoints.build import build_generator, check_shapes
from i2score.generator.checkpoints.errors import CheckpointError, UnsupportedCheckpointError
from i2score.generator.stylegan1 import StyleGAN1, StyleGAN1Config

__all__ = ["is_stylegan1_variables", "stylegan1_config", "stylegan1_tf_shapes", "tf_stylegan1_from_variables"]

FORMAT = "nvidia-tf-pkl"

# NVIDIA's keyword arguments of G_style, G_mapping and G_synthesis (networks_stylegan.py) with the
# values this port implements; None = any value (it is read, or it only matters for training).
_SUPPORTED: dict[str, tuple[Any, ...] | None] = {
    # G_style: truncation and training-time settings; we truncate only on request.
    "truncation_psi": None, "truncation_cutoff": None, "truncation_psi_val": None,
    "truncation_cutoff_val": None, "dlatent_avg_beta": None, "style_mixing_prob": None,
    "is_training": None, "is_validation": None, "is_template_graph": None,
    # G_mapping
    "latent_size": None, "label_size": (0,), "dlatent_size": None, "dlatent_broadcast": None,
    "mapping_layers": None, "mapping_fmaps": None, "mapping_lrmul": None,
    "mapping_nonlinearity": ("lrelu",), "use_wscale": (True,), "normalize_latents": (True,),
    "dtype": ("float32",),
    # G_synthesis
    "num_channels": (3,), "resolution": None, "fmap_base": None, "fmap_decay": (1.0, 1),
    "fmap_max": None, "use_styles": (True,), "const_input_layer": (True,), "use_noise": (True,),
    "randomize_noise": None, "nonlinearity": ("lrelu",), "use_pixel_norm": (False,),
    "use_instance_norm": (True,), "fused_scale": ("auto", True, False), "blur_filter": None,
    "structure": None, "force_clean_graph": None,
}


def is_stylegan1_variables(variables: Mapping[str, Any]) -> bool:
    """Whether TF variables (``component/name``) are a StyleGAN v1 generator's (AdaIN ``StyleMod``
    layers on a constant; StyleGAN2's layers have ``mod_weight`` instead)."""
    return "synthesis/4x4/Const/StyleMod/weight" in variables


def stylegan1_config(static_kwargs: Mapping[str, Any]) -> StyleGAN1Config:
    """The architecture of a v1 generator from its ``static_kwargs`` (NVIDIA's defaults for the
    keys it lacks). Raises :class:`UnsupportedCheckpointError` naming any unknown key or a value
    this port does not implement."""
    unknown = sorted(k for k in static_kwargs if k not in _SUPPORTED)
    if unknown:
        raise UnsupportedCheckpointError(f"StyleGAN v1 TF pickle: unknown generator kwargs {unknown}")
    for key, allowed in _SUPPORTED.items():
        if allowed is not None and key in static_kwargs and static_kwargs[key] not in allowed:
            raise UnsupportedCheckpointError(
                f"StyleGAN v1 TF pickle: {key}={static_kwargs[key]!r} is not supported (supported: "
                f"{', '.join(repr(a) for a in allowed)})")

    def get(name: str, default: Any) -> Any:
        value = static_kwargs.get(name, default)
        return default if value is None else value

    if "resolution" not in static_kwargs:
        raise CheckpointError("StyleGAN v1 TF pickle: static kwarg 'resolution' is missing")
    w_dim = int(get("dlatent_size", 512))
    if int(get("mapping_fmaps", 512)) != w_dim:
        raise UnsupportedCheckpointError(
            f"StyleGAN v1 TF pickle: mapping_fmaps={get('mapping_fmaps', 512)} differs from dlatent_size={w_dim}")
    fused = get("fused_scale", "auto")
    blur = static_kwargs.get("blur_filter", [1, 2, 1])  # None = no blur (NVIDIA's meaning)
    taps = () if blur is None else tuple(float(t) for t in np.asarray(blur, dtype=np.float64).ravel())
    return StyleGAN1Config(
        resolution=int(static_kwargs["resolution"]), channel_max=int(get("fmap_max", 512)),
        n_mapping=int(get("mapping_layers", 8)), w_dim=w_dim, z_dim=int(get("latent_size", 512)),
        mapping_lr_mul=float(get("mapping_lrmul", 0.01)), fmap_base=int(get("fmap_base", 8192)),
        fused_scale=None if fused == "auto" else bool(fused),
        blur_filter=taps or None)


def stylegan1_tf_shapes(cfg: StyleGAN1Config) -> dict[str, tuple[int, ...]]:
    """Every variable a v1 ``Gs`` holds, ``component/name`` -> shape (see the module table)."""
    c, wd = cfg.channels, cfg.w_dim
    shapes: dict[str, tuple[int, ...]] = {"dlatent_avg": (wd,), "lod": ()}
    for i in range(cfg.n_mapping):
        shapes[f"mapping/Dense{i}/weight"] = (cfg.z_dim if i == 0 else wd, wd)
        shapes[f"mapping/Dense{i}/bias"] = (wd,)
    shapes["synthesis/lod"] = ()
    for i in range(cfg.num_ws):
        r = cfg.conv_resolution(i)
        shapes[f"synthesis/noise{i}"] = (1, 1, r, r)
    shapes["synthesis/4x4/Const/const"] = (1, c(4), 4, 4)
    for i, scope in enumerate(_layer_scopes(cfg)):
        r = cfg.conv_resolution(i)
        if i > 0:
            shapes[f"{scope}/weight"] = (3, 3, c(r // 2) if i % 2 == 0 else c(r), c(r))
        shapes[f"{scope}/Noise/weight"] = (c(r),)
        shapes[f"{scope}/bias"] = (c(r),)
        shapes[f"{scope}/StyleMod/weight"] = (wd, 2 * c(r))
        shapes[f"{scope}/StyleMod/bias"] = (2 * c(r),)
    for k in range(cfg.log2_res - 1):
        r = cfg.resolution // 2**k
        shapes[f"synthesis/ToRGB_lod{k}/weight"] = (1, 1, c(r), 3)
        shapes[f"synthesis/ToRGB_lod{k}/bias"] = (3,)
    return shapes


def _layer_scopes(cfg: StyleGAN1Config) -> list[str]:
    """TF scope of synthesis layer ``i`` (its epilogue and weights), in layer order."""
    scopes = ["synthesis/4x4/Const", "synthesis/4x4/Conv"]
    for i in range(2, cfg.num_ws):
        r = cfg.conv_resolution(i)
        scopes.append(f"synthesis/{r}x{r}/" + ("Conv0_up" if i % 2 == 0 else "Conv1"))
    return scopes


def tf_stylegan1_from_variables(static_kwargs: Mapping[str, Any], variables: Mapping[str, np.ndarray]) -> StyleGAN1:
    """A :class:`StyleGAN1` from ``Gs``'s static kwargs and variables (``component/name`` ->
    array). Every variable must be present with its shape (a missing, unexpected or misshapen one
    raises :class:`CheckpointMismatchError` listing them)."""
    cfg = stylegan1_config(static_kwargs)
    expected = stylegan1_tf_shapes(cfg)
    got = {k: tuple(np.shape(v)) for k, v in variables.items()}
    check_shapes(FORMAT, cfg, got, expected, "StyleGAN v1 TensorFlow variables")
    for lod in ("lod", "synthesis/lod"):
        if float(np.asarray(variables[lod])) != 0:
            raise UnsupportedCheckpointError(
                f"StyleGAN v1 TF pickle: {lod} = {float(np.asarray(variables[lod]))}: a network caught "
                "mid-growth (lod 0 = fully grown) is not supported")

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(variables[name], dtype=np.float32, order="C"))

    sd: dict[str, torch.Tensor] = {"w_avg": t("dlatent_avg")}
    for i in range(cfg.n_mapping):
        sd[f"mapping.fcs.{i}.weight"] = t(f"mapping/Dense{i}/weight").T.contiguous()
        # StyleGAN2's EqualLinear applies sqrt(2) after the leaky ReLU, v1 before it (in the
        # weight's He constant): lrelu(sqrt2 a + b) = sqrt2 lrelu(a + b / sqrt2).
        sd[f"mapping.fcs.{i}.bias"] = t(f"mapping/Dense{i}/bias") / math.sqrt(2.0)
    sd["synthesis.const"] = t("synthesis/4x4/Const/const")[0]
    for i, scope in enumerate(_layer_scopes(cfg)):
        dst = f"synthesis.convs.{i}"
        if i > 0:
            sd[f"{dst}.weight"] = t(f"{scope}/weight").permute(3, 2, 0, 1).contiguous()
        sd[f"{dst}.noise_strength"] = t(f"{scope}/Noise/weight")
        sd[f"{dst}.bias"] = t(f"{scope}/bias")
        sd[f"{dst}.style.weight"] = t(f"{scope}/StyleMod/weight").T.contiguous()
        sd[f"{dst}.style.bias"] = t(f"{scope}/StyleMod/bias")
    sd["synthesis.to_rgbs.0.weight"] = t("synthesis/ToRGB_lod0/weight").permute(3, 2, 0, 1).contiguous()
    sd["synthesis.to_rgbs.0.bias"] = t("synthesis/ToRGB_lod0/bias")
    noise = [t(f"synthesis/noise{i}") for i in range(cfg.num_ws)]
    G = build_generator(cfg, sd, FORMAT, has_w_avg=True, noise=noise, note="StyleGAN v1")
    assert isinstance(G, StyleGAN1)
    return G
