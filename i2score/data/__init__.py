"""The data plane (a leaf: imports nothing else of i2score): storage, images, manifests, latents
and the latent cache."""
