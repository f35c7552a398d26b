"""Groma model: configuration, network and checkpoint I/O (pure PyTorch + transformers 5.x, no ROS).

Exports resolve lazily, so the torch-free leaves (``precision``) import without transformers; the offline
and quiet-import guards run first, before any submodule imports transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._offline import enforce_offline
from ._quiet import filter_import_noise

enforce_offline()
filter_import_noise()  # transformers imports torchao, which logs missing CUDA extensions on a CPU torch

_EXPORTS = {
    "to_release_state_dict": "checkpoint",
    "GromaConfig": "configuration_groma", "GromaTokenIds": "configuration_groma",
    "CheckpointError": "errors", "CheckpointMemoryError": "errors", "CheckpointRefusedError": "errors",
    "ModelOutputError": "errors",
    "ExpandedInput": "modeling_groma", "GreedyOutput": "modeling_groma",
    "GromaForConditionalGeneration": "modeling_groma", "GromaOutput": "modeling_groma",
    "RegionSelection": "modeling_groma", "VisionOutput": "modeling_groma",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
