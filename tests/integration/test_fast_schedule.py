"""The ``fast`` schedule on the bundled demo model and its bundled encoder: hybrid inversion
reaches more than the mean-latent start does in the same kind of short budget."""

from __future__ import annotations

import statistics

from i2score.encoders.checkpoints import load_encoder
from i2score.encoders.registry import default_encoder_for
from i2score.generator.checkpoints import load_generator
from i2score.method.applications import reconstruct
from i2score.runs.config import SCHEDULES
from tests.integration.test_demo_model import _heldout


def test_fast_beats_100_plus_100_from_the_mean_on_four_heldout_portraits(vgg) -> None:
    G = load_generator("demo-faces-64")
    encoder = load_encoder(default_encoder_for("demo-faces-64") or "", device="cpu")
    x = _heldout(4)
    fast = SCHEDULES["fast"]
    hybrid = reconstruct(x, G, steps_w=fast.steps_w, steps_n=fast.steps_n, lr_w=fast.lr_w, lr_n=fast.lr_n,
                         init="encoder", encoder=encoder, early_stop=fast.early_stop(), vgg=vgg, lpips=False)
    mean = reconstruct(x, G, steps_w=100, steps_n=100, init="mean", vgg=vgg, lpips=False)
    fast_psnr = statistics.median(m["psnr_wn"] for m in hybrid.metrics)
    mean_psnr = statistics.median(m["psnr_wn"] for m in mean.metrics)
    assert fast_psnr > mean_psnr + 1.0, (fast_psnr, mean_psnr)
    # The encoder's start is better than the mean latent's for every image.
    assert all(h["psnr_init"] > m["psnr_init"] for h, m in zip(hybrid.metrics, mean.metrics, strict=True))
