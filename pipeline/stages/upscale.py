"""Stage upscale (being written)."""
