"""NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles (``G_ema`` of a StyleGAN2 generator).

These pickles embed the Python source of NVIDIA's network modules and *execute* it on a normal
``pickle.load``; we read them with :func:`~i2score.generator.checkpoints.pickles.restricted_pickle_load`,
which records the modules as inert :class:`PickledObject` trees, then map NVIDIA's parameter
names to ours. The config and name mapping are shared with the TensorFlow pickles.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from i2score.generator.checkpoints.build import build_generator, check_shapes
from i2score.generator.checkpoints.errors import UnsupportedCheckpointError
from i2score.generator.checkpoints.pickles import PickledObject, restricted_pickle_load
from i2score.generator.network import GeneratorConfig, StyleGAN2
from i2score.generator.ops import make_fir_filter
from i2score.weights.unpickle import NDArrayRecord

__all__ = ["nvidia_config", "nvidia_conv_names", "nvidia_from_pickle", "nvidia_to_canonical", "read_nvidia_pickle",
           "resolve_nvidia_kwargs"]


def _module_tensors(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Parameters and buffers of a pickled module tree under their dotted names."""
    if not isinstance(obj, PickledObject) or not isinstance(obj.state, Mapping):
        raise UnsupportedCheckpointError(f"expected a pickled torch module at {prefix or 'top level'!r}")
    out: dict[str, Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (obj.state.get(group) or {}).items():
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise UnsupportedCheckpointError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[f"{prefix}{name}"] = t
    for name, sub in (obj.state.get("_modules") or {}).items():
        if sub is not None:
            out.update(_module_tensors(sub, f"{prefix}{name}."))
    return out


def _submodule(obj: PickledObject, name: str) -> PickledObject | None:
    mods = obj.state.get("_modules") if isinstance(obj.state, Mapping) else None
    sub = (mods or {}).get(name)
    return sub if isinstance(sub, PickledObject) else None


_NV_GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels",
                      "mapping_kwargs", "synthesis_kwargs")


def read_nvidia_pickle(path: str | os.PathLike[str], key: str = "G_ema") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(init_kwargs, tensors)`` of the generator ``key`` in an NVIDIA network pickle.

    Read with the restricted unpickler: ``init_kwargs`` as NVIDIA's ``Generator`` received them
    (nested dicts), ``tensors`` its parameters and buffers under NVIDIA's dotted names
    (``synthesis.b4.conv1.weight``, ``mapping.w_avg``, ...).
    """
    with open(path, "rb") as f:
        data = restricted_pickle_load(f, context=f"NVIDIA pickle {Path(path).name}")
    gen = _nvidia_generator_object(data, key)
    return _nvidia_init_kwargs(gen), _module_tensors(gen)


def _nvidia_generator_object(data: Any, key: str = "G_ema") -> PickledObject:
    if isinstance(data, Mapping):
        if key not in data:
            raise UnsupportedCheckpointError(f"NVIDIA pickle has no {key!r} (keys: {sorted(map(str, data))})")
        gen = data[key]
    else:
        gen = data
    if not isinstance(gen, PickledObject) or gen.class_name != "Generator":
        raise UnsupportedCheckpointError(f"{key} in the pickle is {gen!r}, not a Generator")
    return gen


def _nvidia_init_kwargs(gen: PickledObject) -> dict[str, Any]:
    state = gen.state if isinstance(gen.state, Mapping) else {}
    args = tuple(state.get("_init_args") or ())
    kwargs = dict(state.get("_init_kwargs") or {})
    # Positional arguments, if any were used: usually none or a few, so the zip is meant to stop
    # at the shorter of the two.
    kwargs.update(zip(_NV_GENERATOR_ARGS, args, strict=False))
    return _plain(kwargs)


def _plain(obj: Any) -> Any:
    """EasyDicts and numpy scalars -> plain dicts and Python numbers (JSON-able)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, NDArrayRecord) and obj.value is not None:
        return obj.value.tolist()
    return obj


_MISSING = object()


