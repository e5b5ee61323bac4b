"""Input confinement and size limits (i2score.data.inputs): what a manifest from someone we don't
trust can make a worker read, through the policy alone, through validation and through a run."""

from __future__ import annotations

import http.server
import io
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from i2score.data.inputs import (
    FILE_TOO_LARGE,
    NOT_A_REGULAR_FILE,
    OUTSIDE_ALLOWED_INPUTS,
    InputPolicy,
    InputRejected,
    manifest_folder,
    policy_for_manifest,
)
from i2score.data.manifest import RowError, load_row, validate_manifest
from i2score.data.manifest.read import read_manifest_bytes
from i2score.runs.config import JobConfig
from i2score.runs.execute import run_batch
from i2score.runs.ops import CATALOG
from i2score.runs.plan import plan_run
from i2score.runs.records import RunPaths

DEMO = Path(__file__).resolve().parents[2] / "manifests" / "demo"


def png(seed: int = 0) -> bytes:
    im = Image.new("RGB", (32, 32), (40 * seed % 256, 90, 160))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def reason(fn: Callable[[], Any]) -> str:
    with pytest.raises(InputRejected) as info:
        fn()
    return info.value.reason


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a thread; fails (instead of hanging the suite) when it takes longer."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (blocked on a read?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``allowed/`` (a good image, a sub folder) and ``outside/`` (another image) side by side."""
    (tmp_path / "allowed" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "allowed" / "good.png").write_bytes(png(1))
    (tmp_path / "allowed" / "sub" / "good2.png").write_bytes(png(2))
    (tmp_path / "outside" / "secret.png").write_bytes(png(3))
    return tmp_path


def test_local_prefixes_resolve_dot_dot_and_symlinks(tree: Path):
    allowed = tree / "allowed"
    policy = InputPolicy((str(allowed),))
    assert policy.read(str(allowed / "good.png")) == png(1)
    assert policy.read(f"file://{allowed}/sub/../good.png") == png(1)
    assert reason(lambda: policy.read(str(allowed / ".." / "outside" / "secret.png"))) == OUTSIDE_ALLOWED_INPUTS
    assert reason(lambda: policy.read(str(allowed / "sub" / ".." / ".." / "outside" / "secret.png"))) == \
        OUTSIDE_ALLOWED_INPUTS
    assert reason(lambda: policy.read("/etc/passwd")) == OUTSIDE_ALLOWED_INPUTS
    assert reason(lambda: policy.read("file:///etc/hostname")) == OUTSIDE_ALLOWED_INPUTS
    # A folder whose name merely starts like the allowed one is another folder.
    (tree / "allowed-not").mkdir()
    (tree / "allowed-not" / "x.png").write_bytes(png(4))
    assert reason(lambda: policy.read(str(tree / "allowed-not" / "x.png"))) == OUTSIDE_ALLOWED_INPUTS
    assert reason(lambda: policy.check(str(tree / "allowed-not" / "x.png"))) == OUTSIDE_ALLOWED_INPUTS
    policy.check(str(allowed))

    # A symlink inside the folder passes the lexical check, and is refused when read.
    (allowed / "link.png").symlink_to(tree / "outside" / "secret.png")
    policy.check(str(allowed / "link.png"))
    assert reason(lambda: policy.read(str(allowed / "link.png"))) == OUTSIDE_ALLOWED_INPUTS
    # ... while a symlink that stays inside is an ordinary input.
    (allowed / "inner.png").symlink_to(allowed / "sub" / "good2.png")
    assert policy.read(str(allowed / "inner.png")) == png(2)
    # The allowed folder itself reached through a symlink is still the allowed folder.
    (tree / "alias").symlink_to(allowed)
    assert InputPolicy((str(tree / "alias"),)).read(str(tree / "alias" / "good.png")) == png(1)


def test_only_regular_files_are_read_and_nothing_blocks(tree: Path):
    allowed = tree / "allowed"
    os.mkfifo(allowed / "pipe.png")
    policy = InputPolicy((str(allowed), "/dev"))
    assert within(5, lambda: reason(lambda: policy.read(str(allowed / "pipe.png")))) == NOT_A_REGULAR_FILE
    assert reason(lambda: policy.read(str(allowed / "sub"))) == NOT_A_REGULAR_FILE
    for device in ("/dev/zero", "/dev/urandom", "/dev/null"):
        def read_device(d: str = device) -> str:
            return reason(lambda: policy.read(d))

        assert within(5, read_device) == NOT_A_REGULAR_FILE
    # Unconfined (library calls) still reads regular files only.
    assert within(5, lambda: reason(lambda: InputPolicy().read(str(allowed / "pipe.png")))) == NOT_A_REGULAR_FILE


