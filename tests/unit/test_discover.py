"""Folder and glob inputs (i2score.data.manifest.discover): rows, ids, masks, what is skipped and
what is an error; their manifest (read_manifest_bytes, i2s manifest init), their confinement, their
job identity, and i2s validate on a folder."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import fsspec
import pytest
from PIL import Image
from typer.testing import CliRunner

from i2score.cli.app import app
from i2score.data.inputs import manifest_folder, policy_for_manifest
from i2score.data.manifest import Manifest, ManifestError, read_manifest_bytes
from i2score.data.manifest.discover import (
    DiscoveryError,
    discover,
    init_manifest,
    is_manifest_source,
    source_folder,
)


def png(size: tuple[int, int] = (16, 16), colour: tuple[int, int, int] = (120, 60, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def mask_png(size: tuple[int, int] = (16, 16)) -> bytes:
    im = Image.new("L", size, 0)
    im.paste(255, (4, 4, 12, 12))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def make(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def ids(found) -> list[str]:
    return [r.id for r in found.rows]


# ----------------------------------------------------------------------------------------------
# Which sources are folders or globs, and their folder
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "manifest"), [
    ("m.csv", True), ("m.CSV.gz", True), ("s3://b/x/m.parquet", True), ("m.jsonl", True), ("m.tsv", True),
    ("https://host/photos/", True), ("https://host/list?x=*", True),
    ("photos", False), ("photos/", False), ("photos/*.jpg", False), ("s3://b/faces/", False),
    ("s3://b/faces/**/*.png", False), ("photos/a.jpg", False),
])
def test_which_sources_are_manifests(url, manifest):
    assert is_manifest_source(url) is manifest


def test_source_folder_of_folders_and_globs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert source_folder("photos/") == str(tmp_path / "photos")
    assert source_folder("photos/*.jpg") == str(tmp_path / "photos")
    assert source_folder("photos/**/x-?.png") == str(tmp_path / "photos")
    assert source_folder("s3://b/faces") == "s3://b/faces/"
    assert source_folder("s3://b/faces/**/*.png") == "s3://b/faces/"
    assert source_folder("s3://b/*/a.png") == "s3://b/"
    # The default confinement of a folder input is that folder, not its parent.
    assert manifest_folder(str(tmp_path / "photos")) == str(tmp_path / "photos")
    assert manifest_folder(str(tmp_path / "photos" / "m.csv")) == str(tmp_path / "photos")


# ----------------------------------------------------------------------------------------------
# Rows of a folder
# ----------------------------------------------------------------------------------------------


def test_rows_are_sorted_with_stems_as_ids_and_other_files_reported(tmp_path):
    folder = make(tmp_path / "photos", {"c.png": png(), "a.jpg": png(fmt="JPEG"), "B.WEBP": png(fmt="WEBP"),
                                        "notes.txt": b"x", ".DS_Store": b"x", "sub/d.png": png()})
    found = discover(str(folder))
    assert ids(found) == ["B", "a", "c"]  # sorted by URL (upper case first), extensions in any case
    assert [r.image for r in found.rows] == [str(folder / n) for n in ("B.WEBP", "a.jpg", "c.png")]
    assert all(r.mask is None for r in found.rows)
    skipped = {Path(u).name: why for u, why in found.skipped}
    assert set(skipped) == {"notes.txt", ".DS_Store", "sub"}
    assert skipped["notes.txt"].startswith("not an image: only png, jpg, jpeg, webp")
    assert skipped["sub"].startswith("a folder: not searched")
    # The same listing gives the same rows (a run's manifest bytes, hence its id, are stable).
    assert discover(str(folder) + "/").to_csv() == found.to_csv()


def test_name_mask_files_are_masks_not_rows(tmp_path):
    folder = make(tmp_path / "p", {"a.png": png(), "a_mask.png": mask_png(), "b.jpg": png(fmt="JPEG"),
                                   "b_mask.png": mask_png(), "c.png": png()})
    found = discover(str(folder))
    assert ids(found) == ["a", "b", "c"]
    assert [r.mask and Path(r.mask).name for r in found.rows] == ["a_mask.png", "b_mask.png", None]
    assert found.n_masks == 2 and found.skipped == []
    assert found.to_csv().decode().splitlines() == [
        "id,image,mask", f"a,{folder}/a.png,{folder}/a_mask.png", f"b,{folder}/b.jpg,{folder}/b_mask.png",
        f"c,{folder}/c.png,"]
    # A reconstruct job's rows take no mask: the column is left out, the masks are still not rows.
    assert found.to_csv(mask_column=False).decode().splitlines()[0] == "id,image"
    assert len(found.to_csv(mask_column=False).decode().splitlines()) == 4


def test_a_masks_folder_names_masks_by_image_name(tmp_path):
    folder = make(tmp_path / "p", {"a.png": png(), "b.jpg": png(fmt="JPEG"), "b_mask.png": mask_png()})
    masks = make(tmp_path / "m", {"a.png": mask_png(), "b.webp": mask_png(), "zz.png": mask_png(),
                                  "readme.md": b"x"})
    found = discover(str(folder), str(masks))
    # With a masks folder every image of the input is a row (b_mask too), masks come from the folder.
    assert ids(found) == ["a", "b", "b_mask"]
    assert [r.mask and Path(r.mask).name for r in found.rows] == ["a.png", "b.webp", None]
    assert {Path(u).name: why for u, why in found.skipped} == {
        "zz.png": "a mask of no image in the input",
        "readme.md": "not an image: only png, jpg, jpeg, webp files are read"}
    with pytest.raises(DiscoveryError, match="the images' own folder"):
        discover(str(folder), str(folder))
    with pytest.raises(FileNotFoundError, match="no masks folder"):
        discover(str(folder), str(tmp_path / "nope"))
    with pytest.raises(DiscoveryError, match=r"no masks \(png, jpg, jpeg, webp\)"):
        discover(str(folder), str(make(tmp_path / "empty", {"x.txt": b"x"})))


@pytest.mark.parametrize(("files", "message"), [
    ({"a.png": png(), "a.jpg": png(fmt="JPEG")}, r"two images would have the id 'a': .*a\.jpg and .*a\.png"),
    ({"Face.png": png(), "face.webp": png(fmt="WEBP")}, r"two images would have the id 'face'.*case-insensitively"),
    ({"a.png": png(), "a_mask.png": mask_png(), "a_mask.jpg": mask_png()}, r"two masks for image 'a': .*a_mask\.jpg"),
    ({"a.png": png(), "x_mask.png": mask_png()}, r"x_mask\.png is named as a mask .*no image x\.<ext>"),
])
def test_collisions_and_orphan_masks_are_errors_naming_the_files(tmp_path, files, message):
    with pytest.raises(DiscoveryError, match=message):
        discover(str(make(tmp_path / "p", files)))


def test_empty_missing_and_file_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiscoveryError, match=r"no images \(png, jpg, jpeg, webp\) in .*empty$"):
        discover(str(tmp_path / "empty"))
    with pytest.raises(DiscoveryError, match="no images .* skipped 2 other entries"):
        discover(str(make(tmp_path / "docs", {"a.txt": b"x", "b.pdf": b"x"})))
    with pytest.raises(FileNotFoundError, match="no folder .*nope"):
        discover(str(tmp_path / "nope"))
    one = make(tmp_path / "one", {"a.jpg": png(fmt="JPEG")}) / "a.jpg"
    with pytest.raises(DiscoveryError, match=r"is a file, and its extension is not a manifest.s .*a folder or a glob"):
        discover(str(one))
    with pytest.raises(DiscoveryError, match="no images"):
        discover(str(tmp_path / "one" / "*.png"))  # a glob matching nothing
    with pytest.raises(DiscoveryError, match="is a manifest"):
        discover(str(tmp_path / "m.csv"))
    with pytest.raises(DiscoveryError, match="cannot carry a credential") as e:
        discover("s3://user:pw@bucket/faces/")
    assert "pw" not in str(e.value)
    # Every caller reading a "manifest" gets the same errors.
    with pytest.raises(FileNotFoundError):
        Manifest.read(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------------------------
# Globs, and an fsspec store
# ----------------------------------------------------------------------------------------------


def test_globs_match_files_and_find_masks_next_to_them(tmp_path):
    folder = make(tmp_path / "p", {"a.jpg": png(fmt="JPEG"), "a_mask.png": mask_png(), "b.jpg": png(fmt="JPEG"),
                                   "c.png": png(), "c_mask.png": mask_png(), "sub/d.jpg": png(fmt="JPEG")})
    found = discover(str(folder / "*.jpg"))
    assert ids(found) == ["a", "b"]
    assert Path(str(found.rows[0].mask)).name == "a_mask.png"  # found next to it, though the glob matches jpg only
    everything = discover(str(folder / "**" / "*.jpg"))
    assert ids(everything) == ["a", "b", "d"]
    assert ids(discover(str(folder / "[ab]*"))) == ["a", "b"]  # a_mask.png matches, as a's mask
    # A glob matching a mask whose image it does not match: not a row, reported.
    pngs = discover(str(folder / "*.png"))
    assert ids(pngs) == ["c"]
    assert [(Path(u).name, why) for u, why in pngs.skipped] == [
        ("a_mask.png", "the mask of a, an image the input does not match")]
    partial = discover(str(folder / "c*.png"))  # c.png and c_mask.png
    assert ids(partial) == ["c"] and str(partial.rows[0].mask).endswith("c_mask.png")
    make(folder, {"sub/a.png": png()})
    with pytest.raises(DiscoveryError, match="two images would have the id 'a'"):
        discover(str(folder / "**" / "*"))


def test_an_fsspec_store_is_listed_like_a_folder():
    root = f"memory://discover-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for name, data in {"faces/b.png": png(), "faces/a.png": png(), "faces/a_mask.png": mask_png(),
                       "faces/x.txt": b"x", "faces/deeper/c.png": png()}.items():
        fs.pipe(f"{root}/{name}", data)
    found = discover(f"{root}/faces/")
    assert ids(found) == ["a", "b"]
    assert [r.image for r in found.rows] == [f"{root}/faces/a.png", f"{root}/faces/b.png"]
    assert found.rows[0].mask == f"{root}/faces/a_mask.png"
    assert ids(discover(f"{root}/faces/**/*.png")) == ["a", "b", "c"]
    # Reading the rows' files through the store works: the URLs are the store's.
    parsed = Manifest.read(f"{root}/faces")
    assert parsed.columns == ["id", "image", "mask"] and len(parsed) == 2
    assert policy_for_manifest(f"{root}/faces/*.png").allowed == (f"{root}/faces/",)


# ----------------------------------------------------------------------------------------------
# The manifest of a folder, as runs read it
# ----------------------------------------------------------------------------------------------


def test_read_manifest_bytes_of_a_folder(tmp_path):
    folder = make(tmp_path / "p", {"a.png": png(), "a_mask.png": mask_png()})
    masks = make(tmp_path / "m", {"a.png": mask_png()})
    assert read_manifest_bytes(str(folder)) == discover(str(folder)).to_csv()
    assert read_manifest_bytes(str(folder), mask_column=False).decode() == f"id,image\na,{folder}/a.png\n"
    assert f"a,{folder}/a.png,{masks}/a.png" in read_manifest_bytes(str(folder), masks=str(masks)).decode()
    manifest = make(tmp_path, {"m.csv": b"id,image\na,p/a.png\n"}) / "m.csv"
    with pytest.raises(ManifestError, match="names its masks in its mask column"):
        read_manifest_bytes(str(manifest), masks=str(masks))
    parsed = Manifest.read(str(folder))  # the folder's URL names it; its rows are full paths
    assert parsed.url == str(folder) and parsed.format == "csv"


def test_folder_inputs_are_confined_to_their_folder_and_masks_folder(tmp_path):
    folder = make(tmp_path / "p", {"a.png": png()})
    masks = make(tmp_path / "m", {"a.png": mask_png()})
    policy = policy_for_manifest(str(folder), masks=str(masks))
    assert policy.allowed == (str(folder), str(masks))
    policy.check(str(folder / "a.png"))
    policy.check(str(masks / "a.png"))
    with pytest.raises(OSError, match="outside"):
        policy.check(str(tmp_path / "secret.png"))
    # --allow replaces the default, as for a manifest.
    assert policy_for_manifest(str(folder / "*.png"), [str(tmp_path)]).allowed == (str(tmp_path),)


def test_job_config_of_folder_inputs(tmp_path):
    from i2score.runs.config import JobConfig
    from i2score.runs.plan import job_identity, run_identity

    folder = make(tmp_path / "p", {"a.png": png(), "a_mask.png": mask_png(), "b.png": png()})
    masks = make(tmp_path / "m", {"a.png": mask_png()})
    rec = JobConfig("reconstruct", str(folder), str(tmp_path / "root"), schedule="2+2")
    assert "masks" not in job_identity(rec)  # unset: job identities (and run ids) of manifests unchanged
    inp = JobConfig("inpaint", str(folder), str(tmp_path / "root"), schedule="2+2", masks=str(masks))
    assert job_identity(inp)["masks"] == str(masks)
    assert inp.input_policy().allowed == (str(folder), str(masks))
    assert rec.manifest_bytes().decode().splitlines()[0] == "id,image"  # no mask column for reconstruct
    assert inp.read_manifest().columns == ["id", "image", "mask"]
    with pytest.raises(ValueError, match="an edit job needs a manifest"):
        JobConfig("edit", str(folder), "r")
    with pytest.raises(ValueError, match="goes with an inpaint job of a folder or glob"):
        JobConfig("reconstruct", str(folder), "r", masks=str(masks))
    with pytest.raises(ValueError, match="goes with an inpaint job of a folder or glob"):
        JobConfig("inpaint", str(tmp_path / "m.csv"), "r", masks=str(masks))
    # The run id is deterministic, and a new image in the folder is a new job.
    first = run_identity(rec)
    assert run_identity(rec) == first and first.run_id.startswith("reconstruct-")
    make(folder, {"c.png": png()})
    assert run_identity(rec) != first


# ----------------------------------------------------------------------------------------------
# i2s manifest init, i2s validate
# ----------------------------------------------------------------------------------------------


def test_manifest_init_writes_a_relative_csv_and_never_overwrites_without_force(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make(tmp_path / "photos", {"b.png": png(), "a.jpg": png(fmt="JPEG"), "a_mask.png": mask_png(),
                               "notes.txt": b"x"})
    runner = CliRunner()
    res = runner.invoke(app, ["manifest", "init", "./photos", "-o", "photos.csv"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "2 rows (inpaint; id,image,mask), 1 with a mask" in res.output
    assert "skipped" in res.output and "notes.txt" in res.output
    text = (tmp_path / "photos.csv").read_text()
    assert text == "id,image,mask\na,photos/a.jpg,photos/a_mask.png\nb,photos/b.png,\n"
    # What it wrote is a manifest a run reads: same rows as the folder itself.
    from_csv = Manifest.read(str(tmp_path / "photos.csv"))
    assert [r["id"] for r in from_csv.records if isinstance(r, dict)] == ["a", "b"]

    (tmp_path / "photos.csv").write_text("edited\n")
    again = runner.invoke(app, ["manifest", "init", "photos", "-o", "photos.csv", "--kind", "reconstruct"])
    assert again.exit_code == 2 and "exists; --force overwrites it" in again.output
    assert (tmp_path / "photos.csv").read_text() == "edited\n"
    forced = runner.invoke(app, ["manifest", "init", "photos", "-o", "photos.csv", "--kind", "reconstruct",
                                 "--force"], terminal_width=200)
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "photos.csv").read_text() == "id,image\na,photos/a.jpg\nb,photos/b.png\n"


def test_manifest_init_errors_and_hints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make(tmp_path / "photos", {"my photo.png": png(), "b.png": png()})
    runner = CliRunner()
    for args, message in [
        (["manifest", "init", "photos", "-o", "m.parquet"], "name it *.csv"),
        (["manifest", "init", "photos", "-o", "m.csv", "--kind", "inpaint"], "no masks for the images"),
        (["manifest", "init", "nope", "-o", "m.csv"], "no folder"),
        (["manifest", "init", str(make(tmp_path / "e", {"x.txt": b"x"})), "-o", "m.csv"], "no images"),
    ]:
        res = runner.invoke(app, args, terminal_width=300)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)
        assert not (tmp_path / "m.csv").exists()
    out = tmp_path / "elsewhere" / "m.csv"
    out.parent.mkdir()
    res = runner.invoke(app, ["manifest", "init", "photos", "-o", str(out)], terminal_width=300)
    assert res.exit_code == 0, res.output
    assert f"b,{tmp_path}/photos/b.png" in out.read_text()  # outside the manifest's folder: a full path
    assert f"2 files are outside the manifest's folder (written as full paths); a run reads them only with " \
           f"--allow {tmp_path}/photos" in res.output
    assert "1 file names are not valid ids" in res.output and "'my photo'" in res.output


def test_init_manifest_on_a_store_writes_paths_relative_to_the_manifest():
    root = f"memory://init-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{root}/faces/a.png", png())
    written = init_manifest(f"{root}/faces/*.png", f"{root}/faces.csv")
    assert written.kind == "reconstruct" and written.outside == 0
    assert fs.cat(f"{root}/faces.csv").decode() == "id,image\na,faces/a.png\n"


def test_validate_a_folder_infers_the_kind_and_takes_masks(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # rich's width: one line per message
    folder = make(tmp_path / "photos", {"a.png": png(), "a_mask.png": mask_png(), "b.png": png(),
                                        "b_mask.png": mask_png(), "x.txt": b"x"})
    runner = CliRunner()
    res = runner.invoke(app, ["validate", str(folder)], terminal_width=300)
    assert res.exit_code == 0, res.output
    assert "2 images (2 with a mask)" in res.output and "skipped 1: x.txt (not an image)" in res.output
    assert "kind inpaint (from the columns" in res.output and "2 rows, 2 valid, 0 rejected" in res.output
    # --kind reconstruct: the masks are not rows' inputs (no unexpected_input rejections).
    res = runner.invoke(app, ["validate", str(folder / "*.png"), "--kind", "reconstruct"], terminal_width=300)
    assert res.exit_code == 0 and "2 rows, 2 valid" in res.output, res.output
    plain = make(tmp_path / "plain", {"a.png": png(), "b.png": png()})
    masks = make(tmp_path / "masks", {"a.png": mask_png()})
    res = runner.invoke(app, ["validate", str(plain), "--masks", str(masks)], terminal_width=300)
    assert res.exit_code == 1, res.output  # b has no mask: its row is rejected, with the reason
    assert "kind inpaint" in res.output and "missing_mask" in res.output and "1 valid, 1 rejected" in res.output
    res = runner.invoke(app, ["validate", str(plain)], terminal_width=300)
    assert res.exit_code == 0 and "kind reconstruct" in res.output, res.output
    res = runner.invoke(app, ["validate", str(tmp_path / "nothing-here")], terminal_width=300)
    assert res.exit_code == 2 and "no folder" in res.output, res.output
    assert sorted(os.listdir(plain)) == ["a.png", "b.png"]  # validate writes nothing next to the images
