"""A ``torch.utils.data.Dataset`` over a run's outputs with their cached latents, for training
jobs (an encoder, a classifier on edits, ...)::

    from torch.utils.data import DataLoader

    ds = i2score.open_run(root, run_id).dataset()       # or RunDataset(run)
    for batch in DataLoader(ds, batch_size=8, shuffle=True, num_workers=2):
        batch["image"]     # [B, 3, H, W] float32 in [-1, 1]
        batch["w"]         # [B, L, w_dim] float32
        batch["noise"]     # the noise maps (L - 1 on StyleGAN2): [B, 1, r, r] (4x4 first), as the generator takes them

The dataset holds URLs and cache keys only (it pickles small, so ``num_workers > 0`` works);
each item reads one PNG and one verified NPZ.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor
from torch.utils.data import Dataset

from i2score.data import storage
from i2score.data.cache import LatentCache
from i2score.data.cache.view import NotInCacheError

if TYPE_CHECKING:
    from i2score.runs.results import RunView

__all__ = ["RunDataset"]


@dataclass(frozen=True)
class _Item:
    id: str
    op: str
    source_id: str
    url: str
    key: str


class RunDataset(Dataset[dict[str, Any]]):
    """The outputs of a run, each with the cached latents that go with it.

    Args:
        run: the run (:func:`i2score.open_run`).
        latents: ``"output"`` (default): the latents that render the output itself, which the
            cache holds for reconstructions and inpainting solutions; a run with other outputs
            raises a ValueError naming their ops. ``"source"``: the latents of the first source
            each output was made from (its image; a crossover's reference), for edits and
            augmentations (pairs of an edited image and the code it started from).
        ops: only the outputs of these ops (``["morph", "style_mix"]``); None = every output.
        transform: applied to each item's image tensor (``[3, H, W]`` in [-1, 1]) when given.

    An item is a dict: ``id`` (output id), ``op``, ``source_id`` (whose latents these are),
    ``image`` (``[3, H, W]`` float32 in [-1, 1], the generator's range; ``(x + 1) / 2`` is
    [0, 1]), ``w`` (``[L, w_dim]`` float32) and ``noise`` (one per noise input, ``L - 1`` on StyleGAN2: ``[1, r, r]``,
    float32, 4x4 first). PyTorch's default collate stacks them into ``[B, ...]`` (``noise`` into
    a list of ``[B, 1, r, r]``). Every key is checked against the cache index when the dataset
    is made, so a missing entry fails here, not in the middle of an epoch.
    """

    def __init__(self, run: RunView, *, latents: Literal["output", "source"] = "output",
                 ops: Sequence[str] | None = None, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        if latents not in ("output", "source"):
            raise ValueError(f"latents must be 'output' or 'source', got {latents!r}")
        outputs = run.outputs
        if ops is not None:
            unknown = sorted(set(ops) - {o.op for o in outputs})
            if unknown:
                raise ValueError(f"run {run.run_id} has no outputs of op(s) {unknown}; its ops: "
                                 f"{sorted({o.op for o in outputs})}")
            outputs = [o for o in outputs if o.op in ops]
        items: list[_Item] = []
        without: Counter[str] = Counter()
        for o in outputs:
            if latents == "output":
                sid, key = o.source_ids[0], o.latents_key
            else:
                # The row's own image; an op that starts from its reference alone (crossover) has that.
                sid = o.source_ids[0] if o.source_ids[0] in o.source_keys else next(iter(o.source_keys), "")
                key = o.source_keys.get(sid)
            if key is None or o.url is None:
                without[o.op] += 1
                continue
            items.append(_Item(o.id, o.op, sid, o.url, key))
        if without:
            what = ", ".join(f"{n} {op}" for op, n in sorted(without.items()))
            hint = ("latents='source' gives the latents each output was made from" if latents == "output"
                    else "their latents are cached as outputs: use latents='output'") + "; ops=[...] selects outputs"
            raise ValueError(f"run {run.run_id}: {what} output(s) have no {latents} latents in the cache; {hint}")
        indexed = {e.key for e in run.cache.entries()}
        gone = sorted({i.key for i in items} - indexed)
        if gone:
            raise NotInCacheError(f"run {run.run_id}: {len(gone)} latents its outputs use are not in the cache index "
                                  f"under {storage.redact(run.root)} (e.g. {gone[0][:12]}); re-running the job "
                                  "recomputes them")
        self.root = run.root
        self.run_id = run.run_id
        self.latents = latents
        self.transform = transform
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from i2score.runs.results import read_image_tensor

        it = self.items[index]
        lat = LatentCache(self.root).get(it.key)
        if lat is None:
            raise NotInCacheError(f"run {self.run_id}, output {it.id!r}: the NPZ of cache entry {it.key[:12]} is "
                                  "missing or fails verification (`i2s cache verify`)")
        image = read_image_tensor(it.url, what=f"run {self.run_id} output {it.id}")
        if self.transform is not None:
            image = self.transform(image)
        return {"id": it.id, "op": it.op, "source_id": it.source_id, "image": image, "w": lat.w[0],
                "noise": [n[0] for n in lat.noise]}
