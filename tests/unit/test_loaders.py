"""Checkpoint loaders: native, rosinality, NVIDIA (PyTorch and TensorFlow) pickles, safety.

How the NVIDIA numbers in ``fixtures/nvidia_small.npz`` were obtained (once, at development
time, outside this repository; none of NVIDIA's code is in the repo or in the fixture):

* NVlabs/stylegan2-ada-pytorch (commit d72cc7d) was checked out to a temporary directory and its
  ``training.networks.Generator`` built on CPU with z_dim=48, w_dim=64, img_resolution=32,
  mapping num_layers=2, channel_base=512, channel_max=32, conv_clamp=0.6 (small, so clamping is
  active), num_fp16_res=0, architecture='skip'; noise strengths, biases, affine biases and
  ``mapping.w_avg`` were randomised so every term matters.
* It was pickled exactly as their training loop does (``pickle.dump(dict(G_ema=..., ...))`` with
  their ``torch_utils.persistence`` active) and loaded with our loader: max abs difference to
  their output <= 1.0e-6 (``synthesis(w, noise_mode='const')``), 9.5e-7 (``noise_mode='none'``),
  5.1e-7 (mapping), 1.0e-6 (``G(z)``); with conv_clamp=256/None <= 9.2e-6 on outputs up to |14|.
  A 64x64, z=w=512, 8-layer mapping, channel_base=16384/max 256 net: <= 3.6e-5 (w) / 5.7e-5 (z)
  on outputs up to |23|. (The last digits vary with the CPU thread count.)
* TensorFlow path: a TF-layout network stub made from that 64x64 net was converted by their
  ``legacy.convert_tf_generator`` and by our TF loader: the same <= 3.6e-5 / 5.7e-5.
* rosinality/stylegan2-pytorch ``model.Generator`` (sizes 32/128/256, channel_multiplier 1/2)
  with reference CPU ops: our ``rosinality_state_shapes`` equals their state_dict key order and
  shapes, loading matches their forward to <= 5.9e-5, and exporting back is bitwise identical.

The fixture stores only data: their parameter/buffer tensors under their names (``tensor/...``),
the generator's init_kwargs as JSON, fixed ``z``/``w`` and their output images. The tests below
rebuild an NVIDIA-layout pickle from it with our own small persistent-object writer.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from i2score.generator.checkpoints.load import (
    CheckpointMismatchError,
    PickledObject,
    UnsafePickleError,
    UnsupportedCheckpointError,
    detect_format,
    load_generator,
    load_generator_file,
    nvidia_noise_const,
    read_nvidia_pickle,
    restricted_pickle_load,
    save_generator,
    save_rosinality,
)
from i2score.generator.network import GeneratorConfig, StyleGAN2
from i2score.generator.registry import ChecksumMismatchError, sha256_file

FIXTURE = Path(__file__).parents[1] / "fixtures" / "nvidia_small.npz"
TOL = 1e-4


# --------------------------------------------------------------------------------------------
# helpers


def _small_G(seed: int = 3, **kw: Any) -> StyleGAN2:
    """A tiny generator with non-trivial biases, noise strengths and w_avg."""
    cfg = GeneratorConfig(**{"resolution": 32, "channel_multiplier": 0.125, "channel_max": 128,
                             "n_mapping": 3, "w_dim": 48, "z_dim": 40, **kw})
    G = StyleGAN2(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.copy_(torch.randn((), generator=gen))
            elif name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
        G.w_avg.copy_(torch.randn(cfg.w_dim, generator=gen))
    G.has_w_avg = True
    return G


def _render(G: StyleGAN2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(2, G.num_ws, G.w_dim, generator=gen)
    with torch.no_grad():
        return G.synthesize(w, G.random_noise(2, seed + 1))


@contextlib.contextmanager
def _fake_modules(**modules: types.ModuleType) -> Iterator[None]:
    """Temporarily register modules so ``pickle`` can write globals by those names."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def _nvidia_fakes(marker: Path | None = None) -> dict[str, types.ModuleType]:
    """Stand-ins for ``torch_utils.persistence`` and ``dnnlib.util`` (names only).

    The fake reconstructor behaves like NVIDIA's in the way that matters: it *executes*
    ``meta['module_src']``. A plain ``pickle.load`` with these modules present therefore runs
    the embedded source; our loader must not.
    """
    tu = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta: dict[str, Any]) -> Any:
        exec(meta["module_src"], {})  # what NVIDIA's _src_to_module does
        return meta

    # pickle writes functions and classes by (module, qualname): make those NVIDIA's.
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]
    tu.persistence = persistence  # type: ignore[attr-defined]
    dn = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):  # noqa: D401 - same name/module as NVIDIA's, data only
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict  # type: ignore[attr-defined]
    dn.util = util  # type: ignore[attr-defined]
    return {"torch_utils": tu, "torch_utils.persistence": persistence, "dnnlib": dn, "dnnlib.util": util}


