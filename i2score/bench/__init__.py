"""Benchmarks behind ``i2s bench``: embedding speed, quality, edits, the cache and manifests."""
