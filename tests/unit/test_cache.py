"""Latent cache: keys, round trip, idempotency, crash repair, concurrent writers, corruption,
compaction, float16 noise, CLI and a small lookup benchmark. Main paths run on ``storage_root``
(a local folder here; ``tests/integration/test_cache_s3.py`` runs them on SeaweedFS)."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from i2score.data import storage
from i2score.data.cache import (
    CorruptEntryError,
    LatentCache,
    cache_key,
    canonical_params,
    decode_entry,
    make_source,
    npz_path,
)
from i2score.data.cache.keys import _key_from_fields
from i2score.data.latents import Latents

GEN_SHA = "ab" * 32
PARAMS = {"steps_w": 100, "steps_n": 50, "lr_w": 0.01, "seed": 0, "init": "mean"}
METRICS = {"psnr_w": 21.5, "psnr_wn": 30.25, "mse": 0.001, "ssim": 0.9, "lpips": None,
           "steps_w": 100, "steps_n": 50, "steps": 150, "seconds": 1.5}


def make_latents(seed: int, num_ws: int = 6, resolutions: tuple[int, ...] = (4, 8, 8, 16, 16)) -> Latents:
    """One image's latents, deterministic in ``seed`` (as a deterministic embedding would be)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, num_ws, 512, generator=g)
    noise = [torch.randn(1, 1, r, r, generator=g) * 3 for r in resolutions]
    return Latents(w, noise, {"algorithm": "test", "seed": seed})


def entry_inputs(i: int, **kw: Any) -> tuple[str, dict]:
    args: dict[str, Any] = {"image_bytes": f"image-{i}".encode(), "mask_bytes": None, "generator_sha256": GEN_SHA,
            "algorithm": "image2stylegan++/reconstruct", "params": PARAMS, "algorithm_version": 1,
            "generator_id": "test-gen", "source_id": f"row-{i}"}
    args.update(kw)
    return make_source(**args)


def put_one(cache: LatentCache, i: int, **kw) -> tuple[str, Latents]:
    key, source = entry_inputs(i)
    lat = make_latents(i, **kw)
    cache.put(key, lat, source=source, metrics=METRICS)
    return key, lat


# -- keys --------------------------------------------------------------------------------
def test_key_stable_and_sensitive_to_every_input():
    base: dict[str, Any] = {
        "image_bytes": b"img", "mask_bytes": b"mask", "generator_sha256": GEN_SHA, "algorithm": "alg",
        "params": {"a": 1, "b": [1.5, "x"], "c": {"d": None}}, "algorithm_version": 1}
    k = cache_key(**base)
    assert k == cache_key(**base) and len(k) == 64
    assert cache_key(**{**base, "params": {"c": {"d": None}, "b": [1.5, "x"], "a": 1.0}}) == k  # order, 1.0 == 1
    variants: list[dict[str, Any]] = [
        {"image_bytes": b"img2"}, {"mask_bytes": None}, {"mask_bytes": b""}, {"mask_bytes": b"mask2"},
        {"generator_sha256": "cd" * 32}, {"algorithm": "alg2"}, {"params": {"a": 2, "b": [1.5, "x"], "c": {"d": None}}},
        {"params": {"a": 1, "b": [1.5, "x"]}}, {"algorithm_version": 2},
    ]
    keys = {cache_key(**{**base, **v}) for v in variants}
    assert k not in keys and len(keys) == len(variants)
    # Length prefixes: moving bytes between adjacent parts changes the key.
    fields: dict[str, Any] = {"generator_sha256": GEN_SHA, "algorithm": "alg", "params_json": "{}",
                              "algorithm_version": 1}
    assert (_key_from_fields(image_sha256="ab", mask_sha256="cd", **fields)
            != _key_from_fields(image_sha256="abc", mask_sha256="d", **fields))
    key, source = make_source(**base)
    assert key == k and source["params"] == {"a": 1, "b": [1.5, "x"], "c": {"d": None}}


