"""The package version, alone in a module of its own: reading it imports nothing else (setup.cfg
reads it with `attr:`; caches, checkpoints and prepare.json record it)."""
__version__ = "0.1.0"
