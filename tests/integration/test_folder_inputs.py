"""Folder and glob inputs through the flows (local and on SeaweedFS S3): the same rows, outputs,
latents and cache keys as the equivalent manifest. Run ids differ from the manifest's (the job
holds the input's URL and the manifest's bytes), and are stable for one folder."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
import torch

from i2score.data import storage
from i2score.data.cache import LatentCache

from .test_flows import DEMO, SCHEDULE

pytestmark = pytest.mark.usefixtures("prefect_api")

IMAGES = ("heldout-01.png", "heldout-02.png", "heldout-03.png")


def _put(url: str, data: bytes) -> str:
    storage.write_bytes(url, data)
    return url


def _outputs(result: dict) -> dict[str, tuple]:
    """Per output id: its source ids, cache keys, image bytes and PSNR."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(result["run_url"], "manifest.parquet"))))
    return {r["id"]: (tuple(r["source_ids"]), tuple(r["cache_keys"]), storage.read_bytes(r["output_url"]), r["psnr"])
            for r in table.to_pylist()}


def _latents(root: str, keys: set[str]) -> dict[str, torch.Tensor]:
    cache = LatentCache(root)
    found = {k: cache.get(k) for k in sorted(keys)}
    assert all(v is not None for v in found.values()), found
    return {k: torch.cat([v.w.flatten(), *[n.flatten() for n in v.noise]]) for k, v in found.items() if v}


def _same_run(a: dict, root_a: str, b: dict, root_b: str) -> None:
    out_a, out_b = _outputs(a), _outputs(b)
    assert out_a == out_b  # ids, sources, cache keys, output bytes, metrics
    keys = {k for v in out_a.values() for k in v[1]}
    lat_a, lat_b = _latents(root_a, keys), _latents(root_b, keys)
    assert all(torch.equal(lat_a[k], lat_b[k]) for k in keys)


def test_reconstruct_of_a_folder_and_a_glob_is_the_manifest_run(storage_root):
    from i2score.flows.reconstruct import reconstruct

    inputs = storage.join(storage_root, "inputs")
    for name in IMAGES:
        _put(storage.join(inputs, "photos", name), (DEMO / "images" / name).read_bytes())
    _put(storage.join(inputs, "photos", "heldout-01_mask.png"), (DEMO / "masks" / "hole-rect-05.png").read_bytes())
    _put(storage.join(inputs, "photos", "notes.txt"), b"not an image")
    rows = "".join(f"{n[:-4]},photos/{n}\n" for n in IMAGES)
    manifest = _put(storage.join(inputs, "photos.csv"), f"id,image\n{rows}".encode())

    def run(source: str, name: str) -> tuple[dict, str]:
        root = storage.join(storage_root, name)  # one store each: every run computes its own latents
        return reconstruct(source, root=root, schedule=SCHEDULE, batch_size=3, device="cpu"), root

    by_manifest, root_m = run(manifest, "by-manifest")
    by_folder, root_f = run(storage.join(inputs, "photos") + "/", "by-folder")
    by_glob, root_g = run(storage.join(inputs, "photos", "heldout-*.png"), "by-glob")
    for result in (by_manifest, by_folder, by_glob):
        assert (result["outputs"], result["failed"]) == (3, 0), result
    # The mask file is the mask of heldout-01, not an image to embed; notes.txt is skipped.
    assert sorted(_outputs(by_folder)) == ["heldout-01", "heldout-02", "heldout-03"]
    _same_run(by_manifest, root_m, by_folder, root_f)
    _same_run(by_manifest, root_m, by_glob, root_g)
    # The run id is the job's: another input URL is another job, the same folder again the same run.
    assert len({by_manifest["run_id"], by_folder["run_id"], by_glob["run_id"]}) == 3
    again, _ = run(storage.join(inputs, "photos"), "by-folder")  # without the trailing /
    assert again["run_id"] == by_folder["run_id"] and again["noop"]


def test_inpaint_of_a_folder_with_masks_is_the_manifest_run(tmp_path):
    from i2score.flows.inpaint import inpaint

    inputs = tmp_path / "inputs"
    (inputs / "photos").mkdir(parents=True)
    (inputs / "masks").mkdir()
    mask = (DEMO / "masks" / "hole-rect-05.png").read_bytes()
    for name in IMAGES[:2]:
        (inputs / "photos" / name).write_bytes((DEMO / "images" / name).read_bytes())
        (inputs / "photos" / name.replace(".png", "_mask.png")).write_bytes(mask)
        (inputs / "masks" / name).write_bytes(mask)
    rows = "".join(f"{n[:-4]},photos/{n},photos/{n[:-4]}_mask.png\n" for n in IMAGES[:2])
    (inputs / "m.csv").write_text(f"id,image,mask\n{rows}")

    def run(source: str, name: str, **kw) -> tuple[dict, str]:
        root = str(tmp_path / name)
        return inpaint(source, root=root, k=1, schedule=SCHEDULE, batch_size=2, device="cpu", **kw), root

    by_manifest, root_m = run(str(inputs / "m.csv"), "m")
    by_names, root_n = run(str(inputs / "photos"), "names")  # the name_mask rule
    # With --masks every image the input names is a row: this glob leaves the *_mask files out.
    by_folder, root_f = run(str(inputs / "photos" / "heldout-0?.png"), "folder", masks=str(inputs / "masks"))
    for result in (by_manifest, by_names, by_folder):
        assert (result["outputs"], result["failed"]) == (2, 0), result
    _same_run(by_manifest, root_m, by_names, root_n)
    _same_run(by_manifest, root_m, by_folder, root_f)
    # masks enters the job: the masks folder is another job than the name rule, with the same results.
    assert by_names["run_id"] != by_folder["run_id"]


def test_the_cli_runs_a_glob_and_refuses_an_edit_of_a_folder(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from i2score.flows.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes((DEMO / "images" / IMAGES[0]).read_bytes())
    runner = CliRunner()
    res = runner.invoke(app, ["reconstruct", "photos/*.png", "--root", "store", "--schedule", SCHEDULE,
                              "--device", "cpu"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "1 outputs, 0 failed rows" in res.output
    res = runner.invoke(app, ["edit", "photos", "--root", "store", "--schedule", SCHEDULE, "--device", "cpu"],
                        terminal_width=300)
    assert res.exit_code == 2, res.output
    assert "an edit job needs a manifest" in " ".join(res.output.split())


def test_augment_of_a_folder_lists_its_images_as_the_originals(tmp_path):
    from i2score.data.manifest import validate_manifest
    from i2score.flows.augment import augment
    from i2score.runs.ops import CATALOG

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in IMAGES[:2]:
        (photos / name).write_bytes((DEMO / "images" / name).read_bytes())
    (photos / "heldout-01_mask.png").write_bytes((DEMO / "masks" / "hole-rect-05.png").read_bytes())
    res = augment(str(photos), root=str(tmp_path / "store"), n_per_image=1, ops=["noise"], schedule=SCHEDULE,
                  device="cpu")
    assert (res["outputs"], res["failed"]) == (2, 0), res
    dataset = validate_manifest(storage.join(res["run_url"], "dataset.csv"), CATALOG, kind="reconstruct",
                                check_files=True)
    assert dataset.ok
    originals = [r for r in dataset.rows if r.extra.get("augmentation") == "original"]
    assert [(r.id, r.image) for r in originals] == [(n[:-4], str(photos / n)) for n in IMAGES[:2]]
