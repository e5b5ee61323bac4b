"""The reconstruct flow on a StyleGAN3 pickle (a tiny random-weight config-T model): W+ only."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"
SG3 = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia_stylegan3_repo" / "sg3t_32.pkl"

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_reconstruct_flow_on_stylegan3_skips_the_noise_stage(tmp_path: Path) -> None:
    from i2score.flows.reconstruct import reconstruct

    inputs = tmp_path / "store" / "inputs"
    inputs.mkdir(parents=True)
    for i in range(2):
        Image.open(DEMO / "images" / f"heldout-0{i}.png").convert("RGB").resize((32, 32), Image.Resampling.LANCZOS).save(
            inputs / f"p{i}.png")
    (inputs / "m.csv").write_text("id,image\n" + "".join(f"p{i},{inputs / f'p{i}.png'}\n" for i in range(2)))
    shutil.copy(SG3, inputs / "sg3t_32.pkl")
    result = reconstruct(str(inputs / "m.csv"), root=str(tmp_path / "store"), model=str(inputs / "sg3t_32.pkl"),
                         schedule="2+3", batch_size=2, device="cpu")
    assert (result["outputs"], result["failed"]) == (2, 0)
    assert result["embedding_steps"] == 2 * 2  # the 3 noise steps are not run
    table = pq.read_table(str(Path(result["run_url"]) / "manifest.parquet")).to_pylist()
    for row in table:
        params = json.loads(row["params"])
        assert params["steps_n"] == 0 and params["noise_stage"] == "skipped: stylegan3-t has no noise inputs (W+ only)"
        with open(row["output_url"], "rb") as f:
            assert Image.open(io.BytesIO(f.read())).size == (32, 32)
