"""``i2s train-encoder``: train (or resume) an image encoder for a generator."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from i2score.generator.registry import DEFAULT_MODEL


def train_encoder_cmd(
    out: Annotated[Path, typer.Argument(help="Run folder: checkpoint.pt, log.jsonl, data/. An existing run "
                                             "is resumed.")],
    generator: Annotated[str, typer.Option(help="Registry name or file of the generator.")] = DEFAULT_MODEL,
    arch: Annotated[str, typer.Option(help="psp, e4e, restyle-psp or restyle-e4e.")] = "e4e",
    backbone: Annotated[str, typer.Option(help="small (the light CPU backbone) or ir_se50.")] = "small",
    width: Annotated[int, typer.Option(help="Base channels of the small backbone.")] = 32,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 4500,
    batch: Annotated[int, typer.Option(help="Images per step (half generator samples, half portraits).")] = 16,
    lr: Annotated[float, typer.Option(help="Adam's peak learning rate (cosine decay).")] = 1e-3,
    lpips: Annotated[float, typer.Option(help="LPIPS weight (0: no VGG).")] = 0.8,
    lpips_images: Annotated[int, typer.Option(help="Images per batch the LPIPS term sees (0: all).")] = 4,
    latent: Annotated[float, typer.Option(help="W-space loss weight on generator samples.")] = 1.0,
    n_portraits: Annotated[int, typer.Option(help="Portraits 0..N-1 form the real-image pool.")] = 8192,
    seed: Annotated[int, typer.Option(help="Seed of weights, latents, noise and data order.")] = 0,
    init_from: Annotated[str, typer.Option(help="Start from this encoder (registry name or file; same "
                                                "architecture), e.g. the old generator's after fine-tuning "
                                                "the generator.")] = "",
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads. Runs repeat bit for bit on one "
                                                     "thread; with more, oneDNN's parallel reductions differ.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps (resume later).")] = None,
    export: Annotated[Path | None, typer.Option(help="Write the final encoder here (i2score's native "
                                                     "encoder format, with the held-out numbers).")] = None,
) -> None:
    """Train an e4e/pSp encoder: L2 + LPIPS + e4e delta regulariser, and a W-space loss on
    generator samples; data = generator samples + procedural portraits (training seeds).

    Seeded and resumable (rerun the same command). The defaults made the bundled
    demo-faces-64-e4e encoder, with --threads 1 (results depend on the thread count).
    """
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from i2score.demo.portraits import heldout_images
    from i2score.demo.training import TrainConfig, load_portrait_dataset
    from i2score.encoders.native import save_encoder
    from i2score.encoders.training import EncoderTrainConfig, evaluate_encoder, train_encoder
    from i2score.features import load_lpips
    from i2score.generator.checkpoints import load_generator
    from i2score.generator.registry import sha256_file

    if threads is not None:
        torch.set_num_threads(threads)
    cfg = EncoderTrainConfig(arch=arch, backbone=backbone, width=width, steps=steps, batch=batch, lr=lr,
                             lpips=lpips, lpips_images=lpips_images, latent=latent, n_portraits=n_portraits,
                             seed=seed, init_from=init_from)
    typer.echo("config: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()))
    G = load_generator(generator, device=device)
    lp = load_lpips(device=device)
    # The demo generator's training seeds 0..n-1, rendered once into the run folder.
    portraits = load_portrait_dataset(TrainConfig(resolution=G.resolution, dataset_size=n_portraits), out / "data",
                                      log=lambda msg: typer.echo(msg))
    heldout = heldout_images(16, G.resolution)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("training", total=cfg.steps, stats="")

        def on_step(step: int, total: int, stats: dict[str, float]) -> None:
            bar.update(task, completed=step, stats=" ".join(f"{k} {v:.4g}" for k, v in stats.items() if k != "lr"))

        trainer = train_encoder(cfg, out, G, portraits, heldout=heldout, lpips=lp, max_steps=max_steps,
                                progress=on_step, log=bar.console.print)
    if export is None:
        return
    if trainer.step < cfg.steps:
        raise typer.BadParameter(f"the run is at step {trainer.step} of {cfg.steps}; export after it ends",
                                 param_hint="--export")
    encoder = trainer.export_encoder()
    G_cpu = G.cpu()
    ev = evaluate_encoder(encoder, G_cpu, heldout.cpu(), lp.cpu())
    save_encoder(encoder, export, generator=G.source, generator_sha256=G.weights_sha256,
                 training=dataclasses.asdict(cfg), heldout16=ev, torch_threads=torch.get_num_threads())
    typer.echo("held-out (16 portraits, encoder alone, seed-0 noise): "
               + ", ".join(f"{k} {v:.4g}" for k, v in ev.items()))
    typer.echo(f"exported encoder: {export} (sha256 {sha256_file(export)})")