class _PersistentModule(torch.nn.Module):
    """Pickles like a module decorated with NVIDIA's ``@persistence.persistent_class``:
    ``(_reconstruct_persistent_obj, (meta,))`` with meta = type/version/module_src/class_name/state."""

    weight_gain: np.float64  # set on FullyConnectedLayer stand-ins only, like NVIDIA's

    def __init__(self, class_name: str, module_src: str) -> None:
        super().__init__()
        self._pclass = class_name
        self._psrc = module_src
        self._init_args: tuple[Any, ...] = ()
        self._init_kwargs: dict[str, Any] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_pclass", "_psrc")}
        meta = dict(type="class", version=6, module_src=self._psrc, class_name=self._pclass, state=state)
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,))


_NV_CLASSES = {"synthesis": "SynthesisNetwork", "mapping": "MappingNetwork", "conv0": "SynthesisLayer",
               "conv1": "SynthesisLayer", "torgb": "ToRGBLayer", "affine": "FullyConnectedLayer"}


def _nvidia_module_tree(tensors: dict[str, np.ndarray], init_kwargs: dict[str, Any], module_src: str,
                        easydict: type) -> _PersistentModule:
    """Rebuild NVIDIA's module tree (names, params vs buffers) from the fixture tensors."""
    root = _PersistentModule("Generator", module_src)
    root._init_kwargs = {k: easydict(v) if isinstance(v, dict) else v for k, v in init_kwargs.items()}
    sk, mk = init_kwargs.get("synthesis_kwargs", {}), init_kwargs.get("mapping_kwargs", {})
    for dotted, arr in tensors.items():
        *path, leaf = dotted.split(".")
        mod = root
        for part in path:
            if part not in mod._modules:
                cls = _NV_CLASSES.get(part) or ("SynthesisBlock" if part[0] == "b" else "FullyConnectedLayer")
                child = _PersistentModule(cls, module_src)
                if cls == "FullyConnectedLayer":  # numpy scalars appear in the real state too
                    child.weight_gain = np.float64(0.125)
                mod.add_module(part, child)
            mod = mod._modules[part]  # type: ignore[assignment]
        _nvidia_layer_attrs(path, mod, sk, mk)
        t = torch.from_numpy(np.array(arr))
        if leaf in ("resample_filter", "noise_const", "w_avg"):
            mod.register_buffer(leaf, t)
        else:
            mod.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))
    return root


def _nvidia_layer_attrs(path: list[str], mod: torch.nn.Module, sk: dict[str, Any], mk: dict[str, Any]) -> None:
    """The attributes stylegan2-ada-pytorch's modules keep from their init kwargs (with that code's
    defaults), which the loader reads before the kwargs: what their forward actually uses."""
    kind = getattr(mod, "_pclass", "")
    attrs: dict[str, Any] = {}
    if kind == "SynthesisLayer":
        attrs = {"conv_clamp": sk.get("conv_clamp"), "activation": sk.get("activation", "lrelu"),
                 "use_noise": sk.get("use_noise", True)}
    elif kind == "ToRGBLayer":
        attrs = {"conv_clamp": sk.get("conv_clamp")}
    elif kind == "SynthesisBlock":
        attrs = {"architecture": sk.get("architecture", "skip")}
    elif kind == "FullyConnectedLayer" and path[:1] == ["mapping"]:
        attrs = {"activation": mk.get("activation", "lrelu"), "bias_gain": mk.get("lr_multiplier", 0.01)}
    elif kind == "MappingNetwork":
        attrs = {"num_layers": mk.get("num_layers", 8)}
    for name, value in attrs.items():
        setattr(mod, name, value)


