"""Input manifests: read, validate and load rows."""
