"""Generator checkpoints: format detection and one loader per format.

:func:`load_generator` (a registry name, path or URL) and :func:`load_generator_file` (a local
file) detect the format from the file's content; :func:`save_generator` writes i2score's own.
"""

from i2score.generator.checkpoints.detect import detect_format
from i2score.generator.checkpoints.errors import (
    CheckpointError,
    CheckpointMismatchError,
    UnsupportedCheckpointError,
)
from i2score.generator.checkpoints.load import load_generator, load_generator_file, nvidia_noise_const
from i2score.generator.checkpoints.native import save_generator
from i2score.generator.checkpoints.rosinality import save_rosinality
from i2score.weights.unpickle import UnsafePickleError

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "UnsafePickleError",
    "UnsupportedCheckpointError",
    "detect_format",
    "load_generator",
    "load_generator_file",
    "nvidia_noise_const",
    "save_generator",
    "save_rosinality",
]
