"""A cache and finished runs written by the code before the layout change stay valid after it.

``tests/fixtures/pre_layout`` was written by commit 2c1c5b6 (see its README): four portraits
reconstructed, every edit op, inpainting with two solutions and augmentation, on the demo model
with a 2+2 schedule. One change since is deliberate: morph, style mixing, expression transfer
and the augment run's drawn style-mix and interpolate parameters gained ``noise_policy`` and
``noise_seed`` (issue 19), so the edit and augment runs' replanned batch ids in
``expected.json`` were re-recorded (finished runs stay no-ops and keep their ids). The
manifests live at ``memory://i2s-pre-layout/`` because a run id is a digest of the manifest URL
among other things, and a memory URL is the same on every machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import pytest

from i2score.data.cache import LatentCache
from i2score.runs.config import JobConfig
from i2score.runs.plan import plan_run

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pre_layout"
BASE = "memory://i2s-pre-layout"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
KINDS = ("reconstruct", "edit", "inpaint", "augment")


@pytest.fixture()
def old_root(tmp_path: Path):
    """A copy of the pre-layout root, and its inputs at the URLs they had."""
    fs = fsspec.filesystem("memory")
    for p in (FIXTURE / "inputs").rglob("*"):
        if p.is_file():
            fs.pipe(f"{BASE}/{p.relative_to(FIXTURE / 'inputs').as_posix()}", p.read_bytes())
    root = tmp_path / "root"
    shutil.copytree(FIXTURE / "root", root)
    yield str(root)
    fs.rm(BASE, recursive=True)


@pytest.fixture(autouse=True)
def _default_model_of_the_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fixture's runs named no model, so they ran on the default of their day, demo-faces-64
    # (since issue 19 the same command plans a new run on demo-faces-64-v2).
    assert all(run["config"]["model"] is None for run in EXPECTED["runs"].values())
    for module in ("i2score.runs.plan", "i2score.runs.context", "i2score.generator.registry"):
        monkeypatch.setattr(f"{module}.DEFAULT_MODEL", "demo-faces-64")


def _config(kind: str, root: str) -> JobConfig:
    return JobConfig.from_json({**EXPECTED["runs"][kind]["config"], "root": root})


@pytest.mark.parametrize("kind", KINDS)
def test_finished_pre_layout_runs_are_noops(old_root: str, kind: str) -> None:
    plan = plan_run(_config(kind, old_root))
    assert plan.run_id == EXPECTED["runs"][kind]["run_id"]
    assert plan.digest == EXPECTED["runs"][kind]["digest"]
    assert plan.noop and plan.phases == []


@pytest.mark.parametrize("kind", ("edit", "inpaint", "augment"))
def test_replanning_gives_the_same_batches(old_root: str, kind: str) -> None:
    # Without its run folder the job is planned again from the same cache: the batch ids are
    # digests of the items (rows, cache keys, resolved params, drawn augmentations), so equal
    # ids mean the planner reads every op as before.
    expected = EXPECTED["runs"][kind]
    shutil.rmtree(Path(old_root) / "runs" / expected["run_id"])
    plan = plan_run(_config(kind, old_root))
    assert plan.run_id == expected["run_id"] and not plan.noop
    assert plan.phases == expected["phases"]
    assert plan.counts == expected["counts"]


def test_pre_layout_cache_entries_are_hits(old_root: str) -> None:
    assert LatentCache(old_root).verify().ok
    # The same images under other ids: a new run, whose every embedding is a cache hit.
    fsspec.filesystem("memory").pipe(f"{BASE}/renamed.csv",
                                     b"id,image\nq0,images/heldout-00.png\nq1,images/heldout-01.png\n"
                                     b"q2,images/heldout-02.png\nq3,images/heldout-03.png\n")
    config = JobConfig.from_json({**EXPECTED["runs"]["reconstruct"]["config"], "root": old_root,
                                  "manifest": f"{BASE}/renamed.csv"})
    plan = plan_run(config)
    assert plan.run_id != EXPECTED["runs"]["reconstruct"]["run_id"]
    assert plan.counts["cache_hits"] == 4 and plan.counts["to_embed"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_run_id_is_known_before_planning(old_root: str, kind: str) -> None:
    # The run lease is taken on this id before anything of the run is written.
    from i2score.runs.plan import run_identity

    ident = run_identity(_config(kind, old_root))
    assert (ident.run_id, ident.digest) == (EXPECTED["runs"][kind]["run_id"], EXPECTED["runs"][kind]["digest"])
