"""The demo's own data: procedural portraits, the sample manifests and the demo generator's
training."""
