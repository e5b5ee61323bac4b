"""``i2s train``: train (or resume) a StyleGAN2 on the procedural portraits."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer


def train_cmd(
    out: Annotated[Path, typer.Argument(help="Run folder: checkpoint.pt, log.jsonl, samples.png, "
                                             "generator.pt. An existing run is resumed.")],
    kimg: Annotated[float, typer.Option(help="Training length in thousands of real images shown.")] = 64.0,
    batch: Annotated[int, typer.Option(help="Images per step (G and D).")] = 16,
    resolution: Annotated[int, typer.Option(help="Image side (power of two, >= 16).")] = 64,
    channel_multiplier: Annotated[float, typer.Option(help="Width rule min(16384*m/r, max).")] = 0.125,
    channel_max: Annotated[int, typer.Option(help="Channel cap of both networks.")] = 128,
    dataset_size: Annotated[int, typer.Option(help="Portraits 0..N-1 form the training set.")] = 16_384,
    r1_gamma: Annotated[float, typer.Option(help="R1 penalty weight.")] = 0.1,
    pl_weight: Annotated[float, typer.Option(help="Path-length regularisation weight (0: off, as for "
                                                  "demo-faces-64; 2: StyleGAN2's, demo-faces-64-v2).")] = 2.0,
    init_from: Annotated[str, typer.Option(help="Start the generator from this model (registry name or "
                                                "path; same architecture) with a fresh discriminator.")] = "",
    d_warmup_steps: Annotated[int, typer.Option(help="Discriminator-only steps first (for --init-from: a fresh "
                                                     "discriminator must learn before it teaches).")] = 0,
    ema_rampup: Annotated[float, typer.Option(help="EMA half-life ramp-up as a fraction of images seen (0: the "
                                                   "full half-life from the start, for --init-from).")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of weights, latents, noise and data order.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp",
                                            help="bf16 autocast (default: on for CUDA, off on CPU).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps (resume later).")] = None,
    render_workers: Annotated[int, typer.Option(help="Processes rendering the dataset once.")] = 2,
    resume_from: Annotated[Path | None, typer.Option(help="Start from this compact training state (written by "
                                                         "--export-state) when OUT has no checkpoint.pt yet: how a "
                                                         "fresh clone continues a committed run.")] = None,
    export_state: Annotated[Path | None, typer.Option(
        help="Keep the run's compact state (float16 networks, bfloat16 Adam moments, random streams; small "
             "enough to commit) here, rewritten at every snapshot and at the stop.")] = None,
    export: Annotated[Path | None, typer.Option(help="Also write the final EMA generator here, in "
                                                     "float16 (how the bundled model was made).")] = None,
) -> None:
    """Train a StyleGAN2 generator + residual discriminator on procedural portraits.

    Non-saturating logistic loss, lazy R1, path-length regularisation, style mixing, EMA
    generator, x-flips; seeded and resumable (rerun the same command). The README gives the
    exact commands of the bundled models.
    """
    import torch

    from i2score.demo.training import TrainConfig, train
    from i2score.generator.checkpoints import load_generator_file, save_generator
    from i2score.generator.registry import sha256_file

    cfg = TrainConfig(resolution=resolution, channel_multiplier=channel_multiplier, channel_max=channel_max,
                      batch=batch, kimg=kimg, r1_gamma=r1_gamma, dataset_size=dataset_size, seed=seed,
                      pl_weight=pl_weight, init_from=init_from, d_warmup_steps=d_warmup_steps,
                      ema_rampup=ema_rampup)
    typer.echo("config: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()))
    path = train(cfg, out, device=device, amp=amp, max_steps=max_steps, render_workers=render_workers,
                 resume_from=resume_from, export_state=export_state, log=lambda msg: typer.echo(msg))
    typer.echo(f"generator: {path}")
    if export is not None:
        save_generator(load_generator_file(path), export, dtype=torch.float16)
        typer.echo(f"exported float16 generator: {export} (sha256 {sha256_file(export)})")
