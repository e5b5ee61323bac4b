"""The NPZ entry format: one embedding's ``w``, noise maps and metadata in one object.

An entry is :meth:`Latents.to_npz_bytes` of one image with ``meta["cache"]`` holding the key,
the format tag (:data:`ENTRY_FORMAT`), a sha256 of its arrays and every field of its index row,
so it can be verified on its own (:func:`decode_entry`) and re-indexed without recomputation.

Noise maps are float32 by default; ``noise_dtype="float16"`` halves the NPZ size (noise maps are
most of it at high resolution: ~2.8 M values at 1024 px vs 9,216 for ``w``). Measured cost on
the small test generator (``StyleGAN2(32, channel_max=32, n_mapping=2, seed=1)``, CPU), as the
PSNR between renders of the same ``w`` with float32 noise and with float16-rounded noise:
87.6 dB mean (85.2 dB worst of 8) for random ``N(0, 1)`` noise, and 79.4 dB mean (76.9 dB worst
of 4) for noise optimised by a short reconstruction (100 + 200 steps; optimised noise reaches
|n| ~ 135, so its absolute rounding error is larger). Reconstruction PSNRs against the target
are 25-40 dB, so the rounding is invisible there. ``w`` always stays float32.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from i2score.data.cache.keys import _check_key, _lp, canonical_params, source_key

if TYPE_CHECKING:  # i2score.data.latents imports torch; index-only commands (``i2s cache ls``) skip it
    from i2score.data.latents import Latents

#: Format tag of the NPZ metadata (``meta["cache"]["format"]``).
ENTRY_FORMAT = "i2score.latent-cache/1"
_NOISE_DTYPES = {"float32": np.float32, "float16": np.float16}
#: Metric columns of the index (nullable float64).
METRIC_COLUMNS = ("psnr_w", "psnr_wn", "mse", "ssim", "lpips")
#: Timing columns of the index: ``seconds`` float64, step counts int32 (all nullable).
TIMING_COLUMNS = ("seconds", "steps_w", "steps_n", "steps")


@dataclass(frozen=True)
class CacheEntry:
    """One index row (without ``w``; :meth:`LatentCache.get` loads the latents)."""

    key: str
    npz_url: str
    npz_path: str
    source_id: str | None
    image_sha256: str
    mask_sha256: str | None
    generator_id: str | None
    generator_sha256: str
    algorithm: str
    algorithm_version: int
    params_json: str
    w_shape: tuple[int, int]
    noise_dtype: str
    checksum: str
    npz_bytes: int
    metrics: dict[str, float | None]
    timings: dict[str, float | int | None]
    status: str
    created_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json)


class CorruptEntryError(ValueError):
    """An NPZ that is partial, unreadable or inconsistent with its own checksum/metadata."""


def _array_checksum(arrays: Sequence[tuple[str, np.ndarray]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each array, in order, length-prefixed."""
    h = hashlib.sha256()
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(_lp(name.encode()))
        h.update(_lp(a.dtype.str.encode()))
        h.update(_lp(json.dumps(list(a.shape)).encode()))
        h.update(_lp(a.tobytes()))
    return h.hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _split_numbers(metrics: Mapping[str, Any] | None, timings: Mapping[str, Any] | None
                   ) -> tuple[dict[str, float | None], dict[str, float | int | None], dict[str, Any]]:
    """Known metric and timing columns, plus everything else (kept as JSON in ``extra``)."""
    merged = {**(metrics or {}), **(timings or {})}
    m = {k: (None if merged.get(k) is None else float(merged[k])) for k in METRIC_COLUMNS}
    t: dict[str, float | int | None] = {"seconds": None if merged.get("seconds") is None else float(merged["seconds"])}
    for k in TIMING_COLUMNS[1:]:
        t[k] = None if merged.get(k) is None else int(merged[k])
    extra = {k: v for k, v in merged.items() if k not in METRIC_COLUMNS and k not in TIMING_COLUMNS}
    return m, t, extra


