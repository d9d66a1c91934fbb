"""The start-up hook of ``graybaggage run`` (``sitecustomize.py`` here); this folder goes first on PYTHONPATH."""
