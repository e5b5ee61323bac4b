"""StyleGAN2 and StyleGAN (v1) generators, checkpoint loaders and the model registry."""

from i2score.generator.network import Generator, GeneratorConfig, StyleGAN2, SynthesisState
from i2score.generator.stylegan1 import StyleGAN1, StyleGAN1Config

__all__ = ["Generator", "GeneratorConfig", "StyleGAN1", "StyleGAN1Config", "StyleGAN2", "SynthesisState"]
