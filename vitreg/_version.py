"""The package version, in a module of its own that imports nothing: modules at every floor record it (run
directories, zoo provenance, reports), and ``vitreg/__init__`` lazily exports the models and analyses above them."""

__version__ = "0.1.0"