def _state_attr(obj: PickledObject | None, name: str) -> Any:
    """Attribute ``name`` of a pickled module (what its forward reads), or ``_MISSING``."""
    if obj is None or not isinstance(obj.state, Mapping) or name not in obj.state:
        return _MISSING
    return _plain(obj.state[name])


def _uniform(fmt: str, name: str, values: list[tuple[str, Any]]) -> Any:
    """The one value every layer in ``values`` (``[(layer, value)]``) holds, or ``_MISSING``."""
    found = [(layer, v) for layer, v in values if v is not _MISSING]
    if not found:
        return _MISSING
    if len(found) != len(values):
        absent = [layer for layer, v in values if v is _MISSING]
        raise UnsupportedCheckpointError(f"{fmt}: {name} is stored on some layers but not on {absent[:4]}")
    distinct = {repr(v) for _, v in found}
    if len(distinct) > 1:
        raise UnsupportedCheckpointError(
            f"{fmt}: layers differ in {name} ({', '.join(f'{layer}={v!r}' for layer, v in found[:6])}); "
            "our network uses one value for all layers")
    return found[0][1]


def _first(fmt: str, name: str, *candidates: tuple[str, Any]) -> Any:
    """First candidate ``(where, value)`` that is not ``_MISSING``; else an error naming ``name``."""
    for _where, value in candidates:
        if value is not _MISSING:
            return value
    places = ", ".join(where for where, _ in candidates)
    raise UnsupportedCheckpointError(f"{fmt}: cannot find the generator's {name!r} (looked in {places})")


