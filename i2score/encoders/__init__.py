"""Image encoders (pSp, e4e, ReStyle): a W+ code in one forward pass, the start point of
hybrid inversion."""

from i2score.encoders.base import ARCHS, BACKBONES, Encoder, EncoderConfig, resize_to
from i2score.encoders.checkpoints import load_encoder, load_encoder_file
from i2score.encoders.registry import DEFAULT_ENCODER, ENCODERS, EncoderSpec, get_encoder_spec

__all__ = ["ARCHS", "BACKBONES", "DEFAULT_ENCODER", "ENCODERS", "Encoder", "EncoderConfig", "EncoderSpec",
           "get_encoder_spec", "load_encoder", "load_encoder_file", "resize_to"]
