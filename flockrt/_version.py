"""The package version, in one place (the service API reports it)."""

__version__ = "0.1.0"
