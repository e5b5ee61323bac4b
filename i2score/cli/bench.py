"""``i2s bench ...``: benchmarks (measured, never assumed) behind thin commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from i2score.generator.registry import DEFAULT_MODEL

bench_app = typer.Typer(help="Benchmarks (measured, never assumed): embedding throughput.",
                        no_args_is_help=True)


def _batch_list(text: str) -> list[int | str]:
    """``"1,8,auto"`` -> ``[1, 8, "auto"]``."""
    out: list[int | str] = []
    for v in (v.strip() for v in text.split(",")):
        if not v:
            continue
        if v == "auto":
            out.append(v)
            continue
        try:
            out.append(int(v))
        except ValueError as e:
            raise typer.BadParameter(f"expected comma-separated integers or 'auto', got {text!r}") from e
    return out


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in allowed]
    if bad:
        raise typer.BadParameter(f"unknown {what}(s) {bad}; use {' and/or '.join(allowed)}")
    return names


@bench_app.command("embed")
def bench_embed_cmd(
    resolution: Annotated[int, typer.Option(help="Generator resolution (power of two).")] = 64,
    batch_sizes: Annotated[str, typer.Option(
        help="Comma-separated batch sizes; 'auto' = the largest batch whose W+ step fits in GPU memory "
             "(on CPU: --max-batch).")] = "1,2,4,8",
    dtype: Annotated[str, typer.Option(help="Comma-separated: fp32, bf16 (autocast).")] = "fp32",
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    channel_max: Annotated[int, typer.Option(help="Channel cap (512 = config-f).")] = 512,
    channel_multiplier: Annotated[float, typer.Option(help="Channel multiplier (2 = config-f).")] = 2.0,
    model: Annotated[str | None, typer.Option(
        help="Time this model (registry name or path, e.g. demo-faces-64) instead of a random generator; "
             "overrides the shape options.")] = None,
    kernels: Annotated[str, typer.Option(help="Comma-separated: invariant (the engine's default, reproducible), "
                                              "fast (PyTorch's ordinary kernels).")] = "invariant",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Also measure channels_last rows.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="Also measure torch.compile rows (compiles once; "
                                                            "needs a C compiler on CPU).")] = False,
    reference: Annotated[bool, typer.Option(help="Also time the per-image reference loop (batch 1, fp32, ordinary "
                                                 "kernels, loss.item() each step) and report ratios over it.")] = True,
    max_batch: Annotated[int, typer.Option(help="Upper bound of --batch-sizes auto.")] = 64,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: PyTorch's default). On a shared machine "
                                              "also set OMP_WAIT_POLICY=PASSIVE.")] = 0,
    repeats: Annotated[int, typer.Option(help="Timed calls per measurement (median).")] = 5,
    steps_per_timing: Annotated[int, typer.Option(help="Optimisation steps per timed call.")] = 3,
    out_dir: Annotated[Path, typer.Option(help="Where bench-embed.json and .md go.")] = Path("bench-out"),
) -> None:
    """Steps/s and images/hour (5000+3000 schedule) of both embedding stages, against a per-image
    reference loop measured in the same run (random weights unless --model)."""
    import torch

    from i2score.bench.embed import bench_embed, bench_reference, rows_to_markdown, write_report
    from i2score.features import load_vgg16

    dtypes = _names(dtype, ("fp32", "bf16"), "dtype")
    kernel_names = _names(kernels, ("invariant", "fast"), "kernel")
    batches = _batch_list(batch_sizes)
    if threads > 0:
        torch.set_num_threads(threads)
    console = Console(stderr=True)
    if "bf16" in dtypes and device == "cpu":
        from i2score.bench.embed import cpu_has_native_bf16

        if cpu_has_native_bf16() is False:
            console.print("note: this CPU has no native bf16 (avx512_bf16/amx); bf16 rows measure emulation")
    G = None
    if model is not None:
        from i2score.generator.checkpoints import load_generator

        G = load_generator(model, device=device)
        resolution = G.resolution
    vgg = load_vgg16(device=device)
    timing = {"repeats": repeats, "steps_per_timing": steps_per_timing}
    ref_rows = []
    if reference:
        from i2score.generator.network import StyleGAN2

        G_ref = G if G is not None else StyleGAN2(resolution, channel_max=channel_max,
                                                  channel_multiplier=channel_multiplier, seed=0).to(device)
        ref_rows.append(bench_reference(G_ref, vgg, model=model or "random", **timing))
        console.print(f"reference loop: {ref_rows[0].w_steps_per_s:.2f} W-steps/s, "
                      f"{ref_rows[0].images_per_hour_paper:.1f} images/h (5000+3000)")
    rows = bench_embed(resolution=resolution, batch_sizes=batches, dtypes=dtypes, device=device,
                       channel_max=channel_max, channel_multiplier=channel_multiplier, vgg=vgg,
                       kernels=kernel_names, channels_last=(False, True) if channels_last else (False,),
                       compile=(False, True) if compile else (False,), G=G, model=model or "random",
                       max_batch=max_batch, progress=console.print, **timing)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"bench-embed-{resolution}-{device.replace(':', '')}"
    settings = {"batch_sizes": batches, "dtypes": dtypes, "kernels": kernel_names, "channels_last": channels_last,
                "compile": compile, "model": model, "max_batch": max_batch, **timing}
    write_report(rows, f"{stem}.json", f"{stem}.md", reference=ref_rows, device=device, settings=settings)
    typer.echo(rows_to_markdown(rows, ref_rows))
    typer.echo(f"wrote {stem}.json and {stem}.md")


@bench_app.command("ladder")
def bench_ladder_cmd(
    model: Annotated[str, typer.Option(
        help="Registry name, path or URL; or random:RES[:CHANNEL_MAX].")] = "random:64:64",
    steps_w: Annotated[int, typer.Option(help="W+ stage steps (paper: 5000).")] = 500,
    steps_n: Annotated[int, typer.Option(help="Noise stage steps (paper: 3000).")] = 500,
    early_stop: Annotated[bool, typer.Option(help="Also run with per-image early stopping.")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    seed: int = 0,
) -> None:
    """PSNR ladder of reconstruction on scikit-image's photos (astronaut, coffee, chelsea)."""
    from i2score.bench.embed import bench_ladder, ladder_to_markdown, sample_photos
    from i2score.method.blocks import EarlyStop

    if model.startswith("random:"):
        from i2score.generator.network import StyleGAN2

        parts = [int(p) for p in model.split(":")[1:]]
        G = StyleGAN2(parts[0], channel_max=parts[1] if len(parts) > 1 else 512, seed=seed).to(device)
    else:
        from i2score.generator.checkpoints import load_generator

        G = load_generator(model, device=device)
    names, images = sample_photos(G.resolution)
    rows = bench_ladder(G, images, names, steps_w=steps_w, steps_n=steps_n, seed=seed)
    if early_stop:
        rows += bench_ladder(G, images, names, steps_w=steps_w, steps_n=steps_n, seed=seed, early_stop=EarlyStop())
    typer.echo(f"model {model}, {steps_w} W+ steps + {steps_n} noise steps, seed {seed}")
    typer.echo(ladder_to_markdown(rows))


