"""Errors raised by the checkpoint loaders."""

from __future__ import annotations

from i2score.generator.network import GeneratorConfig

__all__ = ["CheckpointError", "CheckpointMismatchError", "UnsupportedCheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be turned into a generator."""


class UnsupportedCheckpointError(CheckpointError):
    """The file is a checkpoint, but of a kind or architecture we do not load."""


class CheckpointMismatchError(CheckpointError):
    """Tensor names/shapes in a checkpoint differ from those the inferred architecture needs.

    Attributes ``missing``, ``unexpected`` (key lists), ``mismatched`` (``{key: (got,
    expected)}``) and ``config`` (the inferred :class:`GeneratorConfig`) are also in the message.
    """

    def __init__(self, fmt: str, config: GeneratorConfig | None, missing: list[str],
                 unexpected: list[str], mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
                 note: str = "") -> None:
        self.format = fmt
        self.config = config
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f"{fmt} checkpoint does not match the inferred architecture"]
        if note:
            lines[0] += f" ({note})"
        lines.append(f"  inferred config: {config}")
        lines.append(f"  missing keys ({len(missing)}): {_short_list(missing)}")
        lines.append(f"  unexpected keys ({len(unexpected)}): {_short_list(unexpected)}")
        shapes = [f"{k}: got {list(g)}, expected {list(e)}" for k, (g, e) in mismatched.items()]
        lines.append(f"  shape mismatches ({len(shapes)}): {_short_list(shapes)}")
        super().__init__("\n".join(lines))


def _short_list(items: list[str], limit: int = 40) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
