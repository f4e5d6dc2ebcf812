"""The engine's version, recorded in every converted model's metadata."""

__version__ = "0.1.0"
