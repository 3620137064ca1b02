"""M2M: many-to-many image generation with auto-regressive diffusion models."""

__version__ = "0.1.0"
