"""Image encoders (pSp, e4e, ReStyle): a W+ code in one forward pass, the start point of
hybrid inversion."""

from i2score.encoders.base import ARCHS, BACKBONES, Encoder, EncoderConfig, resize_to

__all__ = ["ARCHS", "BACKBONES", "Encoder", "EncoderConfig", "resize_to"]
