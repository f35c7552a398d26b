"""Weight precisions and quantization modes by name: the one table that the loader, the engine, the converter,
the CLI and the ROS parameters share.

Imports no torch, so ROS parameter validation stays cheap; ``torch_dtype`` imports it when asked.
"""

from __future__ import annotations

from typing import Any

PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "int4")


def precision_name(value: Any) -> str:
    """The canonical name ("float32", "bfloat16", "float16") of a name, an alias or a ``torch.dtype``."""
    name = str(value).strip().lower().removeprefix("torch.")
    name = ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ValueError(f"dtype must be one of {', '.join(PRECISIONS)} (or {', '.join(ALIASES)}); got {value!r}")
    return name


def torch_dtype(value: Any) -> Any:
    """The ``torch.dtype`` of a precision name, alias or dtype."""
    import torch

    return getattr(torch, precision_name(value))


def quantization_mode(value: str | None) -> str | None:
    """The user's quantization setting normalised: None / "" / "none" -> None; "int8" / "int4" as they are."""
    mode = "none" if value is None else str(value).strip().lower() or "none"
    if mode not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {value!r}")
    return None if mode == "none" else mode
