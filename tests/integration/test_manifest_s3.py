"""Manifest validation and loading on a real S3 server (SeaweedFS): the bad-input corpus and
path resolution of the unit tests, with the manifest and its files on S3."""

from __future__ import annotations

import pytest

from tests.unit.test_manifest import test_bad_input_corpus, test_relative_manifest_path_and_storage_root

__all__ = ["test_bad_input_corpus", "test_relative_manifest_path_and_storage_root"]


@pytest.fixture()
def storage_root(s3_root):
    """The unit tests' store, on SeaweedFS."""
    return s3_root