def test_key_golden_value():
    # Changing the derivation silently would orphan every cached latent: bump the key tag instead.
    k = cache_key(image_bytes=b"img", mask_bytes=None, generator_sha256=GEN_SHA, algorithm="alg",
                  params={"x": 0.1}, algorithm_version=1)
    assert k == GOLDEN_KEY


GOLDEN_KEY = "c38a5d55b85317746753af4e03215709e2edd64a582425d75fe3bd68929f210c"


def test_canonical_params_rejects_unstable_values():
    assert canonical_params({"b": 0.1, "a": (1, 2.0)}) == '{"a":[1,2],"b":0.1}'
    assert canonical_params({"x": np.float32(0.5), "y": np.int64(3)}) == '{"x":0.5,"y":3}'
    with pytest.raises(ValueError):
        canonical_params({"x": float("nan")})
    with pytest.raises(TypeError):
        canonical_params({"x": object()})


# -- main path on local + S3 ---------------------------------------------------------------
def test_round_trip_bitwise(storage_root):
    cache = LatentCache(storage_root)
    key, source = entry_inputs(0)
    lat = make_latents(0)
    entry = cache.put(key, lat, source=source, metrics=METRICS)
    assert entry.key == key and entry.status == "ok" and entry.w_shape == (6, 512)
    assert entry.npz_path == npz_path(key) and entry.npz_path.startswith(f"cache/latents/{key[:2]}/")
    assert entry.metrics["psnr_wn"] == 30.25 and entry.metrics["lpips"] is None
    assert entry.timings == {"seconds": 1.5, "steps_w": 100, "steps_n": 50, "steps": 150}
    assert entry.params == PARAMS and entry.source_id == "row-0"

    fresh = LatentCache(storage_root)
    hits = fresh.lookup([key, "0" * 64])
    assert list(hits) == [key] and hits[key].checksum == entry.checksum
    got = fresh.get(key)
    assert got is not None
    assert torch.equal(got.w, lat.w) and got.w.dtype == torch.float32
    assert len(got.noise) == len(lat.noise)
    assert all(torch.equal(a, b) for a, b in zip(got.noise, lat.noise, strict=True))
    assert got.meta["seed"] == 0 and got.meta["cache"]["key"] == key
    assert fresh.get("0" * 64) is None

    table = fresh.ls(with_w=True)
    assert table.schema.field("w").type == pa.fixed_shape_tensor(pa.float32(), [6, 512])
    np.testing.assert_array_equal(table.column("w").combine_chunks().to_numpy_ndarray()[0], lat.w[0].numpy())
    assert fresh.verify().ok


def test_idempotent_reput_writes_nothing(storage_root):
    cache = LatentCache(storage_root)
    key, source = entry_inputs(1)
    first = cache.put(key, make_latents(1), source=source, metrics=METRICS)
    parts = cache.index_parts()
    blob = storage.read_bytes(cache.npz_url(key))
    again = LatentCache(storage_root).put(key, make_latents(1), source=source, metrics=METRICS)
    assert again == first
    assert cache.index_parts() == parts and storage.read_bytes(cache.npz_url(key)) == blob
    # A batch with one new key and one known key: one new part holding only the new row.
    key2, source2 = entry_inputs(2)
    out = cache.put_many([key, key2], Latents.stack([make_latents(1), make_latents(2)]), sources=[source, source2])
    assert [e.key for e in out] == [key, key2]
    new_parts = [p for p in cache.index_parts() if p not in parts]
    assert len(new_parts) == 1 and cache.ls(dedupe=False).num_rows == 2


def test_key_must_match_source(storage_root):
    cache = LatentCache(storage_root)
    key, _ = entry_inputs(1)
    _, other_source = entry_inputs(2)
    with pytest.raises(ValueError, match="does not match"):
        cache.put(key, make_latents(1), source=other_source)
    assert not storage.exists(cache.npz_url(key)) and cache.index_parts() == []


