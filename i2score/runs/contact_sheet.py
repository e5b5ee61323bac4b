"""Labelled PNG grids of inputs, masks and results (the reports' and README's pictures)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor


@dataclass
class Cell:
    """One tile: an image and a caption (under the tile, wrapped to its width, never cut).

    ``image`` is ``[3, H, W]`` in [-1, 1] (an RGB tensor), ``[1, H, W]`` or ``[H, W]`` in [0, 1]
    (a mask, drawn white on black), or ``uint8 [H, W, 3]``.
    """

    image: Tensor | np.ndarray
    caption: str = ""


def _to_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy tiles must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        return image
    t = image.detach().float().cpu()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"tensor tiles must be [3, H, W] or [1, H, W], got {list(image.shape)}")
    if t.shape[0] == 1:  # a mask in [0, 1]
        arr = (t.clamp(0, 1) * 255).round().byte().expand(3, -1, -1)
    else:
        arr = ((t.clamp(-1, 1) + 1) * 127.5).round().byte()
    return arr.permute(1, 2, 0).numpy()


def wrap_text(text: str, width: int, measure: Callable[[str], float]) -> list[str]:
    """``text`` broken into lines no wider than ``width`` (as ``measure`` says, in pixels), whole:
    every character is kept. Lines break at spaces, else after ``-``, ``_``, ``.`` or ``/``, else
    anywhere (a long id without separators); explicit newlines are kept."""
    lines: list[str] = []
    for para in text.split("\n"):
        rest = para
        while rest and measure(rest) > width:
            # The longest prefix that fits (at least one character, so every line makes progress).
            n = 1
            while n < len(rest) and measure(rest[:n + 1]) <= width:
                n += 1
            cut = max((rest.rfind(c, 0, n + 1) for c in " "), default=-1)
            if cut > 0:  # a space: it ends the line and is dropped
                lines.append(rest[:cut])
                rest = rest[cut + 1:]
                continue
            cut = max(rest.rfind(c, 0, n) for c in "-_./")
            n = cut + 1 if cut >= 0 else n
            lines.append(rest[:n])
            rest = rest[n:]
        lines.append(rest)
    return lines


def contact_sheet(rows: Sequence[Sequence[Cell | None]], *, scale: int = 2, title: str = "",
                  column_titles: Sequence[str] = ()) -> Image.Image:
    """Lay out ``rows`` of :class:`Cell` (None = empty tile) as one labelled RGB image.

    Every tile is up-scaled ``scale`` times with nearest neighbour (small generators' pixels
    stay visible). Captions, column titles and the title are wrapped to their width, never cut
    (each row is as tall as its longest caption). Returns a Pillow image; save it with
    ``.save(path)``.
    """
    tiles = [[None if c is None else (_to_uint8(c.image), c.caption) for c in row] for row in rows]
    sizes = [t[0].shape[:2] for row in tiles for t in row if t is not None]
    if not sizes:
        raise ValueError("contact sheet has no tiles")
    th, tw = (max(s[0] for s in sizes) * scale, max(s[1] for s in sizes) * scale)
    ncols = max(len(r) for r in tiles)
    font = ImageFont.load_default()
    pad = 4
    width = ncols * (tw + pad) + pad
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def measure(text: str) -> float:
        return probe.textlength(text, font=font)

    line_h = int(font.getbbox("Ag")[3]) + 2 if hasattr(font, "getbbox") else 12
    title_lines = wrap_text(title, width - 2 * pad, measure) if title else []
    col_lines = [wrap_text(name, tw, measure) for name in column_titles]
    captions = [[[] if t is None or not t[1] else wrap_text(t[1], tw, measure) for t in row] for row in tiles]
    cap_rows = [max((len(c) for c in row), default=0) for row in captions]
    col_h = max((len(c) for c in col_lines), default=0) * line_h
    top = (len(title_lines) * line_h + pad if title_lines else 0) + (col_h + pad if col_lines else 0)
    height = top + sum(th + n * line_h + 2 + pad for n in cap_rows) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for k, line in enumerate(title_lines):
        draw.text((pad, y + k * line_h), line, fill=(0, 0, 0), font=font)
    y += len(title_lines) * line_h + pad if title_lines else 0
    for j, name_lines in enumerate(col_lines):
        for k, line in enumerate(name_lines):
            draw.text((pad + j * (tw + pad), y + k * line_h), line, fill=(60, 60, 60), font=font)
    y += col_h + pad if col_lines else 0
    for row, row_caps, n_lines in zip(tiles, captions, cap_rows, strict=True):
        for j, (tile, lines) in enumerate(zip(row, row_caps, strict=True)):
            if tile is None:
                continue
            arr = tile[0]
            img = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.Resampling.NEAREST)
            x = pad + j * (tw + pad)
            sheet.paste(img, (x, y))
            for k, line in enumerate(lines):
                draw.text((x, y + th + 1 + k * line_h), line, fill=(0, 0, 0), font=font)
        y += th + n_lines * line_h + 2 + pad
    return sheet


def batch_cells(images: Tensor, captions: Sequence[str] | None = None) -> list[Cell]:
    """``[B, C, H, W]`` -> one :class:`Cell` per image."""
    caps = list(captions) if captions is not None else [""] * images.shape[0]
    return [Cell(images[b], caps[b]) for b in range(images.shape[0])]


def grid_tensor(images: Tensor, columns: int) -> Tensor:
    """``[B, 3, H, W]`` -> one ``[3, rows*H, columns*W]`` image (unused slots black)."""
    b, c, h, w = images.shape
    rows = (b + columns - 1) // columns
    out = torch.full((c, rows * h, columns * w), -1.0, dtype=images.dtype)
    for i in range(b):
        r, k = divmod(i, columns)
        out[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = images[i].cpu()
    return out