@bench_app.command("quality")
def bench_quality_cmd(
    model: Annotated[str, typer.Option(help="Registry name, path or URL.")] = DEFAULT_MODEL,
    data: Annotated[Path, typer.Option(
        help="Sample data folder (layout of i2score.demo.sample_data).")] = Path("manifests/demo"),
    n_images: Annotated[int, typer.Option(help="Held-out images to use.")] = 16,
    steps_w: Annotated[int, typer.Option(help="Reconstruction W+ steps (paper: 5000).")] = 5000,
    steps_n: Annotated[int, typer.Option(help="Reconstruction noise steps (paper: 3000).")] = 3000,
    inpaint_steps_w: Annotated[int, typer.Option(help="Inpainting W+ Adam steps (the paper: 200 GD).")] = 1000,
    inpaint_steps_n: Annotated[int, typer.Option(help="Inpainting noise steps (paper: 1000).")] = 1000,
    photos: Annotated[bool, typer.Option(help="Also reconstruct the real photos.")] = True,
    inpainting: Annotated[bool, typer.Option(help="Also measure inpainting against Telea.")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="Write the full report (per image) as JSON here.")] = None,
    fast_kernels: Annotated[bool, typer.Option(help="Use the ordinary CPU kernels instead of the batch-invariant "
                                                    "ones (2-3x faster for small models on CPU; results then "
                                                    "depend on the batch size in the last bits).")] = False,
    seed: int = 0,
) -> None:
    """Quality table: reconstruction (W+ / W+ and noise) and inpainting vs OpenCV Telea."""
    import contextlib
    import json

    from i2score import kernels
    from i2score.bench.quality import markdown_table, quality_report
    from i2score.generator.checkpoints import load_generator

    G = load_generator(model, device=device)
    with kernels.fast_kernels() if fast_kernels else contextlib.nullcontext():
        report = quality_report(G, data, n_images=n_images, steps_w=steps_w, steps_n=steps_n,
                                inpaint_steps_w=inpaint_steps_w, inpaint_steps_n=inpaint_steps_n,
                                photos=photos, inpainting=inpainting, seed=seed,
                                log=lambda m: typer.echo(m, err=True))
    report["settings"]["fast_kernels"] = fast_kernels
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
    typer.echo(f"model {model} ({G.weights_sha256}), {steps_w}+{steps_n} reconstruction steps, "
               f"{inpaint_steps_w}+{inpaint_steps_n} inpainting steps, seed {seed}")
    typer.echo(markdown_table(report))