def resolve_nvidia_kwargs(gen: PickledObject, kw: Mapping[str, Any], tensors: Mapping[str, Tensor],
                          fmt: str = "nvidia-pkl") -> dict[str, Any]:
    """Every architecture argument of a pickled StyleGAN2 ``Generator``, found where the code keeps it.

    stylegan2-ada-pytorch's ``Generator`` takes ``synthesis_kwargs={...}`` (nested); the stylegan3
    repository's ``networks_stylegan2.Generator`` takes them as top-level keyword arguments
    (``**synthesis_kwargs``), and anything the training script left out takes that code's default
    (``conv_clamp=256`` there, ``None`` in stylegan2-ada-pytorch). Defaults are never assumed: a
    value comes from the attribute the pickled module's forward actually reads (``conv_clamp``,
    ``activation``, ``use_noise`` on every layer, ``architecture`` on every block, the mapping
    layers' ``activation`` and ``bias_gain`` = lr multiplier), else from the init kwargs (top level,
    then nested), else from the tensors where they decide it (noise buffers present = noise used;
    resample filters, checked later). ``channel_base`` and ``channel_max`` exist only as init
    kwargs. Returns the stylegan2-ada layout (``mapping_kwargs``/``synthesis_kwargs`` nested),
    complete.

    Raises:
        UnsupportedCheckpointError: a value is in none of those places (the message names it), or
            layers disagree on a value our network shares.
    """
    top = dict(kw)
    sk = dict(top.get("synthesis_kwargs") or {})
    mk = dict(top.get("mapping_kwargs") or {})
    synthesis = _submodule(gen, "synthesis")
    mapping = _submodule(gen, "mapping")
    blocks = [(n, b) for n, b in ((synthesis.state.get("_modules") or {}) if synthesis is not None else {}).items()
              if isinstance(b, PickledObject)]
    layers = [(f"{bn}.{ln}", sub) for bn, b in blocks for ln in ("conv0", "conv1")
              if (sub := _submodule(b, ln)) is not None]
    torgbs = [(f"{bn}.torgb", sub) for bn, b in blocks if (sub := _submodule(b, "torgb")) is not None]
    fcs = [(n, m) for n, m in ((mapping.state.get("_modules") or {}) if mapping is not None else {}).items()
           if isinstance(m, PickledObject) and str(n).startswith("fc")]

    def kwarg(name: str, nested: Mapping[str, Any], nested_name: str) -> list[tuple[str, Any]]:
        return [(f"init kwarg {name}", top.get(name, _MISSING)),
                (f"{nested_name}[{name!r}]", nested.get(name, _MISSING))]

    def layer_attr(name: str, mods: list[tuple[str, PickledObject]], where: str) -> tuple[str, Any]:
        return (f"{where}.{name}", _uniform(fmt, name, [(n, _state_attr(m, name)) for n, m in mods]))

    out: dict[str, Any] = {}
    for name in ("z_dim", "w_dim", "img_resolution", "img_channels", "c_dim"):
        out[name] = _first(fmt, name, (f"init kwarg {name}", top.get(name, _MISSING)),
                           (f"Generator.{name}", _state_attr(gen, name)))
    synth: dict[str, Any] = {}
    for name in ("channel_base", "channel_max"):
        synth[name] = _first(fmt, name, *kwarg(name, sk, "synthesis_kwargs"))
    synth["conv_clamp"] = _first(fmt, "conv_clamp", layer_attr("conv_clamp", layers + torgbs, "layers"),
                                 *kwarg("conv_clamp", sk, "synthesis_kwargs"))
    synth["architecture"] = _first(fmt, "architecture", layer_attr("architecture", blocks, "blocks"),
                                   *kwarg("architecture", sk, "synthesis_kwargs"))
    synth["activation"] = _first(fmt, "activation", layer_attr("activation", layers, "layers"),
                                 *kwarg("activation", sk, "synthesis_kwargs"))
    has_noise = any(k.endswith(".noise_const") for k in tensors)
    synth["use_noise"] = _first(fmt, "use_noise", layer_attr("use_noise", layers, "layers"),
                                *kwarg("use_noise", sk, "synthesis_kwargs"), ("noise_const buffers", has_noise))
    # The filter itself is in every layer's resample_filter buffer, which nvidia_to_canonical checks.
    rf = _first(fmt, "resample_filter", *kwarg("resample_filter", sk, "synthesis_kwargs"),
                ("resample_filter buffers", None))
    if rf is not None:
        synth["resample_filter"] = rf
    mapk: dict[str, Any] = {}
    mapk["num_layers"] = _first(fmt, "mapping num_layers", ("MappingNetwork.num_layers",
                                                             _state_attr(mapping, "num_layers")),
                                ("mapping_kwargs['num_layers']", mk.get("num_layers", _MISSING)))
    mapk["activation"] = _first(fmt, "mapping activation", layer_attr("activation", fcs, "mapping"),
                                ("mapping_kwargs['activation']", mk.get("activation", _MISSING)))
    # FullyConnectedLayer keeps lr_multiplier as bias_gain (weight_gain also divides by sqrt(fan-in)).
    mapk["lr_multiplier"] = _first(fmt, "mapping lr_multiplier", layer_attr("bias_gain", fcs, "mapping"),
                                   ("mapping_kwargs['lr_multiplier']", mk.get("lr_multiplier", _MISSING)))
    # None means w_dim in NVIDIA's code; the fc weight shapes are checked against it later.
    mapk["layer_features"] = mk.get("layer_features")
    out["mapping_kwargs"] = mapk
    out["synthesis_kwargs"] = synth
    return out


