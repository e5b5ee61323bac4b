"""The paper: Image2StyleGAN++'s losses, masks, metrics, building blocks (Sec. 6) and
applications (Sec. 7)."""