@pytest.fixture(scope="module")
def nv() -> dict[str, Any]:
    data = np.load(FIXTURE)
    return {
        "tensors": {k[len("tensor/"):]: data[k] for k in data.files if k.startswith("tensor/")},
        "init_kwargs": json.loads(str(data["init_kwargs"])),
        **{k: torch.from_numpy(data[k]) for k in ("z", "w", "img_w_const", "img_w_none", "ws_z", "img_z_const")},
    }


def _write_nvidia_pickle(path: Path, nv: dict[str, Any], *, protocol: int = 4, module_src: str = "pass",
                         init_kwargs: dict[str, Any] | None = None, extra: Any = None) -> None:
    fakes = _nvidia_fakes()
    with _fake_modules(**fakes):
        G = _nvidia_module_tree(nv["tensors"], init_kwargs or nv["init_kwargs"], module_src,
                                fakes["dnnlib.util"].EasyDict)
        data = dict(training_set_kwargs=dict(resolution=32), G=G, D=None, G_ema=G, augment_pipe=None)
        if extra is not None:
            data["extra"] = extra
        path.write_bytes(pickle.dumps(data, protocol=protocol))


# --------------------------------------------------------------------------------------------
# native format


def test_native_round_trip(tmp_path: Path) -> None:
    G = _small_G()
    G.checkpoint_noise = G.random_noise(1, 7)
    path = tmp_path / "g.pt"
    save_generator(G, path)
    assert detect_format(path) == "torch-save"
    H = load_generator(str(path))
    assert H.cfg == G.cfg and H.has_w_avg and H.checkpoint_format == "i2score-pt"
    a, b = G.state_dict(), H.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert G.checkpoint_noise is not None and H.checkpoint_noise is not None
    assert all(torch.equal(x, y) for x, y in zip(G.checkpoint_noise, H.checkpoint_noise, strict=True))
    assert torch.equal(_render(G), _render(H))
    assert H.weights_sha256 == sha256_file(path) and H.source == str(path)
    # The file is plain data: torch's own weights_only loader reads it.
    assert torch.load(path, weights_only=True)["format"] == "i2score-stylegan2"


def test_load_generator_verifies_sha256(tmp_path: Path) -> None:
    path = tmp_path / "g.pt"
    save_generator(_small_G(), path)
    assert load_generator(path, sha256=sha256_file(path)).resolution == 32
    with pytest.raises(ChecksumMismatchError):
        load_generator(path, sha256="0" * 64)


# --------------------------------------------------------------------------------------------
# rosinality


def test_rosinality_round_trip(tmp_path: Path) -> None:
    G = _small_G()
    path = tmp_path / "ros.pt"
    save_rosinality(G, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"g_ema", "latent_avg"}
    H = load_generator_file(path)
    assert H.checkpoint_format == "rosinality-pt"
    assert H.cfg == G.cfg  # channel multiplier/max, mapping depth, z/w dims all inferred
    assert H.has_w_avg and torch.equal(H.w_avg, G.w_avg)
    a, b = G.state_dict(), H.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(_render(G), _render(H))
    # Their noise buffers come back as the checkpoint noise, and re-export is bitwise identical.
    assert H.checkpoint_noise is not None
    assert all(torch.equal(n, raw["g_ema"][f"noises.noise_{i}"]) for i, n in enumerate(H.checkpoint_noise))
    save_rosinality(H, tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=True)["g_ema"]
    assert list(again) == list(raw["g_ema"])
    assert all(torch.equal(again[k], raw["g_ema"][k]) for k in again)