def encode_entry(key: str, latents: Latents, *, source: Mapping[str, Any], metrics: Mapping[str, Any] | None,
                 timings: Mapping[str, Any] | None, noise_dtype: str = "float32",
                 created_at: datetime | None = None) -> tuple[bytes, dict[str, Any]]:
    """NPZ bytes of one entry and its ``cache`` metadata (also stored inside the NPZ).

    ``latents`` must hold one image. The NPZ is :meth:`Latents.to_npz_bytes` with
    ``meta["cache"]`` = key, format, arrays checksum, shapes, noise dtype, created_at, source,
    metrics, timings — all an index row needs, so an orphan can be re-indexed.
    """
    _check_key(key)
    if len(latents) != 1:
        raise ValueError(f"a cache entry holds one image, got a batch of {len(latents)}")
    if noise_dtype not in _NOISE_DTYPES:
        raise ValueError(f"noise_dtype must be one of {sorted(_NOISE_DTYPES)}, got {noise_dtype!r}")
    expected = source_key(source)
    if expected != key:
        raise ValueError(f"key {key[:12]}… does not match its source (which hashes to {expected[:12]}…)")
    np_dtype = _NOISE_DTYPES[noise_dtype]
    # The same conversions Latents.to_npz_bytes applies, so the checksum covers the stored bytes.
    w = latents.w.detach().cpu().float().numpy()
    with np.errstate(over="ignore"):  # overflow is checked just below, with a clearer message
        noises = [n.detach().cpu().float().numpy().astype(np_dtype) for n in latents.noise]
    if not all(np.isfinite(n).all() for n in noises) or not np.isfinite(w).all():
        # float16 tops out at 65504: an overflowing noise map must not be stored as inf.
        raise ValueError(f"non-finite values in w or noise (noise_dtype={noise_dtype})")
    arrays = [("w", w)] + [(f"noise_{i:02d}", n) for i, n in enumerate(noises)]
    m, t, extra = _split_numbers(metrics, timings)
    src = dict(source)
    src["params"] = json.loads(canonical_params(source["params"]))
    cache_meta = {
        "format": ENTRY_FORMAT,
        "key": key,
        "checksum": _array_checksum(arrays),
        "w_shape": list(w.shape),
        "noise_shapes": [list(n.shape) for n in noises],
        "noise_dtype": noise_dtype,
        "created_at": (created_at or _now()).isoformat(),
        "source": src,
        "metrics": m,
        "timings": t,
        "extra": extra,
    }
    meta = dict(latents.meta)
    meta["cache"] = cache_meta
    from i2score.data.latents import Latents

    data = Latents(latents.w, latents.noise, meta).to_npz_bytes(noise_dtype=np_dtype)
    return data, cache_meta


def decode_entry(data: bytes, key: str | None = None) -> tuple[Latents, dict[str, Any]]:
    """Parse and verify NPZ bytes; returns ``(latents, cache_meta)`` (noise upcast to float32).

    Raises :class:`CorruptEntryError` for a truncated/garbled archive, a wrong key, a checksum or
    shape mismatch, or metadata whose source does not hash to the key.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            files = set(z.files)
            if "w" not in files or "meta" not in files:
                raise CorruptEntryError(f"missing arrays (has {sorted(files)})")
            meta = json.loads(str(z["meta"]))
            w = z["w"]
            noise_names = sorted(k for k in files if k.startswith("noise_"))
            noises = [z[k] for k in noise_names]
    except CorruptEntryError:
        raise
    except Exception as e:  # zipfile CRC/truncation, JSON, numpy header errors
        raise CorruptEntryError(f"unreadable NPZ: {type(e).__name__}: {e}") from e
    cm = meta.get("cache")
    if not isinstance(cm, dict) or cm.get("format") != ENTRY_FORMAT:
        raise CorruptEntryError("no i2score cache metadata")
    if key is not None and cm.get("key") != key:
        raise CorruptEntryError(f"stored key {str(cm.get('key'))[:12]}… differs from {key[:12]}…")
    arrays = [("w", w)] + list(zip(noise_names, noises, strict=True))
    if _array_checksum(arrays) != cm.get("checksum"):
        raise CorruptEntryError("array checksum mismatch")
    if list(w.shape) != cm.get("w_shape") or w.ndim != 3 or w.shape[0] != 1 or w.dtype != np.float32:
        raise CorruptEntryError(f"w shape/dtype {list(w.shape)} {w.dtype} inconsistent with metadata")
    if [list(n.shape) for n in noises] != cm.get("noise_shapes"):
        raise CorruptEntryError("noise shapes inconsistent with metadata")
    if any(n.dtype != _NOISE_DTYPES.get(cm.get("noise_dtype", "")) for n in noises):
        raise CorruptEntryError("noise dtype inconsistent with metadata")
    try:
        if source_key(cm["source"]) != cm["key"]:
            raise CorruptEntryError("metadata source does not hash to the key")
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptEntryError(f"bad source metadata: {e}") from e
    import torch  # deferred: listing the index does not need torch

    from i2score.data.latents import Latents

    latents = Latents(torch.from_numpy(w.copy()), [torch.from_numpy(n.astype(np.float32)) for n in noises], meta)
    return latents, cm
