"""The package's version: the one place it is written (pyproject.toml reads
it for the distribution's metadata, setup.py for the helper's py.app)."""
__version__ = "0.2.0"
