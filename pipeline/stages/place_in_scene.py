"""Stage place_in_scene (being written)."""
