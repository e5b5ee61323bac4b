"""NVIDIA StyleGAN3 pickles (``networks_stylegan3.Generator``, configs T and R) -> :class:`StyleGAN3`.

Read with the same allow-list unpickler as every NVIDIA pickle (no code from the file runs). The
architecture is taken from where NVIDIA's modules keep it, never re-derived or defaulted: each
layer's ``is_torgb``, ``conv_kernel``, ``conv_clamp``, ``up_factor``/``down_factor``, ``padding``,
sizes, channel counts and ``out_sampling_rate`` attributes, its ``up_filter``/``down_filter``
buffers (None = identity) and ``magnitude_ema``; the input's ``size``, ``sampling_rate``,
``bandwidth`` and its ``freqs``/``phases``/``transform`` buffers; the synthesis network's
``layer_names`` and ``output_scale``; the mapping's layer count, activation and lr multiplier
(``bias_gain``). A value that is not there is an error naming it.

The family is ``stylegan3-r`` when the synthesis layers use 1x1 convolutions (config R), else
``stylegan3-t``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from i2score.generator.checkpoints.build import check_shapes
from i2score.generator.checkpoints.errors import CheckpointMismatchError, UnsupportedCheckpointError
from i2score.generator.checkpoints.nvidia import (
    _MISSING,
    _first,
    _module_tensors,
    _nvidia_generator_object,
    _nvidia_init_kwargs,
    _state_attr,
    _submodule,
)
from i2score.generator.checkpoints.pickles import PickledObject
from i2score.generator.stylegan3 import SG3LayerSpec, StyleGAN3, StyleGAN3Config

__all__ = ["is_stylegan3_pickle", "stylegan3_config", "stylegan3_from_pickle"]

FMT = "nvidia-pkl"


def is_stylegan3_pickle(data: Any, key: str = "G_ema") -> bool:
    """Whether the generator in an unpickled NVIDIA pickle is a StyleGAN3 one (its synthesis
    network has a Fourier-feature ``input`` instead of StyleGAN2's ``b4`` block)."""
    try:
        gen = _nvidia_generator_object(data, key)
    except UnsupportedCheckpointError:
        return False
    synthesis = _submodule(gen, "synthesis")
    return synthesis is not None and _submodule(synthesis, "input") is not None


def _need(obj: PickledObject | None, name: str, where: str) -> Any:
    return _first(FMT, f"{where}.{name}", (f"{where}.{name}", _state_attr(obj, name)))


def _pair(value: Any, name: str) -> tuple[int, int]:
    vals = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(vals) != 2:
        raise UnsupportedCheckpointError(f"{FMT}: {name} = {value!r} is not a (width, height) pair")
    return int(vals[0]), int(vals[1])


def _taps(t: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    f = t.get(key)
    if f is None:  # NVIDIA stores None for a 1-tap (identity) filter
        return (1,)
    if f.ndim not in (1, 2):
        raise UnsupportedCheckpointError(f"{FMT}: {key} has shape {list(f.shape)}, not a 1-D or 2-D filter")
    return tuple(f.shape)


def stylegan3_config(gen: PickledObject, tensors: Mapping[str, Tensor]) -> StyleGAN3Config:
    """The :class:`StyleGAN3Config` of a pickled ``networks_stylegan3.Generator``."""
    kw = _nvidia_init_kwargs(gen)

    def top(name: str) -> Any:
        return _first(FMT, name, (f"init kwarg {name}", kw.get(name, _MISSING)),
                      (f"Generator.{name}", _state_attr(gen, name)))

    if int(top("c_dim") or 0) > 0:
        raise UnsupportedCheckpointError(f"{FMT}: conditional StyleGAN3 (c_dim={top('c_dim')}) is not supported")
    if int(top("img_channels")) != 3:
        raise UnsupportedCheckpointError(f"{FMT}: img_channels={top('img_channels')} (only RGB is supported)")
    synthesis = _submodule(gen, "synthesis")
    mapping = _submodule(gen, "mapping")
    assert synthesis is not None
    inp = _submodule(synthesis, "input")
    names = [str(n) for n in _need(synthesis, "layer_names", "synthesis")]
    layers = []
    for name in names:
        mod = _submodule(synthesis, name)
        if mod is None:
            raise CheckpointMismatchError(FMT, None, [f"synthesis.{name}"], [], {}, "StyleGAN3 layer")
        where = f"synthesis.{name}"
        pad = [int(p) for p in _need(mod, "padding", where)]
        if len(pad) != 4:
            raise UnsupportedCheckpointError(f"{FMT}: {where}.padding = {pad} is not [x0, x1, y0, y1]")
        clamp = _need(mod, "conv_clamp", where)
        layers.append(SG3LayerSpec(
            name=name, in_channels=int(_need(mod, "in_channels", where)),
            out_channels=int(_need(mod, "out_channels", where)),
            in_size=_pair(_need(mod, "in_size", where), f"{where}.in_size"),
            out_size=_pair(_need(mod, "out_size", where), f"{where}.out_size"),
            out_sampling_rate=float(_need(mod, "out_sampling_rate", where)),
            conv_kernel=int(_need(mod, "conv_kernel", where)), is_torgb=bool(_need(mod, "is_torgb", where)),
            up=int(_need(mod, "up_factor", where)), down=int(_need(mod, "down_factor", where)),
            padding=(pad[0], pad[1], pad[2], pad[3]),
            up_taps=_taps(tensors, f"{where}.up_filter"), down_taps=_taps(tensors, f"{where}.down_filter"),
            conv_clamp=None if clamp is None else float(clamp)))
    kernels = {spec.conv_kernel for spec in layers if not spec.is_torgb}
    family = "stylegan3-r" if kernels == {1} else "stylegan3-t"
    fcs = [(n, m) for n, m in ((mapping.state.get("_modules") or {}) if mapping is not None else {}).items()
           if isinstance(m, PickledObject) and str(n).startswith("fc")]
    for n, m in fcs:
        act = _need(m, "activation", f"mapping.{n}")
        if act != "lrelu":
            raise UnsupportedCheckpointError(f"{FMT}: mapping.{n} activation {act!r} (only 'lrelu')")
    lr_muls = {float(_need(m, "bias_gain", f"mapping.{n}")) for n, m in fcs}
    if len(lr_muls) != 1:
        raise UnsupportedCheckpointError(f"{FMT}: the mapping layers' lr multipliers differ or are absent: {lr_muls}")
    affine = _submodule(inp, "affine") if inp is not None else None
    if float(_need(affine, "bias_gain", "synthesis.input.affine")) != 1.0:
        raise UnsupportedCheckpointError(f"{FMT}: synthesis.input.affine has an lr multiplier != 1")
    return StyleGAN3Config(
        family=family, resolution=int(top("img_resolution")), z_dim=int(top("z_dim")), w_dim=int(top("w_dim")),
        n_mapping=int(_need(mapping, "num_layers", "mapping")), mapping_lr_mul=lr_muls.pop(),
        input_channels=int(_need(inp, "channels", "synthesis.input")),
        input_size=_pair(_need(inp, "size", "synthesis.input"), "synthesis.input.size"),
        input_sampling_rate=float(_need(inp, "sampling_rate", "synthesis.input")),
        input_bandwidth=float(_need(inp, "bandwidth", "synthesis.input")),
        output_scale=float(_need(synthesis, "output_scale", "synthesis")), layers=tuple(layers))


def stylegan3_from_pickle(data: Any, key: str = "G_ema") -> StyleGAN3:
    """Build a :class:`StyleGAN3` from an unpickled NVIDIA pickle (restricted unpickler output).

    Raises:
        UnsupportedCheckpointError: a setting is missing (named) or not supported.
        CheckpointMismatchError: tensor names or shapes differ from what the settings imply.
    """
    gen = _nvidia_generator_object(data, key)
    t = _module_tensors(gen)
    cfg = stylegan3_config(gen, t)
    G = StyleGAN3(cfg)
    sd: dict[str, Tensor] = {}
    for i in range(cfg.n_mapping):
        for part in ("weight", "bias"):
            if f"mapping.fc{i}.{part}" in t:
                sd[f"mapping.fcs.{i}.{part}"] = t[f"mapping.fc{i}.{part}"]
    has_w_avg = "mapping.w_avg" in t
    sd["w_avg"] = t["mapping.w_avg"] if has_w_avg else torch.zeros(cfg.w_dim)
    ours_to_theirs = {"synthesis.input.weight": "synthesis.input.weight",
                      "synthesis.input.affine.weight": "synthesis.input.affine.weight",
                      "synthesis.input.affine.bias": "synthesis.input.affine.bias",
                      "synthesis.input.transform": "synthesis.input.transform",
                      "synthesis.input.freqs": "synthesis.input.freqs",
                      "synthesis.input.phases": "synthesis.input.phases"}
    for i, spec in enumerate(cfg.layers):
        for part in ("weight", "bias", "affine.weight", "affine.bias", "magnitude_ema", "up_filter", "down_filter"):
            ours_to_theirs[f"synthesis.layers.{i}.{part}"] = f"synthesis.{spec.name}.{part}"
    for ours, theirs in ours_to_theirs.items():
        if theirs in t:
            sd[ours] = t[theirs]
        elif theirs.endswith("_filter"):
            sd[ours] = torch.ones(1)  # None in the pickle: the identity filter
    expected = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    theirs_used = set(ours_to_theirs.values()) | {f"mapping.fc{i}.{p}" for i in range(cfg.n_mapping)
                                                  for p in ("weight", "bias")} | {"mapping.w_avg"}
    unexpected = sorted(set(t) - theirs_used)
    check_shapes(FMT, None, {k: tuple(v.shape) for k, v in sd.items()}, expected,
                 f"{cfg.family}; unexpected in the pickle: {unexpected[:8]}" if unexpected else cfg.family)
    if unexpected:
        raise CheckpointMismatchError(FMT, None, [], unexpected, {}, cfg.family)
    G.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    G.has_w_avg = has_w_avg
    G.checkpoint_format = FMT
    return G
