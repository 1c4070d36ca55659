"""assetd: watched-folder asset pipeline daemon."""
__version__ = "0.1.0"
