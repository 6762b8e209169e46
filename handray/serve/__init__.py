"""Ray Serve: the HTTP app (`app.py`) and what crosses its boundary (`codec.py`)."""
