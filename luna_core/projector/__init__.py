"""Projectors: networks that map a CLIP-ViT image embedding straight to an SDXL conditioning."""