def test_rosinality_bare_legacy_state_dict_without_latent_avg(tmp_path: Path) -> None:
    """A bare state dict in the pre-1.6 (non-zip) torch.save format: still detected by content."""
    G = _small_G(channel_multiplier=2, channel_max=32, resolution=16)
    save_rosinality(G, tmp_path / "ros.pt")
    sd = torch.load(tmp_path / "ros.pt", weights_only=True)["g_ema"]
    legacy = tmp_path / "legacy.pth"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    H = load_generator_file(legacy)
    assert H.cfg == G.cfg and not H.has_w_avg
    assert torch.equal(_render(G), _render(H))


def test_rosinality_strict_check_lists_keys(tmp_path: Path) -> None:
    G = _small_G()
    save_rosinality(G, tmp_path / "ros.pt")
    ckpt = torch.load(tmp_path / "ros.pt", weights_only=True)
    del ckpt["g_ema"]["to_rgbs.1.conv.modulation.bias"]
    ckpt["g_ema"]["bogus.weight"] = torch.zeros(3)
    ckpt["g_ema"]["style.2.bias"] = torch.zeros(7)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_generator_file(tmp_path / "bad.pt")
    err = info.value
    assert err.missing == ["to_rgbs.1.conv.modulation.bias"]
    assert err.unexpected == ["bogus.weight"]
    assert err.mismatched == {"style.2.bias": ((7,), (48,))}
    msg = str(err)
    for text in ("to_rgbs.1.conv.modulation.bias", "bogus.weight", "style.2.bias", "got [7], expected [48]",
                 "GeneratorConfig(resolution=32", "channel_max=128", "n_mapping=3"):
        assert text in msg


# --------------------------------------------------------------------------------------------
# NVIDIA pickles


@pytest.mark.parametrize("protocol", [2, 4])
def test_nvidia_pickle_matches_recorded_output(tmp_path: Path, nv: dict[str, Any], protocol: int) -> None:
    path = tmp_path / "network-snapshot.pkl"
    _write_nvidia_pickle(path, nv, protocol=protocol)
    assert detect_format(path) == "nvidia-pkl"
    G = load_generator_file(path)
    assert G.checkpoint_format == "nvidia-pkl" and G.has_w_avg
    assert G.cfg == GeneratorConfig(resolution=32, channel_multiplier=512 / 16384, channel_max=32, n_mapping=2,
                                    w_dim=64, z_dim=48, mapping_lr_mul=0.01, conv_clamp=0.6)
    assert torch.equal(G.w_avg, torch.from_numpy(nv["tensors"]["mapping.w_avg"]))
    noise = nvidia_noise_const(G)
    assert [tuple(n.shape) for n in noise] == [(1, *s) for s in G.noise_shapes]
    with torch.no_grad():
        assert (G.synthesize(nv["w"], noise) - nv["img_w_const"]).abs().max() < TOL
        assert (G.synthesize(nv["w"], G.const_noise(3)) - nv["img_w_none"]).abs().max() < TOL
        ws = G.map(nv["z"])
        assert (ws - nv["ws_z"]).abs().max() < TOL
        assert (G.synthesize(ws, noise) - nv["img_z_const"]).abs().max() < TOL
    # The low-level reader returns their names and init kwargs.
    kwargs, tensors = read_nvidia_pickle(path)
    assert kwargs == nv["init_kwargs"]
    assert set(tensors) == set(nv["tensors"])


def test_nvidia_embedded_module_src_is_not_executed(tmp_path: Path, nv: dict[str, Any]) -> None:
    marker = tmp_path / "pwned"
    src = f"open({str(marker)!r}, 'w').write('ran')"
    path = tmp_path / "trap.pkl"
    _write_nvidia_pickle(path, nv, module_src=src)
    # With NVIDIA's persistence module importable, an ordinary pickle.load runs the source ...
    with _fake_modules(**_nvidia_fakes()):
        pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    # ... our loader reads the same file without running it.
    G = load_generator_file(path)
    assert not marker.exists()
    assert G.resolution == 32


