"""Labelled PNG grids of inputs, masks and results (the reports' and README's pictures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor


@dataclass
class Cell:
    """One tile: an image and a caption (up to two short lines under the tile).

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


def contact_sheet(rows: Sequence[Sequence[Cell | None]], *, scale: int = 2, title: str = "",
                  column_titles: Sequence[str] = ()) -> Image.Image:
    """Lay out ``rows`` of :class:`Cell` (None = empty tile) as one labelled RGB image.

    Every tile is up-scaled ``scale`` times with nearest neighbour (small generators' pixels
    stay visible). Returns a Pillow image; save it with ``.save(path)``.
    """
    tiles = [[None if c is None else (_to_uint8(c.image), c.caption) for c in row] for row in rows]
    sizes = [t[0].shape[:2] for row in tiles for t in row if t is not None]
    if not sizes:
        raise ValueError("contact sheet has no tiles")
    th, tw = (max(s[0] for s in sizes) * scale, max(s[1] for s in sizes) * scale)
    ncols = max(len(r) for r in tiles)
    font = ImageFont.load_default()
    line_h, pad = 12, 4
    cap_h = 2 * line_h + 2
    top = (line_h + pad if title else 0) + (line_h + pad if column_titles else 0)
    width = ncols * (tw + pad) + pad
    height = top + len(tiles) * (th + cap_h + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    if title:
        draw.text((pad, y), title, fill=(0, 0, 0), font=font)
        y += line_h + pad
    if column_titles:
        for j, name in enumerate(column_titles):
            draw.text((pad + j * (tw + pad), y), name[: max(4, tw // 6)], fill=(60, 60, 60), font=font)
        y += line_h + pad
    for row in tiles:
        for j, tile in enumerate(row):
            if tile is None:
                continue
            arr, caption = tile
            img = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.Resampling.NEAREST)
            x = pad + j * (tw + pad)
            sheet.paste(img, (x, y))
            for k, line in enumerate(caption.split("\n")[:2]):
                draw.text((x, y + th + 1 + k * line_h), line[: max(4, tw // 6)], fill=(0, 0, 0), font=font)
        y += th + cap_h + pad
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
