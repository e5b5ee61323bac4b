"""The content-addressed latent cache (NPZ entries plus a Parquet index)."""
