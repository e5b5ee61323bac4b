"""Model registry and model-file resolution: offline, fast, no real checkpoints."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from typer.testing import CliRunner

from i2score.cli.app import app
from i2score.generator.registry import (
    DOMAINS,
    FAMILIES,
    FORMATS,
    MODELS,
    ChecksumMismatchError,
    ModelSpec,
    ModelUnavailableError,
    UnknownModelError,
    cache_path_for_url,
    default_cache_dir,
    get_model_spec,
    model_cache_path,
    resolve_model_file,
    sha256_file,
)
from i2score.weights import download

PAYLOAD = b"not really a network pickle\n" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64


def _files(directory: Path) -> list[Path]:
    """Everything under ``directory``, hidden temp files included."""
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def memory_url() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    root = f"/i2s-test-{uuid.uuid4().hex}"
    fs.pipe(f"{root}/generator.pkl", PAYLOAD)
    yield f"memory://{root}/generator.pkl"
    if fs.exists(root):  # a test may already have removed the file (and thus the dir)
        fs.rm(root, recursive=True)


@pytest.fixture(params=["urllib", "fsspec-aiohttp"])
def http_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run HTTP tests through both transports; the aiohttp one only where aiohttp exists."""
    if request.param == "fsspec-aiohttp":
        pytest.importorskip("aiohttp")
        monkeypatch.setattr(download, "_aiohttp_available", lambda: True)
    else:
        monkeypatch.setattr(download, "_aiohttp_available", lambda: False)
    return request.param


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving a temporary directory."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


# --- registry ---------------------------------------------------------------------------------


def test_specs_are_well_formed() -> None:
    assert len(MODELS) >= 10
    for key, spec in MODELS.items():
        assert key == spec.name
        if spec.url.startswith("bundled://"):
            continue  # the demo model: tests/test_demo_model.py
        assert spec.url.startswith("https://"), spec.url
        assert spec.format in FORMATS
        assert spec.domain in DOMAINS
        assert spec.resolution >= 4 and spec.resolution & (spec.resolution - 1) == 0
        assert spec.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert spec.description and spec.reference
        assert spec.family in FAMILIES
        assert spec.num_ws == (16 if spec.family.startswith("stylegan3")
                               else {256: 14, 512: 16, 1024: 18}[spec.resolution])
        assert spec.filename.endswith(".pkl")
        data = re.sub(r"^stylegan[23](-[tr])?-", "", spec.name)
        assert spec.domain == ("face" if data.startswith(("ffhq", "metfaces", "celebahq")) else "other")


def test_registry_covers_the_required_models() -> None:
    formats = {name: spec.format for name, spec in MODELS.items()}
    assert formats["ffhq-1024-tf"] == "nvidia-tf-pkl"
    assert MODELS["ffhq-1024-tf"].filename == "stylegan2-ffhq-config-f.pkl"
    assert MODELS["ffhq-1024-noaug"].filename == "ffhq-res1024-mirror-stylegan2-noaug.pkl"
    assert formats["ffhq-256"] == formats["ffhq-512"] == "nvidia-pkl"
    assert MODELS["ffhq-256"].channel_multiplier == 1  # paper256 config
    for animal in ("cat", "dog", "wild"):
        assert formats[f"afhq-{animal}-512"] == "nvidia-pkl"
    for scene in ("car", "cat", "church"):
        assert formats[f"lsun-{scene}-{512 if scene == 'car' else 256}"] == "nvidia-tf-pkl"
    assert MODELS["lsun-car-512"].valid_hw == (384, 512)
    # NVIDIA's current (NGC) downloads, as NVlabs/stylegan3's README lists them.
    ngc = "https://api.ngc.nvidia.com/v2/models/nvidia/research"
    assert MODELS["stylegan2-ffhq-1024"].url == f"{ngc}/stylegan2/versions/1/files/stylegan2-ffhq-1024x1024.pkl"
    assert MODELS["stylegan2-ffhq-1024"].family == "stylegan2"
    for cfg in ("t", "r"):
        for name in ("ffhq-1024", "ffhqu-1024", "ffhqu-256", "metfaces-1024", "metfacesu-1024", "afhqv2-512"):
            spec = MODELS[f"stylegan3-{cfg}-{name}"]
            data, res = name.rsplit("-", 1)
            assert spec.url == f"{ngc}/stylegan3/versions/1/files/stylegan3-{cfg}-{data}-{res}x{res}.pkl"
            assert spec.family == f"stylegan3-{cfg}" and spec.format == "nvidia-pkl" and spec.sha256 is None
    # Distinct URLs, and therefore distinct cache files.
    assert len({s.url for s in MODELS.values()}) == len(MODELS)


