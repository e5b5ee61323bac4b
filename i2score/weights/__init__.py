"""Weight files: one safe unpickler and one downloader for the whole package.

* :mod:`~i2score.weights.unpickle`: :class:`~i2score.weights.unpickle.RestrictedUnpickler`, the
  only way i2score unpickles a file it did not write: globals come from an allow-list, so no code
  from the file runs; plus the allow-list for numpy arrays and a numpy-only loader.
* :mod:`~i2score.weights.download`: :func:`~i2score.weights.download.download_file` (atomic,
  sha256-verified, bounded by timeouts) and :func:`~i2score.weights.download.sha256_file`.
* :mod:`~i2score.weights.torchfile`: :func:`~i2score.weights.torchfile.safe_torch_load`, how the
  checkpoint loaders read a ``torch.save`` file (``weights_only=True``; generators and encoders).

A leaf package: it imports nothing else of i2score, so the generator, the feature networks
and the encoders can all use it.
"""
