"""Run outputs (images, the output manifest with lineage, the errors table) written to a real
S3 server (SeaweedFS), as the unit tests write them to a local folder."""

from __future__ import annotations

import pytest

from tests.unit.test_outputs import test_round_trip, test_validation_errors_round_trip

__all__ = ["test_round_trip", "test_validation_errors_round_trip"]


@pytest.fixture()
def storage_root(s3_root):
    """The unit tests' store, on SeaweedFS."""
    return s3_root
