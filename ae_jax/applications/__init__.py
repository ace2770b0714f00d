"""Applications of the autoencoders: denoising, features, inpainting, super-resolution,
generation and compression, each measured against classical baselines."""
