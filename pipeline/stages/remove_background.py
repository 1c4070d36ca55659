"""Stage remove_background (being written)."""
