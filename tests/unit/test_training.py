"""Training loop mechanics on a tiny configuration (16 px, a few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from i2score import kernels
from i2score.demo.training import Discriminator, TrainConfig, Trainer, load_portrait_dataset, sample_grid, train
from i2score.generator.checkpoints import load_generator, load_generator_file, save_generator

TINY = TrainConfig(resolution=16, channel_multiplier=0.125, channel_max=16, n_mapping=2, w_dim=32, batch=4,
                   kimg=0.024, dataset_size=32, r1_every=2, snapshot_every=3, log_every=2, seed=3)


@pytest.fixture(scope="module")
def tiny_data() -> torch.Tensor:
    return load_portrait_dataset(TINY)


def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.state_dict().values() if p.is_floating_point()])


def test_discriminator_shapes_and_gradients() -> None:
    D = Discriminator(32, channel_multiplier=0.125, channel_max=16)
    x = torch.randn(8, 3, 32, 32, requires_grad=True)
    out = D(x)
    assert out.shape == (8,)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert D(torch.randn(3, 3, 32, 32)).shape == (3,)  # batch not divisible by the mbstd group


def test_dataset_is_uint8_portraits(tiny_data: torch.Tensor) -> None:
    assert tiny_data.shape == (32, 3, 16, 16) and tiny_data.dtype == torch.uint8
    assert tiny_data.float().std() > 20


def test_training_is_deterministic_and_moves_the_weights(tiny_data: torch.Tensor) -> None:
    with kernels.fast_kernels():
        a, b = Trainer(TINY, tiny_data), Trainer(TINY, tiny_data)
        start = _params(a.G).clone()
        stats = [a.train_step() for _ in range(3)]
        for _ in range(3):
            b.train_step()
    assert "r1" in stats[0] and all(torch.isfinite(torch.tensor(list(s.values()))).all() for s in stats)
    assert torch.equal(_params(a.G), _params(b.G))
    assert torch.equal(_params(a.D), _params(b.D))
    assert torch.equal(_params(a.G_ema), _params(b.G_ema))
    assert not torch.equal(_params(a.G), start)
    # The tracked mean w moved away from zero (truncation and embedding start from it).
    assert a.G.w_avg.abs().sum() > 0


def test_fast_kernels_restores_batch_invariance() -> None:
    assert kernels.batch_invariance_enabled()
    with kernels.fast_kernels():
        assert not kernels.batch_invariance_enabled()
    assert kernels.batch_invariance_enabled()


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(TINY, whole, log=lambda m: None)
    train(TINY, parts, max_steps=4, log=lambda m: None)  # snapshot at step 3 and at the stop (4)
    state = torch.load(parts / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4
    train(TINY, parts, log=lambda m: None)
    a = torch.load(whole / "checkpoint.pt", weights_only=False)
    b = torch.load(parts / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == TINY.total_steps
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert (whole / "samples.png").is_file() and (whole / "log.jsonl").read_text().count("\n") >= 3
    G = load_generator(whole / "generator.pt")
    assert G.has_w_avg and G.resolution == 16
    assert sample_grid(G, 4, seed=0).shape == (32, 32, 3)


def test_compact_state_continues_the_run_in_a_fresh_folder(tmp_path: Path) -> None:
    first, fresh = tmp_path / "first", tmp_path / "fresh"
    state_file = tmp_path / "state" / "run.pt"
    train(TINY, first, max_steps=4, export_state=state_file, log=lambda m: None)
    full = torch.load(first / "checkpoint.pt", weights_only=False)
    compact = torch.load(state_file, weights_only=False)
    assert compact["step"] == 4 and "opt_G" not in compact and compact["compact_dtype"] == "float16"
    assert compact["compact_opt_G"]["state"][0]["exp_avg_sq"].dtype == torch.bfloat16
    assert state_file.stat().st_size < 0.5 * (first / "checkpoint.pt").stat().st_size
    # Nothing left to train: the fresh folder still gets its checkpoint and generator.
    train(TINY, fresh, max_steps=0, resume_from=state_file, log=lambda m: None)
    resumed = torch.load(fresh / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == 4 and resumed["cursor"] == full["cursor"]
    assert torch.equal(resumed["order"], full["order"]) and torch.equal(resumed["gen"], full["gen"])
    for key in ("G", "D", "G_ema"):
        for name, t in full[key].items():
            assert resumed[key][name].dtype == t.dtype
            assert torch.equal(resumed[key][name], t.half().float() if t.is_floating_point() else t), (key, name)
    for opt in ("opt_G", "opt_D"):
        for idx, st in full[opt]["state"].items():
            assert torch.equal(resumed[opt]["state"][idx]["exp_avg_sq"], st["exp_avg_sq"].bfloat16().float())
            assert torch.equal(resumed[opt]["state"][idx]["step"], st["step"])
    assert (fresh / "generator.pt").is_file()
    train(TINY, fresh, resume_from=state_file, log=lambda m: None)  # checkpoint.pt wins over resume_from
    assert torch.load(fresh / "checkpoint.pt", weights_only=False)["step"] == TINY.total_steps
    with pytest.raises(FileNotFoundError, match="no such file"):
        train(TINY, tmp_path / "other", resume_from=tmp_path / "missing.pt", log=lambda m: None)
    with pytest.raises(ValueError, match="not a compact training state"):
        train(TINY, tmp_path / "other", resume_from=first / "checkpoint.pt", log=lambda m: None)
    with pytest.raises(ValueError, match="trained with"):
        train(TrainConfig(**{**TINY.__dict__, "r1_gamma": 1.0}), tmp_path / "third", resume_from=state_file,
              log=lambda m: None)


def test_adam_with_beta1_zero_never_reads_its_first_moment() -> None:
    # Why a compact state may drop exp_avg: the next step overwrites it before using it.
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(5))
    p2 = torch.nn.Parameter(p1.detach().clone())
    opt1 = torch.optim.Adam([p1], lr=0.01, betas=(0.0, 0.99))
    opt2 = torch.optim.Adam([p2], lr=0.01, betas=(0.0, 0.99))
    grads = torch.randn(3, 5)
    for g in grads[:2]:
        for p, opt in ((p1, opt1), (p2, opt2)):
            p.grad = g.clone()
            opt.step()
    opt2.state[p2]["exp_avg"].zero_()
    for p, opt in ((p1, opt1), (p2, opt2)):
        p.grad = grads[2].clone()
        opt.step()
    assert torch.equal(p1, p2)


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    train(TINY, tmp_path, max_steps=2, log=lambda m: None)
    other = TrainConfig(**{**TINY.__dict__, "r1_gamma": 1.0})
    with pytest.raises(ValueError, match="trained with"):
        train(other, tmp_path, log=lambda m: None)
    # The run length may change (stop at an earlier snapshot, or train longer), not go backwards.
    shorter = TrainConfig(**{**TINY.__dict__, "kimg": 0.004})  # 1 step
    with pytest.raises(ValueError, match="past this run's end"):
        train(shorter, tmp_path, log=lambda m: None)
    longer = TrainConfig(**{**TINY.__dict__, "kimg": 0.032})
    train(longer, tmp_path, log=lambda m: None)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == longer.total_steps


def test_float16_export_round_trips(tmp_path: Path, small_G) -> None:
    save_generator(small_G, tmp_path / "g16.pt", dtype=torch.float16)
    save_generator(small_G, tmp_path / "g32.pt")
    g16 = load_generator_file(tmp_path / "g16.pt")
    assert (tmp_path / "g16.pt").stat().st_size < 0.6 * (tmp_path / "g32.pt").stat().st_size
    for name, v in small_G.state_dict().items():
        assert g16.state_dict()[name].dtype == torch.float32
        assert torch.equal(g16.state_dict()[name], v.half().float()), name


def test_amp_is_refused_on_cpu(tiny_data: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="only used on CUDA"):
        Trainer(TINY, tiny_data, amp=True)


def test_cli_train_help() -> None:
    from typer.testing import CliRunner

    from i2score.cli.app import app

    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "resume" in result.output.lower()
    assert "--resume-from" in result.output and "--export-state" in result.output


def test_path_length_regularisation_runs_lazily_and_tracks_its_mean(tiny_data: torch.Tensor) -> None:
    cfg = TrainConfig(**{**TINY.__dict__, "pl_every": 2})
    off = TrainConfig(**{**TINY.__dict__, "pl_weight": 0.0})
    with kernels.fast_kernels():
        t = Trainer(cfg, tiny_data)
        stats = [t.train_step() for _ in range(3)]
        plain = Trainer(off, tiny_data)
        plain_stats = [plain.train_step() for _ in range(3)]
    assert ["pl_length" in s for s in stats] == [True, False, True]
    assert all(s["pl_length"] > 0 for s in stats if "pl_length" in s)
    # The running mean moves from 0 towards the measured lengths by pl_decay per update.
    first = stats[0]["pl_length"] * cfg.pl_decay
    assert float(t.pl_mean) > first * 0.99 > 0
    assert not any("pl_length" in s for s in plain_stats) and float(plain.pl_mean) == 0.0
    # The penalty changes the generator's update.
    assert not torch.equal(_params(t.G), _params(plain.G))


def test_init_from_starts_the_generator_from_an_exported_model(tmp_path: Path, tiny_data: torch.Tensor) -> None:
    first = tmp_path / "first"
    train(TINY, first, max_steps=2, log=lambda m: None)
    g0 = load_generator(first / "generator.pt")
    cfg = TrainConfig(**{**TINY.__dict__, "init_from": str(first / "generator.pt"), "seed": 4})
    t = Trainer(cfg, tiny_data)
    t.init_generator(g0)
    assert torch.equal(_params(t.G), _params(g0)) and torch.equal(_params(t.G_ema), _params(g0))
    messages: list[str] = []
    second = tmp_path / "second"
    train(cfg, second, max_steps=1, log=messages.append)
    assert any("initialised from" in m for m in messages)
    # One step from g0 stays near g0; a fresh generator of another seed is far from it.
    g1 = load_generator(second / "generator.pt")
    fresh = Trainer(TrainConfig(**{**TINY.__dict__, "seed": 4}), tiny_data)
    assert (_params(g1) - _params(g0)).norm() < 0.2 * (_params(fresh.G) - _params(g0)).norm()
    # A resumed run keeps its own checkpoint instead of re-initialising.
    messages.clear()
    train(cfg, second, max_steps=1, log=messages.append)
    assert any("resumed" in m for m in messages) and not any("initialised" in m for m in messages)
    wide = TrainConfig(**{**TINY.__dict__, "channel_max": 32, "init_from": str(first / "generator.pt")})
    with pytest.raises(ValueError, match="does not match"):
        train(wide, tmp_path / "third", max_steps=1, log=lambda m: None)


def test_discriminator_warmup_keeps_the_generator_still(tiny_data: torch.Tensor) -> None:
    cfg = TrainConfig(**{**TINY.__dict__, "d_warmup_steps": 2, "pl_every": 1})
    with kernels.fast_kernels():
        t = Trainer(cfg, tiny_data)
        def weights(m: torch.nn.Module) -> torch.Tensor:  # parameters only: the tracked mean w may move
            return torch.cat([p.detach().flatten() for p in m.parameters()])

        g0, d0 = weights(t.G).clone(), weights(t.D).clone()
        stats = [t.train_step() for _ in range(2)]
        assert torch.equal(weights(t.G), g0) and not torch.equal(weights(t.D), d0)
        assert not any("pl_length" in s for s in stats)
        after = t.train_step()
    assert not torch.equal(weights(t.G), g0) and "pl_length" in after
    # The path-length mean starts at the first measurement, not at 0.
    assert float(t.pl_mean) == pytest.approx(after["pl_length"], rel=1e-5)
