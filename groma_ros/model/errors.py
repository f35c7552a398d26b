"""Exceptions of the model package: what went wrong, by kind, so callers can tell a refusal from a full disk."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model or cannot be read."""


class CheckpointRefusedError(CheckpointError):
    """A weight file that is more than plain tensors (pickled code or objects); it was not executed."""


class CheckpointMemoryError(CheckpointError):
    """Not enough memory (host or device) to hold the weights in the requested dtype."""


class ModelOutputError(RuntimeError):
    """The network produced non-finite values (NaN/inf scores or boxes): broken weights or kernels.

    Deliberately not a ``ValueError``: the caller's input is fine, the model is not (the node answers
    MODEL_ERROR, not BAD_REQUEST).
    """