def test_evil_reduce_is_refused(tmp_path: Path, nv: dict[str, Any]) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps({"G_ema": Evil()}))
    with pytest.raises(UnsafePickleError, match="system"):
        load_generator_file(plain)
    # Same payload hidden inside an otherwise valid NVIDIA pickle: refused at the global.
    hidden = tmp_path / "snapshot.pkl"
    _write_nvidia_pickle(hidden, nv, extra=Evil())
    assert detect_format(hidden) == "nvidia-pkl"
    with pytest.raises(UnsafePickleError, match="system"):
        load_generator_file(hidden)
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_pickle_load(io.BytesIO(b"cbuiltins\neval\n(S'1+1'\ntR."))
    # torch.save files go through torch's weights_only loader, which refuses it as well.
    zipped = tmp_path / "evil.pt"
    torch.save({"g_ema": {"style.1.weight": Evil()}}, zipped)
    with pytest.raises(UnsafePickleError, match="system"):
        load_generator_file(zipped)
    assert not marker.exists()


def test_nvidia_unsupported_variants_are_refused(tmp_path: Path, nv: dict[str, Any]) -> None:
    for change, text in ((("c_dim", 10), "conditional"),
                         (("synthesis_kwargs", {**nv["init_kwargs"]["synthesis_kwargs"], "architecture": "resnet"}),
                          "resnet")):
        kwargs = {**nv["init_kwargs"], change[0]: change[1]}
        path = tmp_path / "variant.pkl"
        _write_nvidia_pickle(path, nv, init_kwargs=kwargs)
        with pytest.raises(UnsupportedCheckpointError, match=text):
            load_generator_file(path)


# --------------------------------------------------------------------------------------------
# TensorFlow pickles (built from the same fixture: the inverse of the loader's TF mapping)


def _tf_network_pickle(path: Path, nv: dict[str, Any], protocol: int = 3) -> None:
    t = {k: np.asarray(v, dtype=np.float32) for k, v in nv["tensors"].items()}
    kw = nv["init_kwargs"]
    res = kw["img_resolution"]
    mapping = {}
    for i in range(kw["mapping_kwargs"]["num_layers"]):
        mapping[f"Dense{i}/weight"] = t[f"mapping.fc{i}.weight"].T.copy()
        mapping[f"Dense{i}/bias"] = t[f"mapping.fc{i}.bias"]
    synth = {"4x4/Const/const": t["synthesis.b4.const"][None]}

    def layer(tf: str, nv_name: str, flip: bool = False) -> None:
        k = t[f"{nv_name}.weight"].transpose(2, 3, 1, 0)  # [out,in,kh,kw] -> TF [kh,kw,in,out]
        synth[f"{tf}/weight"] = np.ascontiguousarray(k[::-1, ::-1] if flip else k)
        synth[f"{tf}/bias"] = t[f"{nv_name}.bias"]
        synth[f"{tf}/mod_weight"] = t[f"{nv_name}.affine.weight"].T.copy()
        synth[f"{tf}/mod_bias"] = t[f"{nv_name}.affine.bias"] - 1
        if f"{nv_name}.noise_strength" in t:
            synth[f"{tf}/noise_strength"] = t[f"{nv_name}.noise_strength"]

    layer("4x4/Conv", "synthesis.b4.conv1")
    synth["noise0"] = t["synthesis.b4.conv1.noise_const"][None, None]
    r, n = 4, 1
    while r <= res:
        if r > 4:
            layer(f"{r}x{r}/Conv0_up", f"synthesis.b{r}.conv0", flip=True)
            layer(f"{r}x{r}/Conv1", f"synthesis.b{r}.conv1")
            for name in ("conv0", "conv1"):
                synth[f"noise{n}"] = t[f"synthesis.b{r}.{name}.noise_const"][None, None]
                n += 1
        layer(f"{r}x{r}/ToRGB", f"synthesis.b{r}.torgb")
        r *= 2
    sk = kw["synthesis_kwargs"]
    static = dict(latent_size=kw["z_dim"], dlatent_size=kw["w_dim"], resolution=res, num_channels=3,
                  mapping_layers=kw["mapping_kwargs"]["num_layers"], fmap_base=sk["channel_base"] // 2,
                  fmap_max=sk["channel_max"], conv_clamp=sk["conv_clamp"], truncation_psi=0.5)

    tflib_net = types.ModuleType("dnnlib.tflib.network")

    class Network:  # pickles like dnnlib.tflib.network.Network: NEWOBJ + __getstate__ dict
        def __init__(self, state: dict[str, Any]) -> None:
            self._state = state

        def __getstate__(self) -> dict[str, Any]:
            return self._state

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
    tflib_net.Network = Network  # type: ignore[attr-defined]

    def net(name: str, variables: dict[str, Any], components: dict[str, Any],
            static_kwargs: dict[str, Any]) -> Any:
        return Network(dict(version=4, name=name, static_kwargs=static_kwargs, components=components,
                            build_module_src="raise SystemExit('this must never run')",
                            build_func_name="G_main", variables=list(variables.items())))

    with _fake_modules(**{"dnnlib": types.ModuleType("dnnlib"), "dnnlib.tflib": types.ModuleType("dnnlib.tflib"),
                          "dnnlib.tflib.network": tflib_net}):
        Gs = net("G", {"dlatent_avg": t["mapping.w_avg"], "lod": np.float32(0)},
                 {"mapping": net("G_mapping", mapping, {}, {}), "synthesis": net("G_synthesis", synth, {}, {})}, static)
        path.write_bytes(pickle.dumps((Gs, Gs, Gs), protocol=protocol))


