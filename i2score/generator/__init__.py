"""StyleGAN2 generator, checkpoint loaders and the model registry."""

from i2score.generator.network import Generator, GeneratorConfig, StyleGAN2, SynthesisState

__all__ = ["Generator", "GeneratorConfig", "StyleGAN2", "SynthesisState"]