@bench_app.command("edits")
def bench_edits_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the contact sheets and edits.json.")] = Path("bench-out/edits"),
    model: Annotated[str, typer.Option(help="Registry name, path or URL.")] = DEFAULT_MODEL,
    data: Annotated[Path, typer.Option(
        help="Sample data folder (layout of i2score.demo.sample_data).")] = Path("manifests/demo"),
    embed_steps_w: Annotated[int, typer.Option(help="W+ steps of the initial embedding.")] = 1000,
    embed_steps_n: Annotated[int, typer.Option(help="Noise steps of the initial embedding.")] = 1000,
    steps_w: Annotated[int, typer.Option(help="W+ steps of each optimising edit (paper: 1000).")] = 1000,
    steps_n: Annotated[int, typer.Option(help="Noise steps of each optimising edit (paper: 1000).")] = 1000,
    inpaint_steps_w: Annotated[int, typer.Option(help="Inpainting W+ Adam steps (the paper: 200 GD).")] = 1000,
    inpaint_steps_n: Annotated[int, typer.Option(help="Inpainting noise steps (paper: 1000).")] = 1000,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    seed: int = 0,
) -> None:
    """Every edit on the sample data: a contact sheet per application and measured numbers."""
    import json

    from i2score.bench.edits import edits_report
    from i2score.generator.checkpoints import load_generator

    G = load_generator(model, device=device)
    report = edits_report(G, data, out, embed_steps_w=embed_steps_w, embed_steps_n=embed_steps_n,
                          steps_w=steps_w, steps_n=steps_n, inpaint_steps_w=inpaint_steps_w,
                          inpaint_steps_n=inpaint_steps_n, seed=seed, log=lambda m: typer.echo(m, err=True))
    (out / "edits.json").write_text(json.dumps(report, indent=1))
    typer.echo(str(out))


@bench_app.command("validate")
def bench_validate_cmd(
    root: Annotated[str, typer.Option(help="Folder or URL to write the synthetic manifest to.")] = "bench-out",
    rows: Annotated[int, typer.Option(help="Manifest rows.")] = 100_000,
    repeats: Annotated[int, typer.Option(help="Timed repeats of each variant (medians reported).")] = 3,
) -> None:
    """Time schema validation of a synthetic manifest (about 1% bad rows), unconfined and
    confined to the manifest's folder."""
    from i2score.bench.manifest import bench_validate
    from i2score.data.storage import safe_url

    result = bench_validate(rows, root, repeats)
    typer.echo(f"validated {result['rows']} rows ({result['rejected']} rejected) from {safe_url(root)} "
               f"in {result['wall_s']:.2f} s: {result['rows_per_s']:.0f} rows/s; confined to the manifest's "
               f"folder {result['confined_wall_s']:.2f} s: {result['confined_rows_per_s']:.0f} rows/s "
               f"(x{result['confinement_ratio']:.2f}; medians of {repeats}, alternating)")


