"""One module per stage; backends register themselves in base.py's registry."""
