"""Build an :class:`~i2score.encoders.base.Encoder` from its config (random weights until a
state dict is loaded)."""

from __future__ import annotations

from torch import Tensor, nn

from i2score.encoders.base import Encoder, EncoderConfig


def build_net(config: EncoderConfig) -> nn.Module:
    """The offsets network of ``config``: ``[B, in_channels, S, S]`` -> ``[B, n_styles, w_dim]``."""
    if config.backbone == "ir_se50":
        from i2score.encoders.irse import build_ir_se50_net

        return build_ir_se50_net(config)
    from i2score.encoders.small import build_small_net

    return build_small_net(config)


def build_encoder(config: EncoderConfig, latent_avg: Tensor | None = None) -> Encoder:
    """A freshly initialised encoder of ``config`` (``latent_avg`` ``[n_styles, w_dim]`` or
    ``[w_dim]``; zeros when None)."""
    return Encoder(config, build_net(config), latent_avg)
