"""The content-addressed latent cache (NPZ entries plus a Parquet index).

- :mod:`~i2score.data.cache.keys`: what identifies an embedding (:func:`cache_key`, :func:`make_source`);
- :mod:`~i2score.data.cache.entry`: the NPZ of one entry, verified on read (:func:`decode_entry`);
- :mod:`~i2score.data.cache.index`: the Parquet index parts (:func:`index_schema`, :class:`LookupResult`);
- :mod:`~i2score.data.cache.store`: :class:`LatentCache`, the write protocol, repair and maintenance.
"""

from i2score.data.cache.entry import (
    ENTRY_FORMAT,
    METRIC_COLUMNS,
    TIMING_COLUMNS,
    CacheEntry,
    CorruptEntryError,
    decode_entry,
    encode_entry,
)
from i2score.data.cache.index import (
    INDEX_VERSION,
    LOOKUP_COLUMNS,
    LookupResult,
    dedupe_latest,
    index_schema,
    part_name,
    table_bytes,
)
from i2score.data.cache.keys import cache_key, canonical_params, make_source, npz_path, sha256_hex, source_key
from i2score.data.cache.store import HEAD_CHECK_MAX_KEYS, CompactReport, LatentCache, VerifyReport

__all__ = [
    "ENTRY_FORMAT",
    "HEAD_CHECK_MAX_KEYS",
    "INDEX_VERSION",
    "LOOKUP_COLUMNS",
    "METRIC_COLUMNS",
    "TIMING_COLUMNS",
    "CacheEntry",
    "CompactReport",
    "CorruptEntryError",
    "LatentCache",
    "LookupResult",
    "VerifyReport",
    "cache_key",
    "canonical_params",
    "decode_entry",
    "dedupe_latest",
    "encode_entry",
    "index_schema",
    "make_source",
    "npz_path",
    "part_name",
    "sha256_hex",
    "source_key",
    "table_bytes",
]
