"""``Latents``: an embedding ``(w, noise)`` for a batch of images, with NPZ persistence."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch
from torch import Tensor

from i2score.data.redact import redact_tree


@dataclass
class Latents:
    """W+ codes and noise maps for ``B`` images.

    Attributes:
        w: ``[B, L, w_dim]`` float32.
        noise: one tensor ``[B, 1, r, r]`` per noise input, in synthesis order (4x4 first):
            ``G.noise_shapes``, ``L - 1`` on StyleGAN2, ``L`` on StyleGAN1, none on StyleGAN3.
        meta: free-form JSON-serialisable metadata (generator id, schedule, seed, ...).
    """

    w: Tensor
    noise: list[Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.w.ndim != 3:
            raise ValueError(f"w must be [B, L, w_dim], got {list(self.w.shape)}")
        for i, n in enumerate(self.noise):
            if n.ndim != 4 or n.shape[0] != self.w.shape[0] or n.shape[1] != 1:
                raise ValueError(f"noise[{i}] must be [B, 1, r, r] with B={self.w.shape[0]}, got {list(n.shape)}")

    def __len__(self) -> int:
        return int(self.w.shape[0])

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Latents:
        """Select images; an int keeps the batch dimension (``B = 1``)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Latents(self.w[index], [n[index] for n in self.noise], dict(self.meta))

    @staticmethod
    def stack(items: Sequence[Latents]) -> Latents:
        """Concatenate along the batch dimension; ``meta`` of the first item is kept."""
        if not items:
            raise ValueError("cannot stack an empty sequence of Latents")
        w = torch.cat([it.w for it in items])
        noise = [torch.cat([it.noise[j] for it in items]) for j in range(len(items[0].noise))]
        return Latents(w, noise, dict(items[0].meta))

    def to(self, device: torch.device | str) -> Latents:
        return Latents(self.w.to(device), [n.to(device) for n in self.noise], dict(self.meta))

    def detach(self) -> Latents:
        return Latents(self.w.detach().clone(), [n.detach().clone() for n in self.noise], dict(self.meta))

    # -- persistence ----------------------------------------------------------------------
    def to_npz_bytes(self, *, noise_dtype: np.dtype | type = np.float32) -> bytes:
        """Serialise to NPZ bytes: ``w``, ``noise_00``.., and ``meta`` (JSON string, every string
        in it redacted: cache entries carry source ids and generator ids, which may be URLs)."""
        arrays: dict[str, np.ndarray] = {"w": self.w.detach().cpu().float().numpy()}
        for i, n in enumerate(self.noise):
            arrays[f"noise_{i:02d}"] = n.detach().cpu().float().numpy().astype(noise_dtype)
        arrays["meta"] = np.array(json.dumps(redact_tree(self.meta), sort_keys=True))
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> Latents:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            keys = sorted(k for k in z.files if k.startswith("noise_"))
            w = torch.from_numpy(z["w"].copy())
            noise = [torch.from_numpy(z[k].astype(np.float32)) for k in keys]
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        return cls(w, noise, meta)

    def save(self, path_or_url: str, **storage_options: Any) -> None:
        """Write an NPZ to a local path or any fsspec URL, in a single write."""
        data = self.to_npz_bytes()
        with fsspec.open(path_or_url, "wb", **storage_options) as f:
            f.write(data)

    @classmethod
    def load(cls, path_or_url: str, **storage_options: Any) -> Latents:
        """Read an NPZ written by :meth:`save`; float32 round trip is bit-exact."""
        with fsspec.open(path_or_url, "rb", **storage_options) as f:
            return cls.from_npz_bytes(f.read())