def test_crash_between_npz_and_index_is_repaired(storage_root, monkeypatch):
    cache = LatentCache(storage_root)
    with monkeypatch.context() as m:
        def crash(self, rows):
            raise OSError("simulated crash after the NPZ PUT")

        m.setattr(LatentCache, "_write_index_part", crash)
        for i in (3, 4, 5):
            with pytest.raises(OSError, match="simulated"):
                put_one(cache, i)
    keys = [entry_inputs(i)[0] for i in (3, 4, 5)]
    assert cache.index_parts() == [] and all(storage.exists(cache.npz_url(k)) for k in keys)
    report = cache.verify()
    assert sorted(report.orphans) == sorted(keys) and report.ok  # orphans are repairable, not errors

    # Never recompute: any put from here on would be a recompute, so forbid it.
    monkeypatch.setattr(LatentCache, "put_many", lambda *a, **k: pytest.fail("recomputed"))
    fresh = LatentCache(storage_root)
    hits = fresh.lookup([keys[0]])  # lookup adopts the orphans it is asked about
    assert hits[keys[0]].status == "adopted" and hits[keys[0]].metrics["psnr_wn"] == 30.25
    assert sorted(fresh.adopt_orphans()) == sorted(keys[1:])  # the start-of-run sweep adopts the rest
    assert fresh.adopt_orphans() == []
    assert set(fresh.lookup(keys)) == set(keys)
    rep = fresh.verify()
    assert rep.ok and rep.orphans == [] and rep.verified == 3
    adopted = fresh.get(keys[1])
    assert adopted is not None
    assert torch.equal(adopted.w, make_latents(4).w)


def _writer(root: str, i: int, barrier) -> None:
    barrier.wait()
    key, source = entry_inputs(i)
    LatentCache(root).put(key, make_latents(i), source=source, metrics=METRICS)


