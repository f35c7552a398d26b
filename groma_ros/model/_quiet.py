"""Drop two known, harmless import-time log lines that torchao causes in every process that imports transformers.

transformers imports torchao (when installed) as soon as its modeling code loads. On a CPU-only torch, torchao
logs a "Failed to load .../_C_*.so" warning per CUDA extension it ships, and torch's pytree logs a deprecation
line per enum torchao registers. Neither affects what we use (weight-only int8/int4 run on plain torch ops),
so they are filtered by message; every other torchao / pytree record still gets through.
"""

from __future__ import annotations

import logging

_LOGGERS = ("torchao", "torch.utils._pytree")


def _is_noise(record: logging.LogRecord) -> bool:
    text = record.getMessage()
    if record.name == "torchao":
        return text.startswith("Failed to load ") and ".so" in text
    return "is an Enum subclass and is now natively supported" in text


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_noise(record)


def filter_import_noise() -> None:
    """Attach the filter to both loggers (idempotent; they need not exist yet)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise())
