"""Generator checkpoints: format detection and one loader per format."""
