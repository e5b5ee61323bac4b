"""The latent cache's main paths again, on a real S3 server (SeaweedFS): round trips, idempotent
puts, crash repair, concurrent writers, verification, compaction and float16 noise."""

from __future__ import annotations

import pytest

from tests.unit.test_cache import (
    test_compact_keeps_every_row,
    test_concurrent_writers_threads_and_processes,
    test_crash_between_npz_and_index_is_repaired,
    test_float16_noise_round_trip,
    test_idempotent_reput_writes_nothing,
    test_key_must_match_source,
    test_missing_npz_is_not_returned,
    test_round_trip_bitwise,
    test_verify_detects_corrupt_npz_and_put_overwrites,
)

__all__ = [
    "test_compact_keeps_every_row",
    "test_concurrent_writers_threads_and_processes",
    "test_crash_between_npz_and_index_is_repaired",
    "test_float16_noise_round_trip",
    "test_idempotent_reput_writes_nothing",
    "test_key_must_match_source",
    "test_missing_npz_is_not_returned",
    "test_round_trip_bitwise",
    "test_verify_detects_corrupt_npz_and_put_overwrites",
]


@pytest.fixture()
def storage_root(s3_root):
    """The unit tests' store, on SeaweedFS."""
    return s3_root
