"""Ray Serve: the HTTP app (`app.py`) and what crosses its boundary (`codec.py`); the app run
with `serve run` (`launcher.py`) and held under load (`loadgen.py`, `replicas.py`, `soak.py`)."""
