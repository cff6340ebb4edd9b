"""Runtimes turn a version folder's artefact into something that predicts a batch."""

from modelplex.core.runtimes.base import Runtime, RuntimeSpec, load_runtime

__all__ = ["Runtime", "RuntimeSpec", "load_runtime"]