@bench_app.command("cache")
def bench_cache_cmd(
    root: Annotated[str, typer.Option(help="An EMPTY scratch folder or URL for the synthetic cache.")],
    keys: Annotated[int, typer.Option(help="Index rows / keys looked up.")] = 100_000,
    num_ws: Annotated[int, typer.Option(help="Rows of w (18 = 1024 px).")] = 18,
) -> None:
    """Time a bulk cache lookup of KEYS keys (index read once; with and without the NPZ check)."""
    import json

    from i2score.bench.cache import bench_cache_lookup

    typer.echo(json.dumps(bench_cache_lookup(root, keys, w_shape=(num_ws, 512)), indent=2))



@bench_app.command("frontier")
def bench_frontier_cmd(
    model: Annotated[str, typer.Option(help="Generator: registry name, path or URL.")] = DEFAULT_MODEL,
    encoder: Annotated[str | None, typer.Option(help="Encoder (default: the generator's).")] = None,
    data: Annotated[Path, typer.Option(help="Sample data folder (images/heldout-NN.png, photos/*.png).")] = Path(
        "manifests/demo"),
    n_images: Annotated[int, typer.Option(help="Held-out portraits to embed.")] = 16,
    photos: Annotated[bool, typer.Option(help="Also embed the scikit-image photos.")] = True,
    reference: Annotated[str, typer.Option(help="The reference point W+N (paper batched from the mean; the "
                                                "paper's own is 5000+3000).")] = "1000+1000",
    methods: Annotated[str, typer.Option(help="Comma-separated subset of: paper-loop, paper, encoder, hybrid, "
                                              "hybrid+converge.")] = "paper-loop,paper,encoder,hybrid,hybrid+converge",
    batch: Annotated[int, typer.Option(help="Images per batch of the batched methods.")] = 8,
    loop_images: Annotated[int, typer.Option(help="Images of each set the per-image loop embeds.")] = 2,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    out: Annotated[Path, typer.Option(help="Writes OUT.json, OUT.md and OUT.png.")] = Path("bench-frontier"),
    seed: int = 0,
) -> None:
    """Quality (median/worst PSNR, LPIPS, SSIM) against seconds per image for every way to embed,
    measured in one run: JSON, a Markdown table and a PNG plot (one curve per method)."""
    import json

    import torch

    from i2score.bench.embed import environment
    from i2score.bench.frontier import METHODS, bench_frontier, default_points, plot, to_json, to_markdown
    from i2score.bench.quality import _load_rgb
    from i2score.demo.sample_data import PHOTOS
    from i2score.encoders.checkpoints import load_encoder
    from i2score.encoders.registry import default_encoder_for
    from i2score.features import VGGWeightsNotFoundError, load_lpips, load_vgg16
    from i2score.generator.checkpoints import load_generator

    chosen = _names(methods, METHODS, "method")
    G = load_generator(model, device=device)
    enc_source = encoder or default_encoder_for(model)
    needs_encoder = any(m in ("encoder", "hybrid", "hybrid+converge") for m in chosen)
    if needs_encoder and enc_source is None:
        raise typer.BadParameter(f"{model} has no default encoder: pass --encoder or leave out the encoder methods")
    E = load_encoder(enc_source, device=device) if needs_encoder and enc_source else None
    vgg = load_vgg16(device=device)
    try:
        lpips = load_lpips(device=device)
    except VGGWeightsNotFoundError:
        lpips = None
    sets = {"portraits": torch.stack([_load_rgb(data / "images" / f"heldout-{i:02d}.png") for i in range(n_images)])}
    if photos:
        sets["photos"] = torch.stack([_load_rgb(data / "photos" / f"{p}.png") for p in PHOTOS])
    sets = {k: v.to(device) for k, v in sets.items()}
    points = {m: p for m, p in default_points(reference).items() if m in chosen}
    console = Console(stderr=True)
    console.print(f"model {model}, encoder {enc_source}, reference {reference}, batch {batch}, device {device}")
    rows = bench_frontier(G, sets, vgg=vgg, lpips=lpips, encoder=E, points=points, batch=batch,
                          loop_images=loop_images, seed=seed, log=console.print)
    env = {**environment(device), "model": model, "encoder": enc_source, "batch": batch, "seed": seed,
           "command": "i2s bench frontier " + " ".join(f"--{k} {v}" for k, v in (
               ("reference", reference), ("batch", batch), ("n-images", n_images)))}
    report = to_json(rows, reference, env)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2))
    table = to_markdown(rows, reference)
    Path(f"{out}.md").write_text(table)
    plot(rows, f"{out}.png")
    typer.echo(table)
    typer.echo(json.dumps(report["targets"], indent=2))
    typer.echo(f"wrote {out}.json, {out}.md, {out}.png")