def _required(fmt: str, kw: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in kw:
        raise UnsupportedCheckpointError(f"{fmt}: the generator's {name!r} is missing ({where})")
    return kw[name]


def nvidia_config(kw: Mapping[str, Any], fmt: str = "nvidia-pkl") -> GeneratorConfig:
    """Our config from complete NVIDIA ``Generator`` kwargs (stylegan2-ada layout: nested
    ``mapping_kwargs``/``synthesis_kwargs``, as :func:`resolve_nvidia_kwargs` returns them);
    refuse what our network cannot run. A missing value is an error naming it, never a default."""
    mk = dict(kw.get("mapping_kwargs") or {})
    sk = dict(kw.get("synthesis_kwargs") or {})
    problems = []
    if int(kw.get("c_dim", 0) or 0) > 0:
        problems.append(f"conditional generator (c_dim={kw.get('c_dim')}): class labels are not supported")
    if int(_required(fmt, kw, "img_channels", "init kwargs")) != 3:
        problems.append(f"img_channels={kw.get('img_channels')} (only RGB generators are supported)")
    architecture = _required(fmt, sk, "architecture", "synthesis kwargs")
    if architecture != "skip":
        problems.append(f"synthesis architecture {architecture!r} (only 'skip', the "
                        "StyleGAN2 config-e/f generator, is supported)")
    for name, val in (("mapping activation", _required(fmt, mk, "activation", "mapping kwargs")),
                      ("synthesis activation", _required(fmt, sk, "activation", "synthesis kwargs"))):
        if val != "lrelu":
            problems.append(f"{name} {val!r} (only 'lrelu')")
    w_dim = int(_required(fmt, kw, "w_dim", "init kwargs"))
    if mk.get("layer_features") not in (None, w_dim):
        problems.append(f"mapping layer_features={mk.get('layer_features')} != w_dim")
    rf = sk.get("resample_filter", [1, 3, 3, 1])  # absent: the buffers decide (checked on load)
    if list(rf) != [1, 3, 3, 1]:
        problems.append(f"resample_filter {rf} (only [1, 3, 3, 1])")
    if problems:
        raise UnsupportedCheckpointError(f"{fmt}: cannot load this generator: " + "; ".join(problems))
    channel_base = int(_required(fmt, sk, "channel_base", "synthesis kwargs"))
    cm = channel_base / 16384
    conv_clamp = _required(fmt, sk, "conv_clamp", "synthesis kwargs")
    return GeneratorConfig(
        resolution=int(_required(fmt, kw, "img_resolution", "init kwargs")),
        channel_multiplier=int(cm) if cm.is_integer() else cm,
        channel_max=int(_required(fmt, sk, "channel_max", "synthesis kwargs")),
        n_mapping=int(_required(fmt, mk, "num_layers", "mapping kwargs")),
        w_dim=w_dim,
        z_dim=int(_required(fmt, kw, "z_dim", "init kwargs")),
        mapping_lr_mul=float(_required(fmt, mk, "lr_multiplier", "mapping kwargs")),
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
    )


def nvidia_to_canonical(cfg: GeneratorConfig, t: Mapping[str, Tensor], fmt: str,
                         use_noise: bool = True) -> tuple[dict[str, Tensor], list[Tensor], bool]:
    """NVIDIA names -> ours. Returns ``(state_dict, noise_const maps, has_w_avg)``."""
    expected = _nvidia_state_shapes(cfg, use_noise=use_noise, has_w_avg="mapping.w_avg" in t)
    check_shapes(fmt, cfg, {k: tuple(v.shape) for k, v in t.items()}, expected)
    fir = make_fir_filter()
    for key, value in t.items():
        if key.endswith("resample_filter") and not torch.allclose(value.float(), fir):
            raise UnsupportedCheckpointError(f"{fmt}: {key} is not the normalised [1, 3, 3, 1] filter")

    out: dict[str, Tensor] = {}
    for i in range(cfg.n_mapping):
        out[f"mapping.fcs.{i}.weight"] = t[f"mapping.fc{i}.weight"]
        out[f"mapping.fcs.{i}.bias"] = t[f"mapping.fc{i}.bias"]
    has_w_avg = "mapping.w_avg" in t
    out["w_avg"] = t["mapping.w_avg"] if has_w_avg else torch.zeros(cfg.w_dim)
    out["synthesis.const"] = t["synthesis.b4.const"]
    noise: list[Tensor] = []
    for i, name in enumerate(nvidia_conv_names(cfg)):
        dst = f"synthesis.convs.{i}"
        for ours, theirs in (("weight", "weight"), ("bias", "bias"), ("affine.weight", "affine.weight"),
                             ("affine.bias", "affine.bias")):
            out[f"{dst}.{ours}"] = t[f"{name}.{theirs}"]
        r = cfg.conv_resolution(i)
        if use_noise:
            out[f"{dst}.noise_strength"] = t[f"{name}.noise_strength"]
            noise.append(t[f"{name}.noise_const"].reshape(1, 1, r, r))
        else:  # use_noise=False: the layer has no noise input at all
            out[f"{dst}.noise_strength"] = torch.zeros(())
            noise.append(torch.zeros(1, 1, r, r))
    for k in range(cfg.log2_res - 1):
        r = 4 * 2**k
        for part in ("weight", "bias", "affine.weight", "affine.bias"):
            out[f"synthesis.to_rgbs.{k}.{part}"] = t[f"synthesis.b{r}.torgb.{part}"]
    return out, noise, has_w_avg


def nvidia_conv_names(cfg: GeneratorConfig) -> list[str]:
    """NVIDIA layer names in our conv order: b4.conv1, b8.conv0, b8.conv1, b16.conv0, ..."""
    names = ["synthesis.b4.conv1"]
    for j in range(cfg.log2_res - 2):
        r = 8 * 2**j
        names += [f"synthesis.b{r}.conv0", f"synthesis.b{r}.conv1"]
    return names


def _nvidia_state_shapes(cfg: GeneratorConfig, *, use_noise: bool = True,
                         has_w_avg: bool = True) -> dict[str, tuple[int, ...]]:
    """Every parameter/buffer of NVIDIA's skip ``Generator`` (c_dim=0) for ``cfg``."""
    c, w = cfg.channels, cfg.w_dim
    shapes: dict[str, tuple[int, ...]] = {}
    shapes["synthesis.b4.const"] = (c(4), 4, 4)
    for res in (4 * 2**k for k in range(cfg.log2_res - 1)):
        b = f"synthesis.b{res}"
        shapes[f"{b}.resample_filter"] = (4, 4)
        layers = [("conv1", c(4), False)] if res == 4 else [("conv0", c(res // 2), True), ("conv1", c(res), False)]
        for name, cin, _up in layers:
            p = f"{b}.{name}"
            shapes[f"{p}.weight"] = (c(res), cin, 3, 3)
            shapes[f"{p}.bias"] = (c(res),)
            shapes[f"{p}.affine.weight"] = (cin, w)
            shapes[f"{p}.affine.bias"] = (cin,)
            shapes[f"{p}.resample_filter"] = (4, 4)
            if use_noise:
                shapes[f"{p}.noise_strength"] = ()
                shapes[f"{p}.noise_const"] = (res, res)
        shapes[f"{b}.torgb.weight"] = (3, c(res), 1, 1)
        shapes[f"{b}.torgb.bias"] = (3,)
        shapes[f"{b}.torgb.affine.weight"] = (c(res), w)
        shapes[f"{b}.torgb.affine.bias"] = (c(res),)
    dims = [cfg.z_dim] + [w] * cfg.n_mapping
    for i in range(cfg.n_mapping):
        shapes[f"mapping.fc{i}.weight"] = (dims[i + 1], dims[i])
        shapes[f"mapping.fc{i}.bias"] = (dims[i + 1],)
    if has_w_avg:
        shapes["mapping.w_avg"] = (w,)
    return shapes


def nvidia_from_pickle(data: Any, key: str = "G_ema") -> StyleGAN2:
    gen = _nvidia_generator_object(data, key)
    synthesis = _submodule(gen, "synthesis")
    if synthesis is None or _submodule(synthesis, "b4") is None:
        names = sorted((synthesis.state.get("_modules") or {}) if synthesis is not None else [])
        raise UnsupportedCheckpointError(
            "NVIDIA pickle: the generator's synthesis network has no StyleGAN2 blocks (b4, b8, ...); "
            f"found {names[:8]}. (StyleGAN3 generators load through load_generator_file.)")
    tensors = _module_tensors(gen)
    kw = resolve_nvidia_kwargs(gen, _nvidia_init_kwargs(gen), tensors)
    cfg = nvidia_config(kw)
    use_noise = bool(kw["synthesis_kwargs"]["use_noise"])
    sd, noise, has_w_avg = nvidia_to_canonical(cfg, tensors, "nvidia-pkl", use_noise)
    return build_generator(cfg, sd, "nvidia-pkl", has_w_avg=has_w_avg, noise=noise)
