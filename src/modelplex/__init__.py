"""modelplex: one stable, documented API over many models and versions."""

__version__ = "0.1.0"
