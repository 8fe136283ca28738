"""The package's version, written into result.json, scan datasets and fitted models."""

__version__ = "0.1.0"
