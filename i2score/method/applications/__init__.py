"""The applications of Image2StyleGAN++ (paper Sec. 7), one module per algorithm box:
:mod:`.reconstruct` (Alg. 2), :mod:`.crossover` (Alg. 3), :mod:`.inpaint` (Alg. 4),
:mod:`.scribble` (Alg. 5), :mod:`.style_transfer` (Alg. 6), :mod:`.attribute` (Sec. 7.6),
:mod:`.latent_ops` (morph, style mixing, expression transfer) and :mod:`.augment` (the edits of
dataset augmentation). Each starts from images and, for edits, cached
:class:`~i2score.data.latents.Latents`, and is batched: row ``b`` of every argument belongs
together."""

from i2score.method.applications.attribute import ATTRIBUTE_LAYER, attribute_transfer
from i2score.method.applications.augment import MASK_KINDS, crossover_mask, jitter_w, resample_noise
from i2score.method.applications.common import ALGORITHM_VERSION, EditResult, images_to_tensor
from i2score.method.applications.crossover import crossover
from i2score.method.applications.inpaint import InpaintResult, inpaint, inpainting_w_rows
from i2score.method.applications.latent_ops import expression_transfer, morph, style_mix
from i2score.method.applications.reconstruct import (
    EmbeddingState,
    ReconstructionResult,
    encode_images,
    initial_w,
    reconstruct,
    state_from_arrays,
    state_to_arrays,
)
from i2score.method.applications.scribble import scribble_edit
from i2score.method.applications.style_transfer import local_style_transfer

__all__ = [
    "ALGORITHM_VERSION",
    "ATTRIBUTE_LAYER",
    "MASK_KINDS",
    "EditResult",
    "EmbeddingState",
    "InpaintResult",
    "ReconstructionResult",
    "attribute_transfer",
    "crossover",
    "crossover_mask",
    "encode_images",
    "expression_transfer",
    "images_to_tensor",
    "initial_w",
    "inpaint",
    "inpainting_w_rows",
    "jitter_w",
    "local_style_transfer",
    "morph",
    "reconstruct",
    "resample_noise",
    "scribble_edit",
    "state_from_arrays",
    "state_to_arrays",
    "style_mix",
]