def test_size_limit_from_metadata_and_while_reading(tree: Path):
    allowed = tree / "allowed"
    big = allowed / "big.png"
    with open(big, "wb") as f:  # sparse: 3 GB on paper, nothing on disk
        f.truncate(3 * 2**30)
    policy = InputPolicy((str(allowed), "/proc"), max_bytes=1000)
    t0 = time.perf_counter()
    with pytest.raises(InputRejected) as info:
        policy.read(str(big))
    assert info.value.reason == FILE_TOO_LARGE and str(3 * 2**30) in str(info.value)
    assert time.perf_counter() - t0 < 1.0  # refused from fstat, not after reading 3 GB
    (allowed / "exact.png").write_bytes(b"x" * 1000)
    assert len(policy.read(str(allowed / "exact.png"))) == 1000
    (allowed / "over.png").write_bytes(b"x" * 1001)
    assert reason(lambda: policy.read(str(allowed / "over.png"))) == FILE_TOO_LARGE
    # /proc files report size 0 and have content: the limit holds while reading.
    assert os.stat("/proc/self/status").st_size == 0
    assert reason(lambda: InputPolicy(("/proc",), max_bytes=100).read("/proc/self/status")) == FILE_TOO_LARGE


def test_object_store_prefixes_buckets_and_sizes():
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket-a/faces/x.png", png(1))
    fs.pipe("/bucket-a/faces/big.png", b"y" * 5000)
    fs.pipe("/bucket-a/other/y.png", png(2))
    fs.pipe("/bucket-b/faces/z.png", png(3))
    try:
        policy = InputPolicy(("memory://bucket-a/faces/",), max_bytes=4096)
        assert policy.read("memory://bucket-a/faces/x.png") == png(1)
        assert reason(lambda: policy.read("memory://bucket-a/other/y.png")) == OUTSIDE_ALLOWED_INPUTS
        assert reason(lambda: policy.read("memory://bucket-a/faces/../other/y.png")) == OUTSIDE_ALLOWED_INPUTS
        assert reason(lambda: policy.read("memory://bucket-b/faces/z.png")) == OUTSIDE_ALLOWED_INPUTS
        assert reason(lambda: policy.read("memory://bucket-a/faces/big.png")) == FILE_TOO_LARGE
        assert reason(lambda: policy.read("s3://bucket-a/faces/x.png")) == OUTSIDE_ALLOWED_INPUTS
        # A whole store, and one bucket.
        InputPolicy(("s3://",)).check("s3://anything/at/all.png")
        InputPolicy(("s3://bucket-a",)).check("s3://bucket-a/k.png")
        assert reason(lambda: InputPolicy(("s3://bucket-a",)).check("s3://bucket-ab/k.png")) == OUTSIDE_ALLOWED_INPUTS
    finally:
        fs.rm("/bucket-a", recursive=True)
        fs.rm("/bucket-b", recursive=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:  # noqa: N802
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        if self.path.startswith("/endless"):  # no Content-Length, more than any limit
            self.send_response(200)
            self.end_headers()
            if not head:
                try:
                    for _ in range(1000):
                        self.wfile.write(b"z" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            return
        body = png(5)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_inputs_internal_addresses_redirects_and_streams(http_server: str):
    public = {"images.example.com": ["93.184.216.34"], "sneaky.example.com": ["10.0.0.7"],
              "localhost": ["127.0.0.1"]}
    policy = InputPolicy(("http://", "https://"), resolve=lambda host: public[host])
    for url in ("http://127.0.0.1:1/x.png", "http://169.254.169.254/latest/meta-data/iam/",
                "http://[::1]/a.png", "http://10.1.2.3/a.png", "http://192.168.0.10/a.png",
                "http://localhost:8080/a.png", "http://sneaky.example.com/a.png", "https://0.0.0.0/a.png",
                "http://[::ffff:127.0.0.1]/a.png", "http://user:hunter2pass@127.0.0.1/a.png"):
        with pytest.raises(InputRejected) as info:
            policy.check(url)
        assert info.value.reason == OUTSIDE_ALLOWED_INPUTS, url
        assert "internal address" in str(info.value) and "hunter2pass" not in str(info.value)
    policy.check("http://images.example.com/faces/a.png")
    # An operator may allow one internal host by name (a test server); that host only.
    local = InputPolicy((http_server + "/",), max_bytes=4096)
    assert local.read(f"{http_server}/a.png") == png(5)
    with pytest.raises(InputRejected):
        local.check("http://127.0.0.2/a.png")
    # Redirects are not followed (a public host could point inside).
    with pytest.raises(PermissionError, match="redirect"):
        local.read(f"{http_server}/redirect")
    # A response without Content-Length is cut at the limit.
    assert within(10, lambda: reason(lambda: local.read(f"{http_server}/endless"))) == FILE_TOO_LARGE


def test_manifest_folder_is_the_default_prefix(tree: Path):
    assert manifest_folder(str(tree / "allowed" / "m.csv")) == str(tree / "allowed")
    assert manifest_folder("s3://b/jobs/m.csv") == "s3://b/jobs/"
    assert manifest_folder("https://u:pw@h.example.com/j/m.csv?X-Amz-Signature=abc") == "https://h.example.com/j/"
    policy = policy_for_manifest(str(tree / "allowed" / "m.csv"))
    policy.check(str(tree / "allowed" / "sub" / "good2.png"))
    assert reason(lambda: policy.check(str(tree / "outside" / "secret.png"))) == OUTSIDE_ALLOWED_INPUTS
    with pytest.raises(ValueError, match="max_bytes"):
        InputPolicy(None, 0)
    with pytest.raises(ValueError, match="folder or URL prefix"):
        InputPolicy(("simplecache::s3://b/",))


def test_a_manifest_that_is_a_pipe_or_huge_is_refused(tree: Path, monkeypatch: pytest.MonkeyPatch):
    os.mkfifo(tree / "m.csv")
    with pytest.raises(InputRejected):
        within(5, lambda: read_manifest_bytes(str(tree / "m.csv")))
    import i2score.data.manifest.read as read

    monkeypatch.setattr(read, "_MANIFEST_READER", InputPolicy(None, 10))
    (tree / "n.csv").write_text("id,image\na,good.png\n")
    with pytest.raises(InputRejected):
        read_manifest_bytes(str(tree / "n.csv"))


# ----------------------------------------------------------------------------------------------
# A hostile manifest through validation and through a run
# ----------------------------------------------------------------------------------------------


def hostile_corpus(tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    """A reconstruct manifest at ``jobs/m.csv`` whose rows try every way out; returns it and the
    expected reason per id (None = a good row)."""
    jobs, outside = tmp_path / "jobs", tmp_path / "outside"
    (jobs / "imgs").mkdir(parents=True)
    outside.mkdir()
    for i in range(2):
        shutil.copy(DEMO / "images" / f"heldout-0{i}.png", jobs / "imgs" / f"good{i}.png")
    shutil.copy(DEMO / "images" / "heldout-02.png", outside / "private.png")
    (jobs / "imgs" / "link-out.png").symlink_to(outside / "private.png")
    (jobs / "imgs" / "link-dev.png").symlink_to("/dev/zero")
    os.mkfifo(jobs / "imgs" / "pipe.png")
    (jobs / "imgs" / "pipe-link.png").symlink_to(jobs / "imgs" / "pipe.png")
    (jobs / "imgs" / "folder.png").mkdir()
    with open(jobs / "imgs" / "huge.png", "wb") as f:
        f.truncate(200 * 2**20)
    rows = {
        "good0": ("imgs/good0.png", None),
        "good1": (str(jobs / "imgs" / "good1.png"), None),
        "etc-passwd": ("/etc/passwd", OUTSIDE_ALLOWED_INPUTS),
        "proc-environ": ("/proc/self/environ", OUTSIDE_ALLOWED_INPUTS),
        "file-url": ("file:///etc/hostname", OUTSIDE_ALLOWED_INPUTS),
        "dotdot": ("../outside/private.png", OUTSIDE_ALLOWED_INPUTS),
        "dotdot-deep": ("imgs/../../outside/private.png", OUTSIDE_ALLOWED_INPUTS),
        "abs-outside": (str(outside / "private.png"), OUTSIDE_ALLOWED_INPUTS),
        "symlink-out": ("imgs/link-out.png", OUTSIDE_ALLOWED_INPUTS),
        "symlink-dev": ("imgs/link-dev.png", OUTSIDE_ALLOWED_INPUTS),
        "dev-zero": ("/dev/zero", OUTSIDE_ALLOWED_INPUTS),
        "fifo": ("imgs/pipe.png", NOT_A_REGULAR_FILE),
        "fifo-link": ("imgs/pipe-link.png", NOT_A_REGULAR_FILE),
        "folder": ("imgs/folder.png", NOT_A_REGULAR_FILE),
        "oversized": ("imgs/huge.png", FILE_TOO_LARGE),
        "loopback": ("http://127.0.0.1:1/x.png", OUTSIDE_ALLOWED_INPUTS),
        "metadata": ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", OUTSIDE_ALLOWED_INPUTS),
        "ipv6-loopback": ("http://[::1]:8080/a.png", OUTSIDE_ALLOWED_INPUTS),
        "private-net": ("https://10.0.0.5/a.png", OUTSIDE_ALLOWED_INPUTS),
        "creds-in-url": ("http://admin:hunter2pass@127.0.0.1/a.png?X-Amz-Signature=deadbeefcafe1234",
                         OUTSIDE_ALLOWED_INPUTS),
        "other-bucket": ("s3://someone-elses-bucket/faces/a.png", OUTSIDE_ALLOWED_INPUTS),
    }
    lines = ["id,image"] + [f"{rid},{url}" for rid, (url, _) in rows.items()]
    manifest = jobs / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, {rid: why for rid, (_, why) in rows.items()}


def test_hostile_manifest_validation_rejects_every_escape_in_bounded_time(tmp_path: Path):
    manifest, expected = hostile_corpus(tmp_path)
    t0 = time.perf_counter()
    result = within(30, lambda: validate_manifest(str(manifest), CATALOG, check_files=True, resolution=64,
                                                  inputs=policy_for_manifest(str(manifest))))
    seconds = time.perf_counter() - t0
    got = {r.id: r.reason_code for r in result.rejected}
    assert got == {rid: why for rid, why in expected.items() if why}, result.rejected
    assert sorted(r.id for r in result.rows) == ["good0", "good1"]
    text = repr(result.rejected)
    assert "hunter2pass" not in text and "deadbeefcafe1234" not in text
    assert seconds < 30


def test_hostile_manifest_through_a_run(tmp_path: Path):
    """Every hostile row is rejected with its reason in errors.parquet, the good rows finish, and
    no file outside the manifest's folder ends up in the outputs."""
    manifest, expected = hostile_corpus(tmp_path)
    root = tmp_path / "root"
    config = JobConfig("reconstruct", str(manifest), str(root), None, "2+2", 8, "cpu", 0, None)
    plan = within(60, lambda: plan_run(config))
    assert plan.counts["valid"] == 2 and plan.counts["rejected"] == len(expected) - 2
    for phase in plan.phases:
        for batch in phase:
            run_batch(str(root), plan.run_id, batch)
    from i2score.runs.report import finish_run

    summary = finish_run(str(root), plan.run_id, plan.attempt)
    assert summary["rows"]["outputs"] == 2
    paths = RunPaths(str(root), plan.run_id)
    errors = pq.read_table(paths.url("errors.parquet")).to_pylist()
    assert {e["id"]: e["reason_code"] for e in errors} == {r: w for r, w in expected.items() if w}
    outputs = sorted(p.name for p in (root / "runs" / plan.run_id / "outputs").iterdir())
    assert outputs == ["good0.png", "good1.png"]
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert b"hunter2pass" not in data and b"deadbeefcafe1234" not in data, f


def test_allow_widens_and_a_symlink_swapped_after_validation_is_still_refused(tmp_path: Path):
    manifest, _ = hostile_corpus(tmp_path)
    outside = tmp_path / "outside"
    # Allowing the outside folder explicitly admits its files (and the manifest folder must then be listed).
    policy = policy_for_manifest(str(manifest), [str(manifest.parent), str(outside)])
    result = validate_manifest(str(manifest), CATALOG, check_files=True, resolution=64, inputs=policy)
    assert {"dotdot", "dotdot-deep", "abs-outside", "symlink-out"} <= {r.id for r in result.rows}

    # A row validated as a plain file that becomes a symlink out before it is loaded.
    strict = policy_for_manifest(str(manifest))
    ok = validate_manifest(str(manifest), CATALOG, inputs=strict)
    row = next(r for r in ok.rows if r.id == "good0")
    target = Path(row.image)
    target.unlink()
    target.symlink_to(outside / "private.png")
    with pytest.raises(RowError) as info:
        load_row(row, resolution=64, inputs=strict)
    assert info.value.reason_code == OUTSIDE_ALLOWED_INPUTS


def test_validate_cli_confines_to_the_manifest_folder_unless_allowed(tmp_path: Path):
    from typer.testing import CliRunner

    from i2score.cli.app import app

    manifest, _ = hostile_corpus(tmp_path)
    outside = tmp_path / "outside"
    runner = CliRunner()
    out = tmp_path / "rejections.csv"
    default = runner.invoke(app, ["validate", str(manifest), "--output", str(out)])
    assert default.exit_code == 1, default.output
    text = out.read_text()
    import csv

    reasons = {r["id"]: r["reason"] for r in csv.DictReader(io.StringIO(text))}
    assert reasons["abs-outside"] == OUTSIDE_ALLOWED_INPUTS and reasons["fifo"] == NOT_A_REGULAR_FILE
    assert "hunter2pass" not in default.output + text
    allowed = runner.invoke(app, ["validate", str(manifest), "--allow", str(manifest.parent), "--allow",
                                  str(outside), "--output", str(out)])
    assert allowed.exit_code == 1, allowed.output
    assert "abs-outside" not in out.read_text() and "etc-passwd" in out.read_text()
    bad = runner.invoke(app, ["validate", str(manifest), "--max-input-bytes", "0"])
    assert bad.exit_code == 2 and "max_bytes" in bad.output
