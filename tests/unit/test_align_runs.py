"""Face alignment in batch jobs (without Prefect): ``i2s align``, and ``align`` / ``paste_back``
runs whose aligned inputs and transforms are cached with the embeddings."""

from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from i2score.data.align import FaceAlignment, quad_mask
from i2score.data.cache import LatentCache
from i2score.runs.config import JobConfig
from i2score.runs.execute import cached_alignment, run_batch
from i2score.runs.outputs import read_table
from i2score.runs.plan import plan_run
from i2score.runs.records import RunPaths
from i2score.runs.report import finish_run


def _photos(folder):
    """Two faces (the astronaut at 256 px, an upscaled LFW face on a border) and a coffee cup."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.LANCZOS).save(folder / "astro.png")
    lfw = Image.fromarray((data.lfw_subset()[1] * 255).round().astype(np.uint8)).convert("RGB")
    big = np.asarray(lfw.resize((100, 100), Image.Resampling.BICUBIC))
    Image.fromarray(np.pad(big, ((50, 50), (50, 50), (0, 0)), mode="edge")).save(folder / "lfw.png")
    Image.fromarray(data.coffee()).resize((150, 100)).save(folder / "cup.jpg")
    return folder


def _run(config: JobConfig) -> tuple[str, list]:
    plan = plan_run(config)
    outs = [run_batch(config.root, plan.run_id, b) for phase in plan.phases for b in phase]
    finish_run(config.root, plan.run_id, plan.attempt)
    return plan.run_id, outs


def test_i2s_align_writes_aligned_faces_their_transforms_and_no_face_rows(tmp_path):
    from i2score.cli.app import app

    src = _photos(tmp_path / "in")
    res = CliRunner().invoke(app, ["align", str(src), "-o", str(tmp_path / "out"), "--size", "64"])
    assert res.exit_code == 1, res.output  # one row rejected
    assert "aligned 2 images" in res.output and "cup: no_face" in res.output
    with open(tmp_path / "out" / "aligned.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["astro", "lfw"]
    errors = (tmp_path / "out" / "errors.csv").read_text().splitlines()
    assert errors[1].startswith("cup,") and ",no_face," in errors[1]
    for r in rows:
        al = FaceAlignment.from_dict(json.loads(r["alignment"]))
        assert al.size == 64 and Image.open(tmp_path / "out" / r["image"]).size == (64, 64)
        assert int(r["faces"]) == al.faces >= 1
    # aligned.csv is a reconstruct manifest as it stands.
    res = CliRunner().invoke(app, ["validate", str(tmp_path / "out" / "aligned.csv")])
    assert res.exit_code == 0, res.output


def test_an_aligned_run_caches_the_transform_and_pastes_back_into_the_photo(tmp_path):
    src = _photos(tmp_path / "in")
    root = str(tmp_path / "root")
    config = JobConfig("reconstruct", str(src), root, None, "2+2", 8, "cpu", 0, None, align=True)
    run_id, outs = _run(config)
    errors = [e for o in outs for e in o.errors]
    assert [(e["id"], e["reason_code"]) for e in errors] == [("cup", "no_face")]
    manifest = read_table(RunPaths(root, run_id).url("manifest.parquet")).to_pylist()
    assert sorted(r["id"] for r in manifest) == ["astro", "lfw"]
    lineage = {r["id"]: json.loads(r["alignment"]) for r in manifest}
    assert lineage["astro"]["faces"] >= 1 and lineage["astro"]["size"] == 64
    assert Image.open(RunPaths(root, run_id).url("outputs/astro.png")).size == (64, 64)
    # The cache holds the transform and the aligned input with the embedding.
    key = manifest[0]["cache_keys"][0]
    entry = LatentCache(root).get(key)
    assert entry is not None
    cached = cached_alignment(entry)
    assert cached is not None and cached["quad"] == lineage[manifest[0]["id"]]["quad"]
    assert Image.open(io.BytesIO(base64.b64decode(cached["aligned_png"]))).size == (64, 64)

    # Unaligned, the same images are other embeddings (another key).
    plain = plan_run(JobConfig("reconstruct", str(src), root, None, "2+2", 8, "cpu", 0, None))
    assert plain.counts["cache_hits"] == 0

    # --paste-back: from the cache (no embedding), the outputs are the photos with the face replaced.
    paste = JobConfig("reconstruct", str(src), root, None, "2+2", 8, "cpu", 0, None, align=True, paste_back=True)
    run_id, outs = _run(paste)
    assert sum(o.embedding_steps for o in outs) == 0 and sum(o.cache_hits for o in outs) == 2
    manifest = {r["id"]: r for r in read_table(RunPaths(root, run_id).url("manifest.parquet")).to_pylist()}
    for name, file in (("astro", "astro.png"), ("lfw", "lfw.png")):
        photo = np.asarray(Image.open(src / file).convert("RGB"))
        out = np.asarray(Image.open(RunPaths(root, run_id).url(f"outputs/{name}.png")).convert("RGB"))
        assert out.shape == photo.shape
        al = FaceAlignment.from_dict(json.loads(manifest[name]["alignment"]))
        inside = quad_mask(al)
        np.testing.assert_array_equal(out[~inside], photo[~inside])
        assert (out[inside] != photo[inside]).any()
        aligned_url = json.loads(manifest[name]["alignment"])["aligned_url"]
        assert Image.open(aligned_url).size == (64, 64)


def test_edits_of_aligned_rows_are_pasted_back_with_their_masks_warped(tmp_path):
    src = _photos(tmp_path / "in")
    mask = np.zeros((256, 256), np.uint8)
    mask[45:70, 88:135] = 255  # over the astronaut's eyes
    Image.fromarray(mask).save(src / "astro_mask.png")
    (src / "edits.csv").write_text(
        "id,op,image,ref,mask,params\n"
        "morph,morph,astro.png,lfw.png,,\"{\"\"t\"\": 0.5}\"\n"
        "fill,inpaint,astro.png,,astro_mask.png,\"{\"\"k\"\": 1}\"\n"
        "none,morph,cup.jpg,lfw.png,,\"{\"\"t\"\": 0.5}\"\n")
    root = str(tmp_path / "root")
    config = JobConfig("edit", str(src / "edits.csv"), root, None, "2+2", 8, "cpu", 0, None, align=True,
                       paste_back=True)
    run_id, outs = _run(config)
    errors = sorted((e["id"], e["reason_code"]) for o in outs for e in o.errors)
    # The cup has no face: its embedding is no_face, the edit that uses it source_failed.
    assert errors == [("none", "no_face"), ("none", "source_failed")]
    manifest = {r["id"]: r for r in read_table(RunPaths(root, run_id).url("manifest.parquet")).to_pylist()}
    assert sorted(manifest) == ["fill-k0", "morph"]
    photo = np.asarray(Image.open(src / "astro.png").convert("RGB"))
    for oid, r in manifest.items():
        lineage = json.loads(r["alignment"])
        al = FaceAlignment.from_dict(lineage)
        out = np.asarray(Image.open(r["output_url"]).convert("RGB"))
        inside = quad_mask(al)
        np.testing.assert_array_equal(out[~inside], photo[~inside], err_msg=oid)
        if oid == "morph":
            assert lineage["ref"]["faces"] >= 1


def test_paste_back_needs_align_and_is_not_for_augmentation(tmp_path):
    with pytest.raises(ValueError, match="needs align"):
        JobConfig("reconstruct", str(tmp_path), str(tmp_path), paste_back=True)
    with pytest.raises(ValueError, match="augmentation"):
        JobConfig("augment", str(tmp_path), str(tmp_path), align=True, paste_back=True)


def test_an_align_column_aligns_rows_of_its_own(tmp_path):
    src = _photos(tmp_path / "in")
    (src / "m.csv").write_text("id,image,align\nastro,astro.png,\nlfw,lfw.png,true\nodd,astro.png,maybe\n"
                               "plain,lfw.png,no\n")
    root = str(tmp_path / "root")
    config = JobConfig("reconstruct", str(src / "m.csv"), root, None, "2+2", 8, "cpu", 0, None)
    run_id, outs = _run(config)
    errors = [(e["id"], e["reason_code"]) for o in outs for e in o.errors]
    assert errors == []
    rejected = read_table(RunPaths(root, run_id).url("errors.parquet")).to_pylist()
    assert [(r["id"], r["reason_code"], r["field"]) for r in rejected] == [("odd", "invalid_params", "align")]
    manifest = {r["id"]: r for r in read_table(RunPaths(root, run_id).url("manifest.parquet")).to_pylist()}
    assert manifest["astro"]["alignment"] is None and manifest["plain"]["alignment"] is None
    assert json.loads(manifest["lfw"]["alignment"])["faces"] == 1
    assert json.loads(manifest["lfw"]["params"])["align"] == 1
    assert "align" not in json.loads(manifest["plain"]["params"])
    # One file, aligned and not: two embeddings.
    assert manifest["lfw"]["cache_keys"] != manifest["plain"]["cache_keys"]
    # With --align the column still turns it off for a row.
    both = JobConfig("reconstruct", str(src / "m.csv"), root, None, "2+2", 8, "cpu", 0, None, align=True)
    assert not both.aligns(next(r for r in plan_rows(both) if r.id == "plain"))
    assert both.aligns(next(r for r in plan_rows(both) if r.id == "astro"))


def plan_rows(config: JobConfig) -> list:
    from i2score.data.manifest import validate_manifest
    from i2score.runs.ops import CATALOG

    return validate_manifest(config.read_manifest(), CATALOG, kind="reconstruct").rows
