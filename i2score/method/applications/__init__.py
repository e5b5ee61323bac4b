"""The applications of Image2StyleGAN++ (Sec. 7), one module per algorithm box."""
