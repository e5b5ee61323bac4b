"""Reference fixtures for the IR-SE50 encoders: data only, no weights.

The official pSp / e4e / ReStyle checkpoints are hundreds of MB, so the fixtures in
``tests/fixtures/encoders/<arch>.json|npz`` hold only what it takes to rebuild a checkpoint and
check a forward pass against the reference implementation:

* ``<arch>.json``: the reference network's state-dict keys and shapes (in order), the ``opts``
  its training script would save, the seeds, and which reference class produced the outputs;
* ``<arch>.npz``: the reference outputs (float32): ``offsets`` (the encoder network's output)
  and ``codes`` (``offsets + latent_avg``, what the reference model adds before decoding).

The weights are deterministic random values from :func:`fill_state` (one ``torch.Generator``
per tensor, seeded from the fixture seed and the tensor's index, scaled so activations stay
finite through the 50 layers), and :func:`write_reference_checkpoint` saves them the way the
reference training code does: ``torch.save({"state_dict": {"encoder.<key>": ..., "decoder.<key>":
...}, "opts": {...}, "latent_avg": ...})``.

Regenerating the fixtures (needs the reference repositories, never the network weights)::

    git clone https://github.com/eladrich/pixel2style2pixel /tmp/encref/psp
    git clone https://github.com/omertov/encoder4editing /tmp/encref/e4e
    git clone https://github.com/yuval-alaluf/restyle-encoder /tmp/encref/restyle
    python -m tests.encoder_fixture /tmp/encref/psp /tmp/encref/e4e /tmp/encref/restyle

Each reference runs in its own subprocess with the repository on ``sys.path``; only its
encoder modules (and ``EqualLinear`` from its ``models/stylegan2/model.py``) are imported, with
the CUDA ops and torchvision replaced by stubs that fail if called (the encoders use neither).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "encoders"
ARCHS = ("psp", "e4e", "restyle-psp", "restyle-e4e")

# --------------------------------------------------------------------------------------------
# The recipe (shared by the generator below and by tests/unit/test_encoders.py)


def _seed(seed: int, index: int) -> int:
    # Hash-free on purpose: the same numbers in every Python process and version.
    return seed * 1_000_003 + index


def fill_state(keys: Sequence[Sequence[Any]], seed: int) -> dict[str, Tensor]:
    """Deterministic random values for every ``(key, shape)`` pair of ``keys``, in that order.

    Conv weights ``N(0, 1/fan_in)``; 2-D (equalised linear) weights ``N(0, 1)`` since the layer
    scales them by ``1/sqrt(fan_in)`` itself; BatchNorm weight ``1 + 0.1 N``, bias and running
    mean ``0.1 N``, running var ``U(0.5, 1.5)``; PReLU slopes ``0.25 + 0.05 N``; other biases
    ``0.1 N``; ``num_batches_tracked`` 0.
    """
    names = {str(k) for k, _ in keys}
    state: dict[str, Tensor] = {}
    for index, (key, dims) in enumerate(keys):
        shape = tuple(int(s) for s in dims)
        g = torch.Generator().manual_seed(_seed(seed, index))
        module, _, leaf = key.rpartition(".")
        batch_norm = f"{module}.running_var" in names
        if leaf == "num_batches_tracked":
            state[key] = torch.zeros(shape, dtype=torch.long)
            continue
        normal = torch.randn(shape, generator=g)
        if leaf == "running_var":
            value = 0.5 + torch.rand(shape, generator=g)
        elif batch_norm and leaf == "weight":
            value = 1 + 0.1 * normal
        elif leaf in ("bias", "running_mean"):
            value = 0.1 * normal
        elif leaf == "weight" and len(shape) == 1:
            value = 0.25 + 0.05 * normal  # PReLU
        elif leaf == "weight" and len(shape) == 2:
            value = normal
        elif leaf == "weight":
            value = normal / math.sqrt(math.prod(shape[1:]))
        else:
            raise ValueError(f"fill_state has no rule for {key} {list(shape)}")
        state[key] = value
    return state


def make_input(spec: Mapping[str, Any]) -> Tensor:
    """The seeded input batch ``[B, C, S, S]`` in [-1, 1] of a fixture's ``input`` entry."""
    g = torch.Generator().manual_seed(int(spec["seed"]))
    return torch.rand(tuple(spec["shape"]), generator=g) * 2 - 1


def make_latent_avg(spec: Mapping[str, Any]) -> Tensor:
    """The fixture's ``latent_avg`` (``[512]`` or ``[n_styles, 512]``): ``0.5 N(0, 1)``."""
    g = torch.Generator().manual_seed(int(spec["seed"]))
    return 0.5 * torch.randn(tuple(spec["shape"]), generator=g)


#: Stand-in for the rosinality generator weights an official file also holds (ignored by the
#: encoder loader; real files have the full ``decoder.*`` StyleGAN2).
DECODER_STUB = {"decoder.style.1.weight": (8, 8), "decoder.input.input": (1, 8, 4, 4)}


