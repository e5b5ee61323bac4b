"""Train an image encoder for a generator (e4e-style), and measure it on held-out portraits.

What the bundled ``demo-faces-64-e4e`` encoder is trained with. Losses, per step, on a batch
that is half generator samples and half procedural portraits:

* image L2 and LPIPS (VGG) between the input and ``G.synthesize(code, seed-0 noise)``: the
  reconstruction the encoder is judged by, rendered with the same fixed noise the evaluation
  (and hybrid inversion's start) uses;
* e4e's delta regulariser: ``sum_i ||delta_i||_2`` of the per-row offsets from ``w0``
  (Tov et al. 2021), so codes stay near W, where the generator's edits behave;
* a W-space latent loss on the generator samples, whose ``w`` is known: a direct target next
  to the image gradient through the generator. Measured on the demo generator it helps less
  than hoped: its ``w`` spreads over hundreds of directions (256 principal components hold 97%
  of the variance) that 64 px portraits barely show, so the loss stays near the variance of
  ``w`` (0.26 vs 0.245 over 300 steps, at weight 1 or 30) and acts as a weak pull of the codes
  towards the W distribution; the image losses do the fitting. It only sees generator
  samples: the portraits (the real data) are fitted by the image losses alone.

Data: generator samples (``z -> w`` with no truncation, rendered with fresh random noise per
sample) and a pool of real images from the caller, x-flipped at random: for the demo model,
portraits ``0 .. n_portraits-1`` of :mod:`i2score.demo.portraits`, its training seeds (never the
held-out ones; ``i2s train-encoder`` renders them, this layer may not import the demo).
``latent_avg`` is ``G.mean_w()``.

Deterministic for a seed on a given device with one CPU thread (with more, the ordinary
kernels' parallel reductions make runs differ in the last bits; measured), and resumable: ``checkpoint.pt``
in the output folder holds the model, the optimiser and every random stream, so a run that is
interrupted and resumed ends with the same weights as one that is not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from i2score.encoders.base import Encoder, EncoderConfig
from i2score.encoders.build import build_encoder
from i2score.encoders.small import SmallEncoderNet
from i2score.generator.checkpoints.native import atomic_torch_save
from i2score.generator.network import StyleGAN2
from i2score.kernels import fast_kernels


@dataclass(frozen=True)
class EncoderTrainConfig:
    """Hyper-parameters of an encoder training run (defaults: the bundled demo encoder).

    Attributes:
        arch, backbone, width: the encoder (:class:`~i2score.encoders.base.EncoderConfig`).
        steps: optimiser steps; batch: images per step (``sample_fraction`` of them generator
            samples, the rest portraits).
        lr: Adam's peak learning rate; cosine decay to ``lr * lr_final`` over the run, after
            ``warmup`` linear warm-up steps.
        l2, lpips, latent, delta_reg: loss weights (``lpips`` 0 skips VGG entirely).
        lpips_images: LPIPS runs on this many images of each batch (half samples, half
            portraits; 0 = all): VGG's forward and backward cost ~5x the rest of a step on a
            CPU, so the perceptual term is estimated on a subset while L2 sees every image.
        n_portraits: size of the real-image pool (for the demo: portraits ``0 .. n-1``).
        seed: seeds weights, latents, noise and data order.
        snapshot_every, log_every, eval_every: cadence of checkpoints, log lines and
            held-out evaluations (0 = never).
        init_from: an encoder (registry name or file) of the same architecture whose weights
            and ``latent_avg`` start the run: after fine-tuning a generator, its encoder
            continues from the old generator's instead of from random weights.
    """

    arch: str = "e4e"
    backbone: str = "small"
    width: int = 32
    steps: int = 4500
    batch: int = 16
    sample_fraction: float = 0.5
    lr: float = 1e-3
    lr_final: float = 0.05
    warmup: int = 100
    l2: float = 1.0
    lpips: float = 0.8
    lpips_images: int = 4
    latent: float = 1.0
    delta_reg: float = 2e-4
    n_portraits: int = 8192
    seed: int = 0
    snapshot_every: int = 250
    log_every: int = 25
    eval_every: int = 500
    init_from: str = ""

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(self.steps - self.warmup, 1)
        return self.lr * (self.lr_final + (1 - self.lr_final) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    def encoder_config(self, G: StyleGAN2) -> EncoderConfig:
        return EncoderConfig(arch=self.arch, backbone=self.backbone, n_styles=G.num_ws,  # type: ignore[arg-type]
                             w_dim=G.w_dim, input_size=G.resolution,
                             iterations=2 if self.arch.startswith("restyle") else 1, width=self.width)


def delta_regularizer(deltas: Tensor | None) -> Tensor:
    """e4e's delta regulariser: ``mean_b sum_i ||deltas[b, i]||_2`` over ``[B, n_styles, w_dim]``;
    0 when every row equals ``w0`` (and for archs without deltas, ``None``)."""
    if deltas is None:
        return torch.zeros([])
    return deltas.norm(dim=2).sum(dim=1).mean()


def psnr(image: Tensor, target: Tensor) -> Tensor:
    """PSNR in dB per image of ``[B, 3, H, W]`` in [-1, 1] (peak-to-peak 2): ``[B]``. The same
    formula as :func:`i2score.method.metrics.psnr`, which this layer may not import."""
    mse = (image.float() - target.float()).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


@torch.no_grad()
def evaluate_encoder(encoder: Encoder, G: StyleGAN2, images: Tensor, lpips: torch.nn.Module | None = None,
                     *, speed_batch: int = 16, speed_repeats: int = 3) -> dict[str, float]:
    """How well ``encoder`` alone reconstructs ``images`` ``[B, 3, R, R]`` in [-1, 1].

    Reconstruction: ``G.synthesize(encoder.encode(x), G.random_noise(B, [0] * B))`` (seed-0
    noise for every image). Returns ``psnr_median`` / ``psnr_worst`` (dB), ``lpips_median`` /
    ``lpips_worst`` (when ``lpips`` is given) and ``images_per_s``: encode + render at batch
    ``speed_batch``, best of ``speed_repeats``, with the default (batch-invariant) kernels
    and the current thread count.
    """
    was_training = encoder.training
    encoder.eval()
    x = images.to(G.device).float()
    n = x.shape[0]
    recon = G.synthesize(encoder.encode(x, G), G.random_noise(n, [0] * n))
    p = psnr(recon, x)
    out = {"psnr_median": float(p.median()), "psnr_worst": float(p.min())}
    if lpips is not None:
        d = lpips(recon, x).flatten()
        out.update(lpips_median=float(d.median()), lpips_worst=float(d.max()))
    if speed_batch > 0:
        xs = x[torch.arange(speed_batch) % n]
        noise = G.random_noise(speed_batch, [0] * speed_batch)
        best = math.inf
        for _ in range(speed_repeats):
            t0 = time.perf_counter()
            G.synthesize(encoder.encode(xs, G), noise)
            best = min(best, time.perf_counter() - t0)
        out["images_per_s"] = speed_batch / best
    encoder.train(was_training)
    return out


class EncoderTrainer:
    """One encoder training run: the encoder, its optimiser, the random streams and the step."""

    def __init__(self, cfg: EncoderTrainConfig, G: StyleGAN2, portraits: Tensor,
                 lpips: torch.nn.Module | None = None) -> None:
        if cfg.lpips > 0 and lpips is None:
            raise ValueError("cfg.lpips > 0 needs an LPIPS module (i2score.features.load_lpips)")
        self.cfg = cfg
        self.G = G.requires_grad_(False).eval()
        self.device = G.device
        self.portraits = portraits
        self.lpips = None if lpips is None else lpips.requires_grad_(False).eval()
        torch.manual_seed(cfg.seed)
        self.encoder = build_encoder(cfg.encoder_config(G), G.mean_w().detach().cpu()).to(self.device)
        self.encoder.train()
        self.opt = torch.optim.Adam(self.encoder.net.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
        # Every random stream is an explicit generator, saved with the checkpoint.
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.step = 0
        n = cfg.batch
        self.n_samples = int(round(n * cfg.sample_fraction))
        self.noise0 = [m.expand(n, -1, -1, -1) for m in G.random_noise(1, [0])]

    def samples(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` generator samples: images ``[n, 3, R, R]`` and their w ``[n, w_dim]``."""
        G = self.G
        z = torch.randn(n, G.cfg.z_dim, generator=self.gen).to(self.device)
        noise = [torch.randn(n, *s, generator=self.gen).to(self.device) for s in G.noise_shapes]
        with torch.no_grad():
            w = G.mapping(z)
            x = G.synthesize(w[:, None].expand(-1, G.num_ws, -1), noise)
        return x, w

    def real_batch(self, n: int) -> Tensor:
        idx = torch.randint(len(self.portraits), (n,), generator=self.gen)
        flip = torch.rand(n, generator=self.gen) < 0.5
        x = self.portraits[idx].float() / 127.5 - 1.0
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.to(self.device)

    def train_step(self) -> dict[str, float]:
        cfg, G = self.cfg, self.G
        ns = self.n_samples
        x_s, w_s = self.samples(ns)
        x = torch.cat([x_s, self.real_batch(cfg.batch - ns)])
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr_at(self.step)
        net = self.encoder.net
        offsets, deltas = net.codes_and_deltas(x) if isinstance(net, SmallEncoderNet) else (net(x), None)
        codes = self.encoder.latent_avg[None] + offsets
        recon = G.synthesize(codes, self.noise0)
        stats: dict[str, float] = {}
        loss_l2 = F.mse_loss(recon, x)
        loss = cfg.l2 * loss_l2
        stats["l2"] = float(loss_l2.detach())
        if cfg.lpips > 0:
            assert self.lpips is not None
            k = cfg.lpips_images // 2
            pick = (slice(None) if cfg.lpips_images <= 0
                    else torch.cat([torch.arange(min(k, ns)), ns + torch.arange(min(k, len(x) - ns))]))
            loss_lp = self.lpips(recon[pick], x[pick]).mean()
            loss = loss + cfg.lpips * loss_lp
            stats["lpips"] = float(loss_lp.detach())
        if cfg.latent > 0 and ns > 0:
            loss_w = (codes[:ns] - w_s[:, None]).square().mean()
            loss = loss + cfg.latent * loss_w
            stats["latent"] = float(loss_w.detach())
        if cfg.delta_reg > 0:
            loss_d = delta_regularizer(deltas).to(loss.device)
            loss = loss + cfg.delta_reg * loss_d
            stats["delta"] = float(loss_d.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        stats["loss"] = float(loss.detach())
        stats["lr"] = cfg.lr_at(self.step)
        self.step += 1
        return stats

    # -- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.cfg), "step": self.step,
                "encoder": self.encoder.state_dict(), "opt": self.opt.state_dict(),
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        saved = EncoderTrainConfig(**state["config"])

        # The run length and the cadences may change on resume; everything else shapes the
        # weights and must not (the lr schedule depends on ``steps``: it must match too).
        def shape(c: EncoderTrainConfig) -> EncoderTrainConfig:
            return dataclasses.replace(c, snapshot_every=0, log_every=0, eval_every=0)

        if shape(saved) != shape(self.cfg):
            raise ValueError(f"checkpoint was trained with {saved}, not {self.cfg}")
        self.step = int(state["step"])
        self.encoder.load_state_dict(state["encoder"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])

    def init_encoder(self, source: Encoder) -> None:
        """Start from ``source``'s weights and ``latent_avg`` (same :class:`EncoderConfig`)."""
        if source.config != self.encoder.config:
            raise ValueError(f"init_from {self.cfg.init_from!r} is a {source.config}, but this run trains a "
                             f"{self.encoder.config}")
        self.encoder.load_state_dict({k: v.to(self.device) for k, v in source.state_dict().items()})

    def export_encoder(self) -> Encoder:
        """A copy of the encoder for inference (CPU, eval, no grad)."""
        enc = build_encoder(self.encoder.config)
        enc.load_state_dict({k: v.detach().cpu() for k, v in self.encoder.state_dict().items()})
        enc.source = "training"
        return enc.eval().requires_grad_(False)


Progress = Callable[[int, int, dict[str, float]], None]
"""``progress(step, total_steps, stats)`` after every step."""


def train_encoder(cfg: EncoderTrainConfig, out_dir: str | os.PathLike[str], G: StyleGAN2, portraits: Tensor, *,
                  heldout: Tensor | None = None, lpips: torch.nn.Module | None = None,
                  max_steps: int | None = None, progress: Progress | None = None,
                  log: Callable[[str], None] = print) -> EncoderTrainer:
    """Train (or resume) an encoder for ``G`` in ``out_dir``; returns the trainer at its last step.

    Args:
        portraits: the real-image pool, ``uint8 [n_portraits, 3, R, R]``.
        heldout: images ``[N, 3, R, R]`` in [-1, 1] that :func:`evaluate_encoder` measures
            every ``eval_every`` steps (None: no evaluation).
        lpips: the LPIPS module (needed when ``cfg.lpips > 0``).
        max_steps: stop after this many steps (a later call resumes).
        progress: called after every step.

    ``out_dir`` receives ``checkpoint.pt`` (full state, every ``snapshot_every`` steps and at
    the end) and ``log.jsonl`` (one line every ``log_every`` steps, plus ``eval`` lines).
    """
    if len(portraits) != cfg.n_portraits or portraits.dtype != torch.uint8:
        raise ValueError(f"portraits must be uint8 [{cfg.n_portraits}, 3, R, R], got {portraits.dtype} "
                         f"{list(portraits.shape)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = EncoderTrainer(cfg, G, portraits, lpips)
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        trainer.load_state(torch.load(ckpt, map_location="cpu", weights_only=False))
        log(f"resumed from {ckpt} at step {trainer.step}")
    elif cfg.init_from:
        from i2score.encoders.checkpoints import load_encoder

        trainer.init_encoder(load_encoder(cfg.init_from, device="cpu"))
        log(f"encoder initialised from {cfg.init_from}")
    end = cfg.steps if max_steps is None else min(cfg.steps, trainer.step + max_steps)
    t_last, step_last = time.perf_counter(), trainer.step
    with open(out / "log.jsonl", "a") as logf:
        while trainer.step < end:
            with fast_kernels():
                stats = trainer.train_step()
            if progress is not None:
                progress(trainer.step, cfg.steps, stats)
            if trainer.step % cfg.log_every == 0 or trainer.step == end:
                now = time.perf_counter()
                sec_per_step = (now - t_last) / max(trainer.step - step_last, 1)
                t_last, step_last = now, trainer.step
                record = {"step": trainer.step, "sec_per_step": round(sec_per_step, 4),
                          **{k: round(v, 6) for k, v in stats.items()}}
                logf.write(json.dumps(record) + "\n")
                logf.flush()
            eval_due = cfg.eval_every and (trainer.step % cfg.eval_every == 0 or trainer.step == cfg.steps)
            if heldout is not None and eval_due:
                ev = evaluate_encoder(trainer.encoder, G, heldout, lpips, speed_batch=0)
                logf.write(json.dumps({"step": trainer.step, "eval": {k: round(v, 4) for k, v in ev.items()}}) + "\n")
                logf.flush()
                log(f"step {trainer.step}: held-out PSNR median {ev['psnr_median']:.2f} dB, "
                    f"worst {ev['psnr_worst']:.2f} dB")
            if trainer.step % cfg.snapshot_every == 0 or trainer.step == end:
                atomic_torch_save(trainer.state(), ckpt)
    return trainer
