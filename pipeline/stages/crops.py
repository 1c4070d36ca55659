"""Stage crops (being written)."""
