"""The original TensorFlow StyleGAN2 pickles (``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``).

StyleGAN (v1) pickles have the same container; they are told apart by their variables and
converted by :mod:`i2score.generator.checkpoints.tensorflow_v1`.

Read with the same restricted unpickler as NVIDIA's PyTorch pickles (only their variable arrays
are used) and converted the way stylegan2-ada-pytorch's ``legacy.py`` converts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from i2score.generator.checkpoints.build import build_generator
from i2score.generator.checkpoints.errors import CheckpointMismatchError, UnsupportedCheckpointError
from i2score.generator.checkpoints.nvidia import nvidia_config, nvidia_conv_names, nvidia_to_canonical
from i2score.generator.checkpoints.pickles import PickledObject
from i2score.generator.checkpoints.tensorflow_v1 import is_stylegan1_variables, tf_stylegan1_from_variables
from i2score.generator.network import GeneratorConfig, StyleGAN2
from i2score.generator.ops import make_fir_filter
from i2score.weights.unpickle import NDArrayRecord

__all__ = ["tf_from_pickle"]


def _tf_state(net: Any, what: str) -> Mapping[str, Any]:
    if not (isinstance(net, PickledObject) and net.qualname == "dnnlib.tflib.network.Network"
            and isinstance(net.state, Mapping)):
        raise UnsupportedCheckpointError(f"TensorFlow pickle: {what} is not a dnnlib.tflib Network")
    return net.state


def _tf_variables(net: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """All variables of a TF network and its components, ``component/.../name`` -> array."""
    state = _tf_state(net, prefix or "the network")
    out: dict[str, np.ndarray] = {}
    for name, value in state.get("variables") or []:
        arr = value.value if isinstance(value, NDArrayRecord) else value
        if isinstance(arr, np.generic):
            arr = np.asarray(arr)
        if not isinstance(arr, np.ndarray):
            raise UnsupportedCheckpointError(f"TensorFlow variable {prefix}{name} is not an array")
        out[f"{prefix}{name}"] = arr
    for name, comp in (state.get("components") or {}).items():
        out.update(_tf_variables(comp, f"{prefix}{name}/"))
    return out


def _merged_kwargs(state: Mapping[str, Any]) -> dict[str, Any]:
    """Static kwargs of a TF network and its components, merged (v1's G_style hands one set to
    both components, the mapping's adding ``dlatent_broadcast``); a key with two values is an
    error naming it."""
    merged: dict[str, Any] = {}
    parts = [("Gs", state.get("static_kwargs") or {})]
    for name, comp in (state.get("components") or {}).items():
        parts.append((name, _tf_state(comp, name).get("static_kwargs") or {}))
    for where, kw in parts:
        for key, value in dict(kw).items():
            if key in merged and merged[key] != value:
                raise UnsupportedCheckpointError(f"TensorFlow pickle: static kwarg {key!r} is {merged[key]!r} "
                                                 f"in one network and {value!r} in {where}")
            merged[key] = value
    return merged


# static_kwargs of a TF G_main -> what they mean for us (names as in NVIDIA's networks_stylegan2.py)
_TF_KNOWN_KWARGS = {
    "latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "mapping_layers",
    "label_fmaps", "mapping_fmaps", "mapping_nonlinearity", "mapping_lrmul", "w_avg_beta",
    "fmap_base", "fmap_max", "num_fp16_res", "conv_clamp", "architecture", "resample_kernel",
    "use_noise", "nonlinearity", "truncation_psi", "truncation_cutoff", "style_mixing_prob",
    "structure",
}


def tf_from_pickle(data: Any) -> StyleGAN2:
    # (G, D, Gs): Gs is the moving average, the one to use.
    net = data[2] if isinstance(data, tuple) and len(data) == 3 else data
    state = _tf_state(net, "Gs")
    variables = _tf_variables(net)
    if is_stylegan1_variables(variables):  # StyleGAN (v1): its own layers and kwargs
        if int(state.get("version", 0)) not in (2, 3, 4):
            raise UnsupportedCheckpointError(f"TensorFlow pickle version {state.get('version')} is not 2, 3 or 4")
        return tf_stylegan1_from_variables(_merged_kwargs(state), variables)
    if int(state.get("version", 0)) < 4:
        raise UnsupportedCheckpointError(f"TensorFlow pickle version {state.get('version')} < 4 is too old")
    kw = dict(state.get("static_kwargs") or {})
    unknown = sorted(set(kw) - _TF_KNOWN_KWARGS)
    if unknown:
        raise UnsupportedCheckpointError(f"TensorFlow pickle: unknown generator kwargs {unknown}")
    if any(k.startswith("ToRGB_lod") or "/ToRGB_lod" in k for k in variables):
        raise UnsupportedCheckpointError("TensorFlow pickle: progressive-growing ('orig') generator not supported")

    def get(name: str, default: Any) -> Any:
        val = kw.get(name, default)
        return default if val is None else val

    nv_kwargs = {
        "z_dim": get("latent_size", 512), "c_dim": get("label_size", 0), "w_dim": get("dlatent_size", 512),
        "img_resolution": get("resolution", 1024), "img_channels": get("num_channels", 3),
        "mapping_kwargs": {"num_layers": get("mapping_layers", 8), "layer_features": kw.get("mapping_fmaps"),
                           "activation": get("mapping_nonlinearity", "lrelu"),
                           "lr_multiplier": get("mapping_lrmul", 0.01)},
        "synthesis_kwargs": {"channel_base": get("fmap_base", 16384) * 2, "channel_max": get("fmap_max", 512),
                             "conv_clamp": kw.get("conv_clamp"), "architecture": get("architecture", "skip"),
                             "resample_filter": list(get("resample_kernel", [1, 3, 3, 1])),
                             "use_noise": get("use_noise", True), "activation": get("nonlinearity", "lrelu")},
    }
    cfg = nvidia_config(nv_kwargs, "nvidia-tf-pkl")
    use_noise = bool(nv_kwargs["synthesis_kwargs"]["use_noise"])
    tensors = _tf_to_nvidia_names(cfg, variables, use_noise)
    sd, noise, has_w_avg = nvidia_to_canonical(cfg, tensors, "nvidia-tf-pkl", use_noise)
    return build_generator(cfg, sd, "nvidia-tf-pkl", has_w_avg=has_w_avg, noise=noise)


def _tf_to_nvidia_names(cfg: GeneratorConfig, v: Mapping[str, np.ndarray], use_noise: bool) -> dict[str, Tensor]:
    """TF variable names/layouts -> NVIDIA PyTorch names/layouts (as their legacy.py maps them).

    TF convolution kernels are ``[kh, kw, in, out]`` (-> ``[out, in, kh, kw]``), dense weights
    ``[in, out]``; TF's modulation bias is stored without the +1 init; TF's up-sampling conv is
    a true transposed convolution, so its kernel is spatially flipped relative to PyTorch's.
    """
    def take(name: str) -> np.ndarray:
        if name not in v:
            raise CheckpointMismatchError("nvidia-tf-pkl", cfg, [name], [], {}, "TensorFlow variables")
        return np.asarray(v[name], dtype=np.float32)

    def conv(prefix: str, flip: bool = False) -> np.ndarray:
        k = take(f"{prefix}/weight")
        if flip:
            k = k[::-1, ::-1]
        return k.transpose(3, 2, 0, 1)

    out: dict[str, np.ndarray] = {}
    fir = make_fir_filter().numpy()
    if "dlatent_avg" in v:
        out["mapping.w_avg"] = take("dlatent_avg")
    for i in range(cfg.n_mapping):
        out[f"mapping.fc{i}.weight"] = take(f"mapping/Dense{i}/weight").T
        out[f"mapping.fc{i}.bias"] = take(f"mapping/Dense{i}/bias")
    out["synthesis.b4.const"] = take("synthesis/4x4/Const/const")[0]
    for i, name in enumerate(nvidia_conv_names(cfg)):
        r = cfg.conv_resolution(i)
        tf_name = f"synthesis/{r}x{r}/" + ("Conv" if i == 0 else "Conv0_up" if i % 2 else "Conv1")
        out[f"{name}.weight"] = conv(tf_name, flip=i % 2 == 1)
        out[f"{name}.bias"] = take(f"{tf_name}/bias")
        out[f"{name}.affine.weight"] = take(f"{tf_name}/mod_weight").T
        out[f"{name}.affine.bias"] = take(f"{tf_name}/mod_bias") + 1
        out[f"{name}.resample_filter"] = fir
        if use_noise:
            out[f"{name}.noise_strength"] = take(f"{tf_name}/noise_strength").reshape(())
            out[f"{name}.noise_const"] = take(f"synthesis/noise{i}")[0, 0]
    for k in range(cfg.log2_res - 1):
        r = 4 * 2**k
        tf_name = f"synthesis/{r}x{r}/ToRGB"
        out[f"synthesis.b{r}.resample_filter"] = fir
        out[f"synthesis.b{r}.torgb.weight"] = conv(tf_name)
        out[f"synthesis.b{r}.torgb.bias"] = take(f"{tf_name}/bias")
        out[f"synthesis.b{r}.torgb.affine.weight"] = take(f"{tf_name}/mod_weight").T
        out[f"synthesis.b{r}.torgb.affine.bias"] = take(f"{tf_name}/mod_bias") + 1
    # np.array, not np.ascontiguousarray: the latter turns 0-d arrays (noise_strength) into [1].
    return {k: torch.from_numpy(np.array(a, dtype=np.float32, order="C")) for k, a in out.items()}