@pytest.mark.parametrize("bad", [
    {"resolution": 500}, {"format": "onnx"}, {"domain": "cars"}, {"sha256": "abc"},
    {"name": "Has Space"}, {"url": "ffhq.pkl"},
])
def test_modelspec_rejects_malformed_fields(bad: dict) -> None:
    fields = dict(name="x", url="https://example.com/x.pkl", sha256=None, format="nvidia-pkl",
                  resolution=256, domain="other", description="d")
    with pytest.raises(ValueError, match="invalid ModelSpec"):
        ModelSpec(**{**fields, **bad})


def test_unknown_name_lists_known_names() -> None:
    assert get_model_spec("ffhq-1024") is MODELS["ffhq-1024"]
    with pytest.raises(UnknownModelError) as info:
        get_model_spec("ffhq-2048")
    message = str(info.value)
    assert "ffhq-2048" in message
    assert all(name in message for name in MODELS)
    assert isinstance(info.value, KeyError)


# --- cache layout ---------------------------------------------------------------------------


def test_cache_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("I2S_CACHE_DIR", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "i2score" / "models"
    monkeypatch.setenv("I2S_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    path = model_cache_path("ffhq-1024")
    assert path.parent == tmp_path
    assert re.fullmatch(r"[0-9a-f]{16}_ffhq\.pkl", path.name)
    # Same basename, different URL -> different cache file.
    assert model_cache_path("ffhq-1024") != cache_path_for_url("https://other.example/ffhq.pkl")


def test_sha256_file_streams_whole_file(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    data = PAYLOAD * 50  # > 1 MiB chunk
    big.write_bytes(data)
    assert sha256_file(big) == hashlib.sha256(data).hexdigest()


# --- local sources --------------------------------------------------------------------------


def test_local_path_returned_as_is(tmp_path: Path, cache: Path) -> None:
    f = tmp_path / "mine.pkl"
    f.write_bytes(PAYLOAD)
    assert resolve_model_file(str(f), cache_dir=cache) == f
    assert resolve_model_file(str(f), cache_dir=cache, sha256=PAYLOAD_SHA.upper()) == f
    assert resolve_model_file(f.as_uri(), cache_dir=cache) == f
    assert not cache.exists()  # local files are never copied


def test_local_path_checksum_mismatch_keeps_user_file(tmp_path: Path) -> None:
    f = tmp_path / "mine.pkl"
    f.write_bytes(PAYLOAD)
    with pytest.raises(ChecksumMismatchError) as info:
        resolve_model_file(str(f), sha256=WRONG_SHA)
    assert WRONG_SHA in str(info.value) and PAYLOAD_SHA in str(info.value)
    assert f.exists()


def test_missing_local_path_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="ffhq-1024"):
        resolve_model_file(str(tmp_path / "nope.pkl"))


# --- remote sources -------------------------------------------------------------------------


def test_memory_url_copied_then_reused(memory_url: str, cache: Path) -> None:
    first = resolve_model_file(memory_url, cache_dir=cache)
    assert first.parent == cache
    assert first.name.endswith("_generator.pkl")
    assert first.read_bytes() == PAYLOAD
    assert _files(cache) == [first]  # no temp files left behind

    fsspec.filesystem("memory").rm(memory_url[len("memory://"):])
    second = resolve_model_file(memory_url, cache_dir=cache, sha256=PAYLOAD_SHA)
    assert second == first  # served from the cache: the source is gone


def test_checksum_mismatch_on_download_leaves_no_file(memory_url: str, cache: Path) -> None:
    with pytest.raises(ChecksumMismatchError) as info:
        resolve_model_file(memory_url, cache_dir=cache, sha256=WRONG_SHA)
    assert WRONG_SHA in str(info.value) and PAYLOAD_SHA in str(info.value)
    assert _files(cache) == []


def test_corrupt_cached_copy_is_deleted(memory_url: str, cache: Path) -> None:
    path = resolve_model_file(memory_url, cache_dir=cache, sha256=PAYLOAD_SHA)
    path.write_bytes(b"truncated")
    with pytest.raises(ChecksumMismatchError):
        resolve_model_file(memory_url, cache_dir=cache, sha256=PAYLOAD_SHA)
    assert _files(cache) == []
    assert resolve_model_file(memory_url, cache_dir=cache, sha256=PAYLOAD_SHA) == path


def test_registry_name_satisfied_by_preplaced_file(tmp_path: Path) -> None:
    """The documented offline route: drop the file at model_cache_path()."""
    cache = tmp_path / "cache"
    target = model_cache_path("lsun-church-256", cache)
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    assert resolve_model_file("lsun-church-256", cache_dir=cache) == target


def test_missing_remote_file_is_unavailable(memory_url: str, cache: Path) -> None:
    url = memory_url.replace("generator.pkl", "absent.pkl")
    with pytest.raises(ModelUnavailableError) as info:
        resolve_model_file(url, cache_dir=cache)
    assert url in str(info.value)
    assert _files(cache) == []


def test_http_download(http_backend: str, http_root: tuple[str, Path], cache: Path) -> None:
    base, root = http_root
    (root / "g.pkl").write_bytes(PAYLOAD)
    path = resolve_model_file(f"{base}/g.pkl", cache_dir=cache, sha256=PAYLOAD_SHA, timeout=5)
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(ModelUnavailableError, match="404|Not Found|FileNotFound"):
        resolve_model_file(f"{base}/missing.pkl", cache_dir=cache, timeout=5)


def test_unreachable_url_fails_fast(http_backend: str, cache: Path) -> None:
    url = "http://127.0.0.1:9/x.pkl"  # discard port: nothing listens, connection refused
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        resolve_model_file(url, cache_dir=cache, timeout=5)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert url in message
    assert str(cache_path_for_url(url, cache)) in message
    assert info.value.url == url and info.value.cache_path == cache_path_for_url(url, cache)
    assert _files(cache) == []


def test_silent_server_hits_read_timeout(http_backend: str, cache: Path) -> None:
    """A peer that accepts the connection and never answers must not hang the caller."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes the handshake; nobody ever reads or writes
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.pkl"
        start = time.monotonic()
        with pytest.raises(ModelUnavailableError, match=re.escape(url)):
            resolve_model_file(url, cache_dir=cache, timeout=0.5)
        assert time.monotonic() - start < 10
    assert _files(cache) == []


def test_hanging_dns_lookup_is_abandoned(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """urlopen's timeout does not cover getaddrinfo; the resolver step must bound it."""
    monkeypatch.setattr(download, "_aiohttp_available", lambda: False)
    monkeypatch.setattr(download.urllib.request, "getproxies", lambda: {})
    monkeypatch.setattr(download.socket, "getaddrinfo", lambda *a, **k: time.sleep(3))
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="DNS lookup"):
        resolve_model_file("https://models.invalid/x.pkl", cache_dir=cache, timeout=0.2)
    assert time.monotonic() - start < 2


def test_truncated_http_body_is_rejected(http_backend: str, cache: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)

        def serve_short_body() -> None:
            for _ in range(3):  # the aiohttp path may probe more than once
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n"
                                 b"Connection: close\r\n\r\n" + b"x" * 10)

        threading.Thread(target=serve_short_body, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.pkl"
        with pytest.raises(ModelUnavailableError):
            resolve_model_file(url, cache_dir=cache, timeout=2)
    assert _files(cache) == []


# --- CLI ------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_models_list(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "list", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name, spec in MODELS.items():
        assert name in result.output
        assert spec.url in result.output
    for family in ("stylegan2", "stylegan3-t", "stylegan3-r"):
        assert f" {family} " in result.output


def test_cli_models_fetch(memory_url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "fetch", memory_url, "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()).read_bytes() == PAYLOAD


def test_cli_models_fetch_unavailable(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/x.pkl"
    result = runner.invoke(app, ["models", "fetch", url, "--cache-dir", str(tmp_path),
                                 "--timeout", "5"])
    assert result.exit_code == 1
    assert url in result.output
    assert str(cache_path_for_url(url, tmp_path)) in result.output


def test_cli_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "models" in result.output
