"""The content-addressed latent cache (NPZ entries plus a Parquet index)."""

from i2score.data.cache.store import LatentCache, make_source, source_key

__all__ = ["LatentCache", "make_source", "source_key"]