def reference_checkpoint(fixture: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint dict the reference training code would save for these weights."""
    encoder = fill_state(fixture["keys"], int(fixture["seed"]))
    decoder = {k: torch.zeros(shape) for k, shape in DECODER_STUB.items()}
    state = {**{f"encoder.{k}": v for k, v in encoder.items()}, **decoder}
    return {"state_dict": state, "opts": dict(fixture["opts"]), "latent_avg": make_latent_avg(fixture["latent_avg"])}


def write_reference_checkpoint(fixture: Mapping[str, Any], path: str | os.PathLike[str], *,
                               state_edit: Any = None) -> Path:
    """``torch.save`` :func:`reference_checkpoint` to ``path``; ``state_edit(state_dict)`` may
    alter the state dict first (the tests drop, add and reshape keys)."""
    ckpt = reference_checkpoint(fixture)
    if state_edit is not None:
        state_edit(ckpt["state_dict"])
    torch.save(ckpt, path)
    return Path(path)


def load_fixture(arch: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON part and the arrays of ``tests/fixtures/encoders/<arch>``."""
    meta = json.loads((FIXTURE_DIR / f"{arch}.json").read_text())
    with np.load(FIXTURE_DIR / f"{arch}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


# --------------------------------------------------------------------------------------------
# Generating the fixtures from the reference code (run by hand; see the module docstring)

#: Per arch: which repository (argument position), the training flags of the README's FFHQ
#: command (with a small generator size: fewer heads, same structure), and the reference class.
_TARGETS: dict[str, dict[str, Any]] = {
    "psp": {"repo": 0, "options": "options.train_options:TrainOptions",
            "args": ["--dataset_type=ffhq_encode", "--exp_dir=/path/to/experiment", "--workers=8", "--batch_size=8",
                     "--test_batch_size=8", "--test_workers=8", "--val_interval=2500", "--save_interval=5000",
                     "--encoder_type=GradualStyleEncoder", "--start_from_latent_avg", "--lpips_lambda=0.8",
                     "--l2_lambda=1", "--id_lambda=0.1", "--output_size=32"],
            "module": "models.encoders.psp_encoders", "cls": "GradualStyleEncoder", "n_styles_arg": False,
            "latent_avg": "rows", "seed": 1501},
    "e4e": {"repo": 1, "options": "options.train_options:TrainOptions",
            "args": ["--dataset_type", "ffhq_encode", "--exp_dir", "new/experiment/directory",
                     "--start_from_latent_avg", "--use_w_pool", "--w_discriminator_lambda", "0.1",
                     "--progressive_start", "20000",
                     "--id_lambda", "0.5", "--val_interval", "10000", "--max_steps", "200000",
                     "--stylegan_size", "32", "--workers", "8", "--batch_size", "8", "--test_batch_size", "4",
                     "--test_workers", "4"],
            "module": "models.encoders.psp_encoders", "cls": "Encoder4Editing", "n_styles_arg": False,
            "latent_avg": "rows", "seed": 1502},
    "restyle-psp": {"repo": 2, "options": "options.train_options:TrainOptions",
                    "args": ["--dataset_type=ffhq_encode", "--encoder_type=BackboneEncoder",
                             "--exp_dir=experiment/restyle_psp_ffhq_encode", "--workers=8", "--batch_size=8",
                             "--test_batch_size=8", "--test_workers=8", "--val_interval=5000", "--save_interval=10000",
                             "--start_from_latent_avg", "--lpips_lambda=0.8", "--l2_lambda=1", "--w_norm_lambda=0",
                             "--id_lambda=0.1", "--input_nc=6", "--n_iters_per_batch=5", "--output_size=16",
                             "--stylegan_weights=pretrained_models/stylegan2-ffhq-config-f.pt"],
                    "module": "models.encoders.restyle_psp_encoders", "cls": "BackboneEncoder",
                    "n_styles_arg": True, "latent_avg": "rows", "seed": 1503},
    "restyle-e4e": {"repo": 2, "options": "options.e4e_train_options:e4eTrainOptions",
                    "args": ["--dataset_type", "ffhq_encode", "--encoder_type", "ProgressiveBackboneEncoder",
                             "--exp_dir=experiment/restyle_e4e_ffhq_encode", "--workers=8", "--batch_size=8",
                             "--test_batch_size=8", "--test_workers=8", "--start_from_latent_avg", "--lpips_lambda=0.8",
                             "--l2_lambda=1", "--delta_norm_lambda", "0.0002", "--id_lambda", "0.1", "--use_w_pool",
                             "--w_discriminator_lambda", "0.1", "--progressive_start", "20000",
                             "--progressive_step_every", "2000", "--input_nc", "6", "--n_iters_per_batch=5",
                             "--output_size", "16", "--stylegan_weights=pretrained_models/stylegan2-ffhq-config-f.pt"],
                    "module": "models.encoders.restyle_e4e_encoders", "cls": "ProgressiveBackboneEncoder",
                    "n_styles_arg": True, "latent_avg": "vector", "seed": 1504},
}

_REPO_NAMES = ("eladrich/pixel2style2pixel", "omertov/encoder4editing", "yuval-alaluf/restyle-encoder")


def _install_stubs() -> None:
    """Importable placeholders for what the encoder modules import but never call."""
    import types

    def refuse(*_: Any, **__: Any) -> Any:
        raise RuntimeError("stub: the encoder fixture must not reach the CUDA ops or torchvision")

    op = types.ModuleType("models.stylegan2.op")
    op.FusedLeakyReLU = refuse  # type: ignore[attr-defined]
    op.fused_leaky_relu = refuse  # type: ignore[attr-defined]
    op.upfirdn2d = refuse  # type: ignore[attr-defined]
    sys.modules["models.stylegan2.op"] = op
    tv = types.ModuleType("torchvision")
    tv_models = types.ModuleType("torchvision.models")
    tv_resnet = types.ModuleType("torchvision.models.resnet")
    tv_models.resnet34 = tv_resnet.resnet34 = refuse  # type: ignore[attr-defined]
    tv.models = tv_models  # type: ignore[attr-defined]
    tv_models.resnet = tv_resnet  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": tv, "torchvision.models": tv_models, "torchvision.models.resnet": tv_resnet})


def _run_reference(arch: str, repo: str, out_dir: Path) -> None:
    """In a fresh process: build ``arch`` with the reference code, fill it, run it, write the fixture."""
    import argparse
    import importlib
    import math as _math

    target = _TARGETS[arch]
    sys.path.insert(0, repo)
    _install_stubs()
    module_name, cls_name = target["options"].split(":")
    opts = vars(getattr(importlib.import_module(module_name), cls_name)().parser.parse_args(target["args"]))
    size = int(opts.get("output_size") or opts.get("stylegan_size"))
    n_styles = int(_math.log(size, 2)) * 2 - 2
    ns = argparse.Namespace(**opts, n_styles=n_styles)
    # What the training run adds to its opts before saving them: the coach sets the device, and
    # pSp's model class writes n_styles into the opts it was given.
    opts["device"] = "cuda:0"
    if arch == "psp":
        opts["n_styles"] = n_styles
    cls = getattr(importlib.import_module(target["module"]), target["cls"])
    net = cls(50, "ir_se", n_styles, ns) if target["n_styles_arg"] else cls(50, "ir_se", ns)
    keys = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    seed = int(target["seed"])
    net.load_state_dict(fill_state(keys, seed), strict=True)
    net.eval()
    in_ch = int(opts.get("input_nc", 3))
    input_spec = {"seed": seed + 1, "shape": [2, in_ch, 256, 256]}
    avg_shape = [n_styles, 512] if target["latent_avg"] == "rows" else [512]
    avg_spec = {"seed": seed + 2, "shape": avg_shape}
    with torch.no_grad():
        offsets = net(make_input(input_spec))
        avg = make_latent_avg(avg_spec)
        codes = offsets + (avg if avg.ndim == 2 else avg.expand(n_styles, -1))
    # The full-size (1024 px, 18 styles) network's key list too: built on the meta device, no weights.
    ns_full = argparse.Namespace(**{**opts, "output_size": 1024, "stylegan_size": 1024, "n_styles": 18})
    with torch.device("meta"):
        full = cls(50, "ir_se", 18, ns_full) if target["n_styles_arg"] else cls(50, "ir_se", ns_full)
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {
        "arch": arch,
        "reference": {"repo": _REPO_NAMES[target["repo"]], "commit": commit, "module": target["module"],
                      "class": target["cls"], "options": target["options"], "args": target["args"]},
        "opts": opts, "seed": seed, "n_styles": n_styles, "input": input_spec, "latent_avg": avg_spec,
        "keys": keys, "keys_1024": [[k, list(v.shape)] for k, v in full.state_dict().items()],
        "output_abs_max": float(codes.abs().max()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{arch}.json").write_text(json.dumps(meta, indent=1) + "\n")
    np.savez_compressed(out_dir / f"{arch}.npz", offsets=offsets.numpy().astype(np.float32),
                        codes=codes.numpy().astype(np.float32))
    print(f"{arch}: {len(keys)} keys, n_styles {n_styles}, |codes| max {meta['output_abs_max']:.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--one"]:  # child process: one arch
        _run_reference(args[1], args[2], Path(args[3]))
        return
    if len(args) not in (3, 4):
        raise SystemExit("usage: python -m tests.encoder_fixture PSP_REPO E4E_REPO RESTYLE_REPO [OUT_DIR]")
    repos, out = args[:3], Path(args[3]) if len(args) == 4 else FIXTURE_DIR
    for arch, target in _TARGETS.items():
        # One process per reference: all three repositories call their package `models`.
        subprocess.run([sys.executable, "-m", "tests.encoder_fixture", "--one", arch, repos[target["repo"]], str(out)],
                       check=True, cwd=Path(__file__).resolve().parents[1])


if __name__ == "__main__":
    main()