@pytest.mark.parametrize("protocol", [3, 5])  # 3: the TF era's default; 5: numpy's _frombuffer path
def test_tf_pickle_matches_recorded_output(tmp_path: Path, nv: dict[str, Any], protocol: int) -> None:
    path = tmp_path / "stylegan2-small-config-f.pkl"
    _tf_network_pickle(path, nv, protocol)
    assert detect_format(path) == "nvidia-tf-pkl"
    G = load_generator_file(path)
    assert G.checkpoint_format == "nvidia-tf-pkl" and G.has_w_avg
    assert G.checkpoint_noise is not None
    with torch.no_grad():
        assert (G.synthesize(nv["w"], G.checkpoint_noise) - nv["img_w_const"]).abs().max() < TOL
        assert (G.synthesize(G.map(nv["z"]), G.checkpoint_noise) - nv["img_z_const"]).abs().max() < TOL


# --------------------------------------------------------------------------------------------
# detection by content


def test_format_is_detected_by_content_not_name(tmp_path: Path, nv: dict[str, Any]) -> None:
    G = _small_G()
    ros = tmp_path / "looks-like-nvidia.pkl"
    save_rosinality(G, ros)
    assert load_generator_file(ros).checkpoint_format == "rosinality-pt"
    native = tmp_path / "native.pkl"
    save_generator(G, native)
    assert load_generator_file(native).checkpoint_format == "i2score-pt"
    nvpkl = tmp_path / "looks-like-rosinality.pt"
    _write_nvidia_pickle(nvpkl, nv)
    assert load_generator_file(nvpkl).checkpoint_format == "nvidia-pkl"
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(UnsupportedCheckpointError):
        load_generator_file(junk)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(UnsupportedCheckpointError):
        detect_format(text)


def test_restricted_unpickler_records_persistent_objects() -> None:
    fakes = _nvidia_fakes()
    with _fake_modules(**fakes):
        m = _PersistentModule("Thing", "raise SystemExit")
        m.register_buffer("x", torch.arange(6.0).reshape(2, 3).t())  # non-contiguous strides
        blob = pickle.dumps({"obj": m})
    out = restricted_pickle_load(io.BytesIO(blob))["obj"]
    assert isinstance(out, PickledObject) and out.class_name == "Thing"
    assert torch.equal(out.state["_buffers"]["x"], torch.arange(6.0).reshape(2, 3).t())
