"""Perceptual features: ImageNet VGG16 and LPIPS, and where their weights come from."""
