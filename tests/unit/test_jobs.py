"""i2score.runs without Prefect: batches prefetch the inputs of the next batch."""

from __future__ import annotations

import shutil
from pathlib import Path

from i2score.runs import prefetch
from i2score.runs.config import JobConfig
from i2score.runs.execute import run_batch
from i2score.runs.plan import plan_run
from i2score.runs.records import RunPaths, read_json

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"


def test_next_batch_inputs_are_prefetched_while_a_batch_runs(tmp_path):
    for i in range(2):
        shutil.copy(DEMO / "images" / f"heldout-0{i}.png", tmp_path / f"p{i}.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image\np0,p0.png\np1,p1.png\n")
    config = JobConfig("reconstruct", str(manifest), str(tmp_path / "root"), None, "2+2", 1, "cpu", 0, None)
    plan = plan_run(config)
    first, second = plan.phases[0]
    specs = [read_json(RunPaths(config.root, plan.run_id).spec_url(b)) for b in (first, second)]
    assert specs[0]["next_batch"] == second and specs[1]["next_batch"] is None

    assert len(run_batch(config.root, plan.run_id, first).outputs) == 1
    assert prefetch.prefetch_thread is not None
    prefetch.prefetch_thread.join(timeout=30)
    # The second batch's image is gone from disk: the batch can only succeed from the prefetch.
    (tmp_path / "p1.png").unlink()
    out = run_batch(config.root, plan.run_id, second)
    assert [o["id"] for o in out.outputs] == ["p1"] and out.errors == []


def _random_encoder(path: Path, seed: int) -> str:
    import torch

    from i2score.encoders import EncoderConfig
    from i2score.encoders.build import build_encoder
    from i2score.encoders.native import save_encoder
    from i2score.generator.checkpoints import load_generator

    G = load_generator("demo-faces-64")
    torch.manual_seed(seed)
    enc = build_encoder(EncoderConfig(arch="e4e", backbone="small", n_styles=G.num_ws, w_dim=G.w_dim, input_size=64),
                        G.mean_w(100, 0))
    save_encoder(enc, path, generator="demo-faces-64")
    return str(path)


def test_an_embedding_made_with_one_encoder_is_no_hit_for_another_and_warm_starts_a_longer_one(tmp_path):
    shutil.copy(DEMO / "images" / "heldout-00.png", tmp_path / "p0.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image\np0,p0.png\n")
    enc_a, enc_b = _random_encoder(tmp_path / "a.pt", 1), _random_encoder(tmp_path / "b.pt", 2)
    root = str(tmp_path / "root")

    def run(schedule: str, encoder: str) -> tuple[dict, list]:
        config = JobConfig("reconstruct", str(manifest), root, None, schedule, 1, "cpu", 0, None, init="encoder",
                           encoder=encoder)
        plan = plan_run(config)
        outs = [run_batch(root, plan.run_id, b) for phase in plan.phases for b in phase]
        return plan.counts, [o["metrics"] for out in outs for o in out.outputs]

    counts, _ = run("2+2", enc_a)
    assert counts["to_embed"] == 1
    assert run("2+2", enc_a)[0]["batches"] == 0  # finished: nothing to do
    counts, _ = run("2+2", enc_b)  # another encoder: another embedding
    assert counts["to_embed"] == 1 and counts["cache_hits"] == 0
    counts, metrics = run("4+2", enc_a)  # a longer schedule continues encoder a's W+ stage
    assert counts["to_embed"] == 1 and metrics[0]["warm_start"] == 2 and metrics[0]["steps"] == 6


def test_w_closeness_is_part_of_the_embedding_and_of_its_cache_key(tmp_path):
    from i2score.runs.config import DEFAULT_W_CLOSENESS, Schedule
    from i2score.runs.plan import job_identity, schedule_identity

    shutil.copy(DEMO / "images" / "heldout-00.png", tmp_path / "p0.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image\np0,p0.png\n")
    root = str(tmp_path / "root")

    def run(closeness: str | None) -> tuple[dict, list]:
        config = JobConfig("reconstruct", str(manifest), root, None, "3+0", 1, "cpu", 0, None, init="mean",
                           w_closeness=closeness)
        plan = plan_run(config)
        outs = [run_batch(root, plan.run_id, b) for phase in plan.phases for b in phase]
        return plan.counts, [o["metrics"] for out in outs for o in out.outputs]

    assert DEFAULT_W_CLOSENESS["reconstruct"] == "none"
    counts, plain = run(None)
    assert counts["to_embed"] == 1
    assert run("none")[0]["batches"] == 0  # the default spelled out: the same job, finished
    counts, held = run("offset=0.5")  # another prior: another embedding, with a smaller row spread
    assert counts["to_embed"] == 1 and counts["cache_hits"] == 0
    assert held[0]["w_row_offset"] < plain[0]["w_row_offset"]
    # Older runs and cache entries keep their ids: an unset prior adds nothing to either.
    config = JobConfig("reconstruct", str(manifest), root, init="mean")
    assert "w_closeness" not in job_identity(config)
    sched = config.resolved_schedule()
    assert "w_offset_weight" not in schedule_identity(sched) and "w_closeness" not in sched.reconstruct_params(0)
    held_sched = Schedule.parse("3+0", w_closeness="pnorm=0.1")
    assert held_sched.reconstruct_params(0)["w_closeness"] == {"offset": 0.0, "pnorm": 0.1}
