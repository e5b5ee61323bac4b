"""Train a StyleGAN2 (the project's own generator) with a residual discriminator.

What the bundled demo model is trained with (StyleGAN2 paper, Karras et al. 2020, Sec. 2 and
appendix B, at a small scale): non-saturating logistic loss, lazy R1 penalty on real images
every ``r1_every`` discriminator steps, style mixing regularisation, lazy path-length
regularisation every ``pl_every`` generator steps (``pl_weight`` 0 turns it off, as for
``demo-faces-64``; ``demo-faces-64-v2`` has it: a smoother W makes edits and interpolations
between embedded images look real), an exponential moving average of the generator (the
exported model), x-flips of the data, Adam with ``betas=(0, 0.99)``. ``init_from`` starts the
generator from an exported model (with a fresh discriminator), so a run can continue where a
published model ended without its training checkpoint.

Runs on CPU (slowly) and CUDA (``amp`` = bf16 autocast there). Deterministic for a seed on
a given device and thread count, and resumable: ``train`` continues from ``checkpoint.pt`` in
its output folder with the optimiser states and every random stream, so a run interrupted and
resumed produces the same weights as an uninterrupted one. ``checkpoint.pt`` is large (74 MB for
the demo model) and lives in an ignored run folder, which a fresh clone does not have; a
*compact* state (:func:`compact_state`: the three networks in float16, Adam's second moments in
bfloat16, the random streams; 27 MB) is small enough to commit, and ``train(resume_from=...)``
continues a run from it on another machine: same step, data order and random streams, weights
and moments rounded (so close to, not bit-identical with, an uninterrupted run).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2score.generator.checkpoints.native import atomic_torch_save, save_generator
from i2score.generator.network import GeneratorConfig, StyleGAN2, channels_at
from i2score.generator.ops import LRELU_GAIN, LRELU_SLOPE, EqualLinear
from i2score.kernels import fast_kernels


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate (weights scaled by ``1/sqrt(fan_in)`` at run time)."""

    def __init__(self, cin: int, cout: int, k: int, *, bias: bool = True, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1.0 / math.sqrt(cin * k * k)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)
        return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN if self.activation else x


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs and a 2x down-sampling, with a 1x1 residual path (StyleGAN2 'resnet')."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(cin, cin, 3, activation=True)
        self.conv1 = EqualConv2d(cin, cout, 3, activation=True)
        self.skip = EqualConv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(self.conv1(self.conv0(x)), 2)
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """``[B, 3, R, R]`` images in [-1, 1] -> ``[B]`` realness logits.

    Channel widths follow the generator's rule (:func:`channels_at`) so both networks scale
    together; the epilogue has the minibatch standard-deviation feature of StyleGAN2.
    """

    def __init__(self, resolution: int, *, channel_multiplier: float = 2, channel_max: int = 512,
                 mbstd_group: int = 4) -> None:
        super().__init__()
        ch = lambda r: channels_at(r, channel_multiplier, channel_max)  # noqa: E731
        self.from_rgb = EqualConv2d(3, ch(resolution), 1, activation=True)
        blocks = []
        r = resolution
        while r > 4:
            blocks.append(DiscriminatorBlock(ch(r), ch(r // 2)))
            r //= 2
        self.blocks = nn.ModuleList(blocks)
        self.mbstd_group = mbstd_group
        self.conv = EqualConv2d(ch(4) + 1, ch(4), 3, activation=True)
        self.fc = EqualLinear(ch(4) * 16, ch(4), activation=True)
        self.out = EqualLinear(ch(4), 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.from_rgb(x)
        for block in self.blocks:
            x = block(x)
        b, c, h, w = x.shape
        g = min(self.mbstd_group, b)
        if b % g:
            g = 1
        # Std of each feature over groups of images, averaged to one extra channel: lets the
        # discriminator see a lack of variety across the batch (mode collapse).
        y = x.reshape(g, -1, c, h, w).float()
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])
        y = y.to(x.dtype).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        x = self.conv(torch.cat([x, y], dim=1))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run (defaults: the bundled ``demo-faces-64``)."""

    resolution: int = 64
    channel_multiplier: float = 0.125
    channel_max: int = 128
    n_mapping: int = 8
    w_dim: int = 512
    batch: int = 16
    kimg: float = 64.0
    lr: float = 0.0025
    r1_gamma: float = 0.1
    r1_every: int = 16
    style_mixing: float = 0.9
    ema_kimg: float = 5.0
    ema_rampup: float = 0.05
    w_avg_beta: float = 0.995
    mirror: bool = True
    dataset_size: int = 16_384
    seed: int = 0
    snapshot_every: int = 250
    log_every: int = 25
    #: Path-length regularisation (StyleGAN2 Sec. 3.2): weight, interval (lazy), batch shrink,
    #: and the decay of the running mean path length ``a``.
    pl_weight: float = 2.0
    pl_every: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    #: Model source (registry name or path) whose weights start the generator and its EMA.
    init_from: str = ""
    #: Discriminator-only steps before the generator moves: a fresh discriminator facing a
    #: trained generator gives it noise for gradients at first, and the generator degrades.
    d_warmup_steps: int = 0

    @property
    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(resolution=self.resolution, channel_multiplier=self.channel_multiplier,
                               channel_max=self.channel_max, n_mapping=self.n_mapping,
                               w_dim=self.w_dim, z_dim=self.w_dim)

    @property
    def total_steps(self) -> int:
        return int(math.ceil(self.kimg * 1000 / self.batch))


def load_portrait_dataset(cfg: TrainConfig, cache_dir: Path | None = None, workers: int = 1,
                          log: Callable[[str], None] = print) -> Tensor:
    """The training images ``uint8 [N, 3, R, R]``: portraits ``0 .. dataset_size-1``.

    Rendered once and kept as ``portraits-{R}-{N}.npy`` in ``cache_dir`` (rendering is a
    pure function of the seed, so the cache only saves time).
    """
    from i2score.demo.portraits import TRAIN_SEEDS, render_dataset

    if cfg.dataset_size > TRAIN_SEEDS:
        raise ValueError(f"dataset_size {cfg.dataset_size} > TRAIN_SEEDS {TRAIN_SEEDS}: larger seeds "
                         "are reserved for held-out images")
    path = None if cache_dir is None else cache_dir / f"portraits-{cfg.resolution}-{cfg.dataset_size}.npy"
    if path is not None and path.is_file():
        data = np.load(path)
    else:
        t0 = time.perf_counter()
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            chunks = [range(s, min(s + 1024, cfg.dataset_size)) for s in range(0, cfg.dataset_size, 1024)]
            with ProcessPoolExecutor(workers) as pool:
                data = np.concatenate(list(pool.map(render_dataset, chunks, [cfg.resolution] * len(chunks))))
        else:
            data = render_dataset(range(cfg.dataset_size), cfg.resolution)
        log(f"rendered {len(data)} portraits in {time.perf_counter() - t0:.0f} s")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
            np.save(tmp, data)
            os.replace(tmp, path)
    return torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))


class Trainer:
    """One training run: networks, optimisers, random streams and the step counter."""

    def __init__(self, cfg: TrainConfig, data: Tensor, device: str | torch.device = "cpu",
                 amp: bool | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.amp = (self.device.type == "cuda") if amp is None else amp
        if self.amp and self.device.type != "cuda":
            raise ValueError("amp (bf16 autocast) is only used on CUDA; this CPU would emulate bf16")
        self.data = data
        torch.manual_seed(cfg.seed)
        self.G = StyleGAN2(cfg.generator_config, seed=cfg.seed).to(self.device)
        self.G.requires_grad_(True).train()
        self.D = Discriminator(cfg.resolution, channel_multiplier=cfg.channel_multiplier,
                               channel_max=cfg.channel_max).to(self.device)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        d_ratio = cfg.r1_every / (cfg.r1_every + 1)
        g_params = [p for n, p in self.G.named_parameters() if n != "w_avg"]
        self.opt_G = torch.optim.Adam(g_params, lr=cfg.lr, betas=(0.0, 0.99), eps=1e-8)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr * d_ratio,
                                      betas=(0.0, 0.99 ** d_ratio), eps=1e-8)
        # Every random stream is an explicit generator, saved with the checkpoint.
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.rng = np.random.default_rng([cfg.seed, 2])
        # Running mean of the path lengths, the target of the path-length penalty.
        self.pl_mean = torch.zeros((), device=self.device)
        self.step = 0
        self.order: np.ndarray = self.rng.permutation(len(data))
        self.cursor = 0

    # -- data and latents -----------------------------------------------------------------
    def real_batch(self) -> Tensor:
        n = self.cfg.batch
        if self.cursor + n > len(self.order):
            self.order = self.rng.permutation(len(self.data))
            self.cursor = 0
        idx = torch.from_numpy(self.order[self.cursor:self.cursor + n])
        self.cursor += n
        x = self.data[idx].float() / 127.5 - 1.0
        if self.cfg.mirror:
            flip = torch.from_numpy(self.rng.random(n) < 0.5)
            x[flip] = x[flip].flip(-1)
        return x.to(self.device)

    def fake_ws(self, n: int) -> Tensor:
        """Mapped latents ``[n, L, w_dim]`` with style mixing; updates the tracked mean w."""
        G, L = self.G, self.G.num_ws
        z = torch.randn(2 * n, G.cfg.z_dim, generator=self.gen).to(self.device)
        w = G.mapping(z)
        with torch.no_grad():
            G.w_avg.copy_(w[:n].detach().mean(0).lerp(G.w_avg, self.cfg.w_avg_beta))
        ws = w[:n, None].repeat(1, L, 1)
        mix = torch.rand(n, generator=self.gen) < self.cfg.style_mixing
        cut = torch.randint(1, L, (n,), generator=self.gen)
        rows = torch.arange(L)[None, :] >= cut[:, None]
        use2 = (mix[:, None] & rows).to(self.device)[..., None]
        return torch.where(use2, w[n:, None].expand(-1, L, -1), ws)

    def noise(self, n: int) -> list[Tensor]:
        return [torch.randn(n, *s, generator=self.gen).to(self.device) for s in self.G.noise_shapes]

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp)

    # -- one iteration --------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One generator step and one discriminator step (plus R1 every ``r1_every``)."""
        cfg, n = self.cfg, self.cfg.batch
        stats: dict[str, float] = {}
        # Generator: non-saturating loss, softplus(-D(G(z))).
        self.D.requires_grad_(False)
        with self._autocast():
            fake = self.G.synthesize(self.fake_ws(n), self.noise(n))
            loss_g = F.softplus(-self.D(fake).float()).mean()
        stats["loss_g"] = float(loss_g.detach())
        if self.step >= cfg.d_warmup_steps:
            self.opt_G.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_G.step()
            if cfg.pl_weight > 0 and self.step % cfg.pl_every == 0:
                stats["pl_length"] = self._path_length_step()
        # Discriminator: softplus(D(fake)) + softplus(-D(real)).
        self.D.requires_grad_(True)
        real = self.real_batch()
        with torch.no_grad(), self._autocast():
            fake = self.G.synthesize(self.fake_ws(n), self.noise(n))
        with self._autocast():
            logits_fake = self.D(fake.detach()).float()
            logits_real = self.D(real).float()
            loss_d = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()
        stats["loss_d"] = float(loss_d.detach())
        stats["d_real"] = float(logits_real.detach().mean())
        stats["d_fake"] = float(logits_fake.detach().mean())
        if self.step % cfg.r1_every == 0:
            # Lazy R1: gamma/2 * |grad_x D(x)|^2 on reals, scaled by the interval.
            real = real.detach().requires_grad_(True)
            logits = self.D(real).float()
            (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
            r1 = grad.square().sum(dim=[1, 2, 3]).mean()
            self.opt_D.zero_grad(set_to_none=True)
            (r1 * (cfg.r1_gamma / 2) * cfg.r1_every + 0 * logits.mean()).backward()
            self.opt_D.step()
            stats["r1"] = float(r1.detach())
        self._update_ema()
        self.step += 1
        return stats

    def _path_length_step(self) -> float:
        """Lazy path-length penalty ``(|J_w^T y| − a)²`` with ``y`` a random image-space direction.

        Pushes the generator's Jacobian w.r.t. ``w`` towards a constant length, so that equal
        steps in W move the image equally everywhere (StyleGAN2 Sec. 3.2). Returns the mean
        path length of this batch.
        """
        cfg = self.cfg
        n = max(cfg.batch // cfg.pl_batch_shrink, 1)
        with self._autocast():
            ws = self.fake_ws(n)
            fake = self.G.synthesize(ws, self.noise(n))
        r = fake.shape[-1]
        direction = torch.randn(fake.shape, generator=self.gen).to(self.device) / r
        (grad,) = torch.autograd.grad((fake.float() * direction).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(2).mean(1).sqrt()
        with torch.no_grad():
            # The running mean starts at the first measurement, not at 0: from 0 the penalty
            # would pull every path length of a trained generator towards 0 (a collapse).
            first = self.pl_mean == 0
            self.pl_mean.copy_(torch.where(first, lengths.mean(), self.pl_mean.lerp(lengths.mean(), cfg.pl_decay)))
        penalty = (lengths - self.pl_mean).square().mean()
        self.opt_G.zero_grad(set_to_none=True)
        (penalty * cfg.pl_weight * cfg.pl_every).backward()
        self.opt_G.step()
        return float(lengths.detach().mean())

    def init_generator(self, G: StyleGAN2) -> None:
        """Start the generator and its EMA from ``G``'s weights (same architecture)."""
        try:
            self.G.load_state_dict(G.state_dict())
        except RuntimeError as exc:
            raise ValueError(f"init_from {self.cfg.init_from!r} does not match this run's generator "
                             f"({self.cfg.generator_config}): {exc}") from exc
        self.G_ema.load_state_dict(self.G.state_dict())

    def _update_ema(self) -> None:
        cfg = self.cfg
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup > 0:
            ema_nimg = min(ema_nimg, self.step * cfg.batch * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
                b_ema.copy_(b)

    # -- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.cfg), "step": self.step,
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "gen": self.gen.get_state(), "rng": self.rng.bit_generator.state,
            "order": torch.from_numpy(self.order.copy()), "cursor": self.cursor,
            "pl_mean": self.pl_mean.detach().cpu(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (exactly) or from a :func:`compact_state` (rounded)."""
        saved = TrainConfig(**state["config"])
        # The run length and the logging cadence may change on resume (train longer, or stop
        # at an earlier snapshot); everything that shapes the weights must not.
        def shape(c: TrainConfig) -> TrainConfig:
            return dataclasses.replace(c, kimg=0, snapshot_every=0, log_every=0)

        if shape(saved) != shape(self.cfg):
            raise ValueError(f"checkpoint was trained with {saved}, not {self.cfg}")
        if self.cfg.total_steps < int(state["step"]):
            raise ValueError(f"checkpoint is at step {state['step']}, past this run's end "
                             f"({self.cfg.total_steps} steps = {self.cfg.kimg} kimg)")
        self.step = int(state["step"])
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        if "compact_dtype" in state:
            self.opt_G.load_state_dict(_expand_adam(state["compact_opt_G"]))
            self.opt_D.load_state_dict(_expand_adam(state["compact_opt_D"]))
        else:
            self.opt_G.load_state_dict(state["opt_G"])
            self.opt_D.load_state_dict(state["opt_D"])
        self.gen.set_state(state["gen"])
        self.rng.bit_generator.state = state["rng"]
        self.order = state["order"].numpy().copy()
        self.cursor = int(state["cursor"])
        self.pl_mean.copy_(state["pl_mean"])

    def export_generator(self) -> StyleGAN2:
        """The EMA generator as an inference model (CPU, eval, tracked mean w set)."""
        G = copy.deepcopy(self.G_ema).cpu().eval().requires_grad_(False)
        G.has_w_avg = True
        G.source = "training"
        return G


def _compact_adam(opt_state: dict[str, Any]) -> dict[str, Any]:
    # The second moments go in bfloat16 (float16 would flush the small ones to 0). With
    # beta1 = 0 the first moment is just the newest gradient and the next step overwrites it
    # before reading it, so it is dropped; any other beta1 keeps it (in bfloat16 too).
    keep_first = any(group["betas"][0] != 0 for group in opt_state["param_groups"])
    state = {}
    for idx, st in opt_state["state"].items():
        state[idx] = {"step": st["step"], "exp_avg_sq": st["exp_avg_sq"].detach().cpu().to(torch.bfloat16)}
        if keep_first:
            state[idx]["exp_avg"] = st["exp_avg"].detach().cpu().to(torch.bfloat16)
    return {"state": state, "param_groups": opt_state["param_groups"]}


def _expand_adam(compact: dict[str, Any]) -> dict[str, Any]:
    state = {}
    for idx, st in compact["state"].items():
        sq = st["exp_avg_sq"].float()
        state[idx] = {"step": st["step"], "exp_avg_sq": sq,
                      "exp_avg": st["exp_avg"].float() if "exp_avg" in st else torch.zeros_like(sq)}
    return {"state": state, "param_groups": compact["param_groups"]}


def compact_state(state: dict[str, Any], dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """A :meth:`Trainer.state` small enough to commit: networks in ``dtype``, Adam moments in bfloat16.

    Keeps the step, config, random streams, data order and path-length mean exactly, so
    :meth:`Trainer.load_state` continues the same run (see the module docstring for what is lost).
    """
    out = {k: v for k, v in state.items() if k not in ("opt_G", "opt_D")}
    for key in ("G", "D", "G_ema"):
        out[key] = {name: t.detach().cpu().to(dtype) if t.is_floating_point() else t.detach().cpu()
                    for name, t in state[key].items()}
    out["compact_opt_G"] = _compact_adam(state["opt_G"])
    out["compact_opt_D"] = _compact_adam(state["opt_D"])
    out["compact_dtype"] = str(dtype).removeprefix("torch.")
    return out


def sample_grid(G: StyleGAN2, n: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` random samples (a square number) as one ``uint8 [H, W, 3]`` grid."""
    side = int(round(math.sqrt(n)))
    with torch.no_grad():
        imgs, _ = G.sample(side * side, seed)
    x = ((imgs.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    r = G.resolution
    return x.reshape(side, side, r, r, 3).transpose(0, 2, 1, 3, 4).reshape(side * r, side * r, 3)


def train(cfg: TrainConfig, out_dir: str | os.PathLike[str], *, device: str = "cpu",
          amp: bool | None = None, max_steps: int | None = None, render_workers: int = 1,
          resume_from: str | os.PathLike[str] | None = None,
          export_state: str | os.PathLike[str] | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Train (or resume) a run in ``out_dir``; returns the path of the exported generator.

    ``out_dir`` receives ``checkpoint.pt`` (full state, every ``snapshot_every`` steps and at
    the end), ``log.jsonl`` (one line per ``log_every`` steps), ``samples.png`` (64 samples of
    the EMA generator at each snapshot) and ``generator.pt`` (the EMA generator in the native
    format, loadable with :func:`~i2score.generator.checkpoints.load.load_generator`). ``max_steps``
    stops early (a later call resumes).

    ``resume_from`` (a :func:`compact_state` file) starts a run whose folder has no
    ``checkpoint.pt`` yet, e.g. a fresh clone continuing a committed run; ``export_state`` writes
    that compact state at every snapshot and at the stop, so the file always holds the newest one.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_portrait_dataset(cfg, out / "data", workers=render_workers, log=log)
    with fast_kernels():
        trainer = Trainer(cfg, data, device=device, amp=amp)
        ckpt = out / "checkpoint.pt"
        if ckpt.is_file():
            trainer.load_state(torch.load(ckpt, map_location=trainer.device, weights_only=False))
            log(f"resumed from {ckpt} at step {trainer.step}")
        elif resume_from is not None:
            if not Path(resume_from).is_file():
                raise FileNotFoundError(f"resume_from {resume_from}: no such file (a compact state written "
                                        f"by export_state)")
            state = torch.load(resume_from, map_location=trainer.device, weights_only=False)
            if "compact_dtype" not in state:
                raise ValueError(f"{resume_from} is not a compact training state (see compact_state); "
                                 f"a full checkpoint.pt resumes by being the run folder's checkpoint.pt")
            trainer.load_state(state)
            log(f"resumed from the compact state {resume_from} at step {trainer.step} "
                f"(weights rounded to {state['compact_dtype']}, Adam moments to bfloat16)")
        elif cfg.init_from:
            from i2score.generator.checkpoints import load_generator

            G0 = load_generator(cfg.init_from)
            if not isinstance(G0, StyleGAN2):
                raise ValueError(f"init_from {cfg.init_from!r} is not a StyleGAN2 of this project")
            trainer.init_generator(G0)
            log(f"generator initialised from {cfg.init_from}")
        saved_step = trainer.step if ckpt.is_file() else -1
        exported_step = -1
        end = cfg.total_steps if max_steps is None else min(cfg.total_steps, trainer.step + max_steps)
        t_last, step_last = time.perf_counter(), trainer.step
        with open(out / "log.jsonl", "a") as logf:
            while trainer.step < end:
                stats = trainer.train_step()
                if trainer.step % cfg.log_every == 0 or trainer.step == end:
                    now = time.perf_counter()
                    sec_per_step = (now - t_last) / max(trainer.step - step_last, 1)
                    t_last, step_last = now, trainer.step
                    kimg = trainer.step * cfg.batch / 1000
                    record = {"step": trainer.step, "kimg": round(kimg, 3),
                              "sec_per_step": round(sec_per_step, 4), **{k: round(v, 4) for k, v in stats.items()}}
                    if cfg.pl_weight > 0:
                        record["pl_mean"] = round(trainer.pl_mean.item(), 4)
                    logf.write(json.dumps(record) + "\n")
                    logf.flush()
                    log(f"step {trainer.step}/{cfg.total_steps} kimg {kimg:.1f} "
                        f"{sec_per_step:.2f} s/step G {stats['loss_g']:.3f} D {stats['loss_d']:.3f}"
                        + (f" pl {trainer.pl_mean.item():.3f}" if cfg.pl_weight > 0 else ""))
                if trainer.step % cfg.snapshot_every == 0 or trainer.step == end:
                    state = trainer.state()
                    atomic_torch_save(state, ckpt)
                    saved_step = trainer.step
                    if export_state is not None:
                        atomic_torch_save(compact_state(state), Path(export_state))
                        exported_step = trainer.step
                    G = trainer.export_generator()
                    save_generator(G, out / "generator.pt")
                    Image.fromarray(sample_grid(G, 64, seed=cfg.seed)).save(out / "samples.png")
        # A run started from a compact state with nothing left to train still leaves its files.
        if saved_step != trainer.step:
            atomic_torch_save(trainer.state(), ckpt)
            save_generator(trainer.export_generator(), out / "generator.pt")
        if export_state is not None and exported_step != trainer.step:
            atomic_torch_save(compact_state(trainer.state()), Path(export_state))
    return out / "generator.pt"
