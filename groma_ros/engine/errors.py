"""The engine's error types: what a caller (the CLI, the ROS node) maps to an exit code or an answer status."""

from __future__ import annotations


class BadRequestError(ValueError):
    """The caller's request is unusable (empty query, bad boxes, bad image); maps to Status.BAD_REQUEST."""


class ModelLoadError(RuntimeError):
    """The model directory is missing or could not be loaded."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """No model directory (or a required file in it) exists."""
