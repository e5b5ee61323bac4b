"""Offline checks of the deployment infrastructure in infra/: Terraform validates (AWS provider
from the local plugin mirror), the compose file, Dockerfile and Kubernetes job template are
consistent with each other and with infra/prefect.yaml."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
REPO = INFRA.parent
#: Where this project's machines keep the Terraform AWS provider (ARCHITECTURE.md).
PLUGIN_DIRS = [os.environ.get("I2S_TF_PLUGIN_DIR", ""), "/opt/tf-plugins"]


def _plugin_dir() -> str:
    for d in PLUGIN_DIRS:
        if d and (Path(d) / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return d
    pytest.fail(f"no Terraform plugin mirror with hashicorp/aws in {[d for d in PLUGIN_DIRS if d]} "
                "(set I2S_TF_PLUGIN_DIR)")


def test_terraform_validates_offline(tmp_path):
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.fail("terraform is not installed (the project's machines have it; see ARCHITECTURE.md)")
    work = tmp_path / "tf"
    shutil.copytree(INFRA / "terraform", work)
    rc = tmp_path / "terraformrc"
    rc.write_text("")
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(rc), "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    init = subprocess.run([terraform, "init", "-backend=false", f"-plugin-dir={_plugin_dir()}", "-input=false",
                           "-no-color"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    val = subprocess.run([terraform, "validate", "-json", "-no-color"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    report = json.loads(val.stdout)
    assert report["valid"] and report["error_count"] == 0, report


def test_compose_stack_is_consistent():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"seaweedfs", "prefect-server", "worker"}
    worker = services["worker"]
    env = worker["environment"]
    # The worker talks to the other two services on the ports they serve.
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "4200:4200" in services["prefect-server"]["ports"]
    assert env["FSSPEC_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert "-s3.port=8333" in services["seaweedfs"]["command"]
    # Its S3 keys are the identity SeaweedFS is configured with.
    s3 = json.loads((INFRA / "seaweedfs-s3.json").read_text())
    creds = s3["identities"][0]["credentials"][0]
    assert (creds["accessKey"], creds["secretKey"]) == (env["FSSPEC_S3_KEY"], env["FSSPEC_S3_SECRET"])
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (env["FSSPEC_S3_KEY"], env["FSSPEC_S3_SECRET"])
    # One GPU, and it serves the pool infra/prefect.yaml deploys to.
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((INFRA / "prefect.yaml").read_text())["deployments"]}
    assert pools == {"gpu"} and "--pool gpu" in " ".join(worker["command"])
    assert (REPO / worker["build"]["dockerfile"]).is_file()
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (INFRA / src).is_file(), src


def test_dockerfile_matches_the_repository_and_the_pull_step():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M):
        for item in src.split():
            assert (REPO / item).exists(), f"COPY {item}: not in the repository"
    found = re.search(r"^WORKDIR\s+(\S+)", text, flags=re.M)
    assert found is not None, "the Dockerfile has no WORKDIR"
    workdir = found.group(1)
    pull = yaml.safe_load((INFRA / "prefect.yaml").read_text())["pull"][0]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == workdir
    assert "--pool" in text and "gpu" in text


def test_kubernetes_job_template_requests_a_gpu_and_defines_every_placeholder():
    tpl = json.loads((INFRA / "k8s" / "gpu-base-job-template.json").read_text())
    placeholders = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", json.dumps(tpl["job_configuration"])))
    defined = set(tpl["variables"]["properties"])
    assert placeholders <= defined, f"undefined template variables: {placeholders - defined}"
    container = tpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert tpl["variables"]["properties"]["gpus"]["default"] >= 1
    assert container["workingDir"] == "/opt/i2score"