@bench_app.command("editability")
def bench_editability_cmd(
    model: Annotated[str, typer.Option(help="Generator: registry name, path or URL.")] = DEFAULT_MODEL,
    n_pairs: Annotated[int, typer.Option(help="Held-out (source, donor) pairs (>= 2).")] = 4,
    schedule: Annotated[str, typer.Option(help="Embedding schedule: a name or 'W+N' (a setting's 'embed' "
                                               "overrides it).")] = "40+40/10+10",
    settings: Annotated[list[str] | None, typer.Option(
        "--settings", help="Named settings of i2score.bench.editability.SETTINGS (repeat, or comma-separated); "
                           "default: mean, encoder (when the model has one), mean-w-only "
                           "(DEFAULT_SETTINGS).")] = None,
    define: Annotated[list[str] | None, typer.Option(
        "--define", help="An ad-hoc setting NAME=JSON (repeat), run after the --settings ones (alone when "
                         "--settings is not given; --settings may name it to set the order), e.g. "
                         "'k2={\"embed\": {\"init\": \"mean\"}, \"ops\": "
                         "{\"style_mix\": {\"k\": 2}}}'.")] = None,
    n_reference: Annotated[int, typer.Option(help="Held-out portraits of KID's reference set.")] = 64,
    n_samples: Annotated[int, typer.Option(help="Random samples of the generator whose KID is reported.")] = 32,
    encoder: Annotated[str | None, typer.Option(help="Encoder of 'encoder' settings (default: the model's).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    out: Annotated[Path, typer.Option("--out", "-o", help="Writes OUT.json, OUT.md, OUT-curve.png and "
                                                          "OUT-<setting>.png.")] = Path("bench-editability"),
    seed: int = 0,
) -> None:
    """Edits against ground truth on held-out procedural portraits (LPIPS, PSNR, change outside the
    edited region) and realism (KID on VGG16 features) of samples, reconstructions, edits and
    augmentations, for each setting: the distortion-editability curve."""
    import json
    import shlex

    from i2score.bench.editability import (
        DEFAULT_SETTINGS,
        SETTINGS,
        check_setting,
        editability_report,
        to_markdown,
        write_outputs,
    )
    from i2score.encoders.registry import default_encoder_for
    from i2score.features import load_lpips, load_vgg16
    from i2score.generator.checkpoints import load_generator
    from i2score.runs.config import Schedule

    if n_pairs < 2:
        raise typer.BadParameter(f"need at least 2 pairs (KID needs two images per set), got {n_pairs}",
                                 param_hint="--n-pairs")
    try:
        sched = Schedule.parse(schedule)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--schedule") from None
    enc_source = encoder or default_encoder_for(model)
    defined: dict[str, dict[str, Any]] = {}
    for text in define or []:
        name, eq, value = text.partition("=")
        try:
            if not eq or not name.strip():
                raise ValueError("expected NAME=JSON")
            setting = json.loads(value)
            if not isinstance(setting, dict):
                raise ValueError("the JSON must be an object")
            check_setting(name.strip(), setting)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise typer.BadParameter(f"{text!r}: {e}", param_hint="--define") from None
        defined[name.strip()] = setting
    if settings:
        names = [s.strip() for v in settings for s in v.split(",") if s.strip()]
    elif defined:
        names = []
    else:
        names = [n for n in DEFAULT_SETTINGS if n != "encoder" or enc_source is not None]
    # A --settings name may be one of the --define names (it then runs in that order).
    unknown = [n for n in names if n not in SETTINGS and n not in defined]
    if unknown:
        known = ", ".join([*SETTINGS, *defined])
        raise typer.BadParameter(f"unknown setting(s) {unknown}; known: {known}", param_hint="--settings")
    chosen = {**{n: defined.get(n, SETTINGS.get(n, {})) for n in names}, **defined}
    needs_encoder = any(s.get("embed", {}).get("init") == "encoder" for s in chosen.values())
    if needs_encoder and enc_source is None:
        raise typer.BadParameter(f"{model} has no default encoder: pass --encoder or leave out the encoder settings")
    G = load_generator(model, device=device)
    E = None
    if needs_encoder and enc_source is not None:
        from i2score.encoders.checkpoints import load_encoder

        E = load_encoder(enc_source, device=device)
    # The command that gives these numbers again, every option spelled out.
    command = "i2s bench editability " + shlex.join([
        "--model", model, "--n-pairs", str(n_pairs), "--schedule", schedule,
        *(["--settings", ",".join(names)] if names else []),
        *[a for name, value in defined.items() for a in ("--define", f"{name}={json.dumps(value)}")],
        "--n-reference", str(n_reference), "--n-samples", str(n_samples),
        *(["--encoder", enc_source] if needs_encoder and enc_source else []), "--device", device,
        "-o", str(out), "--seed", str(seed)])
    console = Console(stderr=True)
    console.print(f"model {model}, {n_pairs} pairs, schedule {schedule}, settings {', '.join(chosen)}, device {device}")
    report, pictures = editability_report(G, settings=chosen, schedule=sched, n_pairs=n_pairs,
                                          n_reference=n_reference, n_samples=n_samples,
                                          vgg=load_vgg16(device=device), lpips=load_lpips(device=device),
                                          encoder=E, seed=seed, command=command, log=console.print)
    paths = write_outputs(report, pictures, out)
    typer.echo(to_markdown(report))
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


