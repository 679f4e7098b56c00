"""shelfml: train, export, serve and benchmark catalog models."""

__version__ = "0.1.0"