def test_concurrent_writers_threads_and_processes(storage_root):
    key, _ = entry_inputs(7)
    barrier = threading.Barrier(4)
    threads = [threading.Thread(target=_writer, args=(storage_root, 7, barrier)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctx = mp.get_context("spawn")
    pbarrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(storage_root, 8, pbarrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    key8, _ = entry_inputs(8)
    cache = LatentCache(storage_root)
    rep = cache.verify()
    assert rep.ok and rep.orphans == [] and rep.keys == 2 and rep.verified == 2
    assert rep.index_rows >= 2  # racing writers may each add a row ...
    assert cache.ls().num_rows == 2  # ... which readers collapse
    assert set(cache.lookup([key, key8])) == {key, key8}
    got7, got8 = cache.get(key), cache.get(key8)
    assert got7 is not None and got8 is not None
    assert torch.equal(got7.w, make_latents(7).w) and torch.equal(got8.w, make_latents(8).w)


def test_verify_detects_corrupt_npz_and_put_overwrites(storage_root):
    cache = LatentCache(storage_root)
    (k_flip, _), (k_trunc, _), (k_ok, _) = (put_one(cache, i) for i in (10, 11, 12))
    blob = bytearray(storage.read_bytes(cache.npz_url(k_flip)))
    mid = len(blob) // 2
    blob[mid:mid + 4] = bytes(b ^ 0xFF for b in blob[mid:mid + 4])
    storage.write_bytes(cache.npz_url(k_flip), bytes(blob))
    good = storage.read_bytes(cache.npz_url(k_trunc))
    storage.write_bytes(cache.npz_url(k_trunc), good[: len(good) // 3])

    rep = LatentCache(storage_root).verify()
    assert not rep.ok and set(rep.corrupt) == {k_flip, k_trunc} and rep.verified == 1
    assert cache.get(k_flip) is None and cache.get(k_trunc) is None and cache.get(k_ok) is not None
    with pytest.raises(CorruptEntryError):
        decode_entry(good, k_ok)  # an intact NPZ under the wrong key is not trusted either

    # A lookup still returns the rows (existence only); the caller's get() -> None -> recompute -> put.
    assert k_flip in cache.lookup([k_flip])
    put_one(cache, 10)
    put_one(cache, 11)
    rep = cache.verify()
    assert rep.ok and rep.verified == 3


def test_missing_npz_is_not_returned(storage_root):
    cache = LatentCache(storage_root)
    k, _ = put_one(cache, 13)
    storage.delete(cache.npz_url(k))
    assert cache.lookup([k]) == {}
    many = [k] + [f"{i:064x}" for i in range(40)]  # > HEAD_CHECK_MAX_KEYS: the listing path
    assert cache.lookup(many) == {}
    rep = cache.verify()
    assert rep.missing == [k] and not rep.ok


def test_compact_keeps_every_row(storage_root):
    cache = LatentCache(storage_root)
    keys = [put_one(cache, i)[0] for i in range(20, 24)]
    keys += [put_one(cache, i, num_ws=4, resolutions=(4, 8, 8))[0] for i in (24, 25)]  # another w shape
    # Duplicate rows (as racing writers or a repeated adoption leave them).
    cache._adopt(keys[:2])
    bad_part = storage.join(cache.index_url, "part-garbage.parquet")
    storage.write_bytes(bad_part, b"not parquet")
    before = cache.ls(dedupe=False)
    assert before.num_rows == 8 and len(cache.index_parts()) == 8

    rep = LatentCache(storage_root).compact()
    assert rep.parts_before == 8 and rep.rows_before == 8 and rep.rows_after == 6 and rep.duplicates_dropped == 2
    assert list(rep.bad_parts) == [bad_part] and bad_part in cache.index_parts()
    storage.delete(bad_part)
    parts = cache.index_parts()
    assert len(parts) == 2 and sorted(parts) == sorted(rep.written)  # one part per w shape
    after = cache.ls(dedupe=False)
    assert after.num_rows == 6 and sorted(after.column("key").to_pylist()) == sorted(keys)
    assert set(before.column("key").to_pylist()) == set(after.column("key").to_pylist())
    assert cache.verify().ok and set(cache.lookup(keys)) == set(keys)
    assert LatentCache(storage_root).compact().parts_after == 2  # nothing more to merge per shape


def test_float16_noise_round_trip(storage_root):
    cache = LatentCache(storage_root)
    key, source = entry_inputs(30)
    lat = make_latents(30)
    e16 = cache.put(key, lat, source=source, noise_dtype="float16")
    key32, source32 = entry_inputs(31)
    e32 = cache.put(key32, make_latents(31), source=source32)
    assert e16.noise_dtype == "float16" and e16.npz_bytes < e32.npz_bytes
    got = cache.get(key)
    assert got is not None
    assert torch.equal(got.w, lat.w)  # w always float32
    for a, b in zip(got.noise, lat.noise, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2**-11, atol=1e-7)
    assert cache.verify().ok
    with pytest.raises(ValueError, match="non-finite"):
        big = make_latents(32)
        big.noise[0][0, 0, 0, 0] = 1e6  # float16 overflows at 65504
        key_big, source_big = entry_inputs(32)
        cache.put(key_big, big, source=source_big, noise_dtype="float16")


# -- local only --------------------------------------------------------------------------------
def test_lookup_reads_each_part_once_and_no_npz(tmp_path, monkeypatch):
    import i2score.data.cache.index as cache_mod

    cache = LatentCache(str(tmp_path))
    n = 40
    pairs = [entry_inputs(100 + i) for i in range(n)]
    lats = Latents.stack([make_latents(100 + i, num_ws=2, resolutions=(4,)) for i in range(n)])
    cache.put_many([k for k, _ in pairs[:20]], lats[list(range(20))], sources=[s for _, s in pairs[:20]])
    cache.put_many([k for k, _ in pairs[20:]], lats[list(range(20, 40))], sources=[s for _, s in pairs[20:]])
    assert len(cache.index_parts()) == 2
    reads: list[str] = []
    real_read_part = cache_mod._read_part

    def counting_read_part(url: str, cols: Sequence[str] | None) -> pa.Table:
        reads.append(url)
        return real_read_part(url, cols)

    monkeypatch.setattr(cache_mod, "_read_part", counting_read_part)
    monkeypatch.setattr(storage, "read_bytes", lambda *a, **k: pytest.fail("per-key object read"))
    monkeypatch.setattr(storage, "exists", lambda *a, **k: pytest.fail("per-key HEAD for a bulk lookup"))
    hits = LatentCache(str(tmp_path)).lookup([k for k, _ in pairs] + ["f" * 64])
    assert len(hits) == n and sorted(reads) == sorted(cache.index_parts())


def test_cli_cache_commands(tmp_path):
    import typer
    from typer.testing import CliRunner

    from i2score.cli.cache import cache_app

    app = typer.Typer()
    app.add_typer(cache_app, name="cache")
    root = str(tmp_path / "store")
    cache = LatentCache(root)
    k1, _ = put_one(cache, 40)
    k2, _ = put_one(cache, 41)
    runner = CliRunner(env={"COLUMNS": "200"})  # rich wraps/elides cells in a narrow terminal
    res = runner.invoke(app, ["cache", "ls", root])
    assert res.exit_code == 0 and k1[:8] in res.output and "2 entries" in res.output  # 8 digits: 80 columns
    res = runner.invoke(app, ["cache", "show", root, k2[:10]])
    assert res.exit_code == 0 and "row-41" in res.output and "yes" in res.output
    assert runner.invoke(app, ["cache", "verify", root]).exit_code == 0
    res = runner.invoke(app, ["cache", "compact", root])
    assert res.exit_code == 0 and "2 -> 1" in res.output
    storage.write_bytes(cache.npz_url(k1), b"PK\x03\x04 truncated")
    res = runner.invoke(app, ["cache", "verify", root])
    assert res.exit_code == 1 and k1 in res.output


def test_bench_cache_lookup_small(tmp_path):
    from i2score.bench.cache import bench_cache_lookup

    out = bench_cache_lookup(str(tmp_path), 600, w_shape=(4, 512), rows_per_part=250, repeats=1)
    assert out["parts"] == 3 and out["index_rows"] == 600
    assert out["hits_index_only"] == 600 and out["hits_with_npz_check"] == 600
    assert out["lookup_with_npz_check_rows_per_s"] > 0


def test_lookup_survives_concurrent_compaction(tmp_path, monkeypatch):
    cache = LatentCache(str(tmp_path))
    keys = [put_one(cache, i, num_ws=2, resolutions=(4,))[0] for i in (50, 51, 52)]
    stale = cache.index_parts()
    cache.compact()  # deletes the parts a slower reader has already listed
    real = LatentCache.index_parts
    calls = []

    def listing(self):
        calls.append(1)
        return stale if len(calls) == 1 else real(self)

    monkeypatch.setattr(LatentCache, "index_parts", listing)
    assert set(LatentCache(str(tmp_path)).lookup(keys)) == set(keys) and len(calls) == 2


def test_failed_npz_write_indexes_the_others(tmp_path, monkeypatch):
    cache = LatentCache(str(tmp_path))
    pairs = [entry_inputs(60 + i) for i in range(3)]
    lats = Latents.stack([make_latents(60 + i, num_ws=2, resolutions=(4,)) for i in range(3)])
    bad_url = cache.npz_url(pairs[1][0])
    real_write = storage.write_bytes

    def flaky(url, data, **kw):
        if url == bad_url:
            raise PermissionError("simulated PUT failure")
        return real_write(url, data, **kw)

    monkeypatch.setattr(storage, "write_bytes", flaky)
    with pytest.raises(PermissionError):
        cache.put_many([k for k, _ in pairs], lats, sources=[s for _, s in pairs])
    monkeypatch.undo()
    assert sorted(cache.ls().column("key").to_pylist()) == sorted([pairs[0][0], pairs[2][0]])
    assert cache.verify().ok
