"""``python -m pipeline`` is the same as ``assetd``."""
from .cli import main

main()