@bench_app.command("generator")
def bench_generator_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Generator (registry name, path or URL) trained on the procedural portraits; repeat to "
                        "compare (default: the default model).")] = None,
    n_samples: Annotated[int, typer.Option(help="Random samples per model for KID.")] = 256,
    n_reference: Annotated[int, typer.Option(help="Held-out portraits of KID's reference set.")] = 256,
    n_ppl: Annotated[int, typer.Option(help="Pairs of the perceptual path length.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of samples and pairs (the same for every model).")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    out: Annotated[Path, typer.Option("--out", "-o", help="Writes OUT.json and OUT.md.")] = Path("bench-generator"),
) -> None:
    """Realism (KID on VGG16 features vs held-out portraits) and perceptual path length of
    generators side by side, with the same seeds."""
    import json
    import time

    from i2score.bench.generator import generator_quality
    from i2score.features import load_lpips, load_vgg16
    from i2score.features.kid import KID_NOTE
    from i2score.generator.checkpoints import load_generator

    models = model or [DEFAULT_MODEL]
    vgg, lpips = load_vgg16(device=device), load_lpips(device=device)
    rows = []
    for name in models:
        G = load_generator(name, device=device)
        t0 = time.perf_counter()
        row = {"model": name, **generator_quality(G, vgg, lpips, n_samples=n_samples, n_reference=n_reference,
                                                  n_ppl=n_ppl, seed=seed), "seconds": 0.0}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        typer.echo(f"{name}: KID {row['kid']:.4f} ± {row['kid_std']:.4f}, PPL {row['ppl']:.2f} "
                   f"(median {row['ppl_median']:.2f}), {row['seconds']} s")
    base = rows[0]
    lines = [f"`i2s bench generator {' '.join('--model ' + m for m in models)} --n-samples {n_samples} "
             f"--n-reference {n_reference} --n-ppl {n_ppl} --seed {seed}`", "",
             "| model | KID (± std) | KID / first | PPL (W, ends) | PPL / first |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kid']:.4f} ± {r['kid_std']:.4f} | {r['kid'] / base['kid']:.2f} | "
                     f"{r['ppl']:.2f} | {r['ppl'] / base['ppl']:.2f} |")
    lines += ["", KID_NOTE]
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"rows": rows, "kid_note": KID_NOTE}, indent=2))
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))
    typer.echo(f"wrote {out}.json, {out}.md")
