"""The flows on a StyleGAN3 pickle (a tiny random-weight config-T model): W+ only embeddings, edits
on them (attribute transfer runs, noise-optimising ops fail their rows naming the family)."""

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


def test_flows_on_stylegan3_skip_or_refuse_the_noise_stage(tmp_path: Path) -> None:
    from i2score.flows.edit import edit
    from i2score.flows.reconstruct import reconstruct

    inputs = tmp_path / "store" / "inputs"
    inputs.mkdir(parents=True)
    for i in range(2):
        image = Image.open(DEMO / "images" / f"heldout-0{i}.png").convert("RGB")
        image.resize((32, 32), Image.Resampling.LANCZOS).save(inputs / f"p{i}.png")
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

    # Edits on the cached W+ embeddings: attribute transfer runs on the activations; crossover,
    # which optimises noise, fails its row with an error naming the family.
    Image.open(DEMO / "masks" / "region-face-01.png").convert("L").resize((32, 32), Image.Resampling.NEAREST).point(
        lambda v: 255 if v >= 128 else 0).save(inputs / "mask.png")
    rows = [f"attr,attribute_transfer,{inputs / 'p0.png'},{inputs / 'p1.png'},{inputs / 'mask.png'}",
            f"cross,crossover,{inputs / 'p1.png'},{inputs / 'p0.png'},{inputs / 'mask.png'}"]
    (inputs / "edit.csv").write_text("id,op,image,ref,mask\n" + "".join(r + "\n" for r in rows))
    ed = edit(str(inputs / "edit.csv"), root=str(tmp_path / "store"), model=str(inputs / "sg3t_32.pkl"),
              schedule="2+3/1+1", batch_size=2, device="cpu")
    assert (ed["outputs"], ed["failed"]) == (1, 1) and ed["embedding_steps"] == 0  # both sources cached
    errors = pq.read_table(ed["errors"]).to_pylist()
    assert [e["id"] for e in errors] == ["cross"]
    assert "stylegan3-t generators have none" in errors[0]["message"], errors[0]
