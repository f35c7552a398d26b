"""The Groma engine: perceive a frame once, answer many grounded queries (no ROS).

Exports resolve lazily so ``groma_ros.engine.types`` (plain dataclasses) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GromaEngine": "engine", "QueryTrace": "engine",
    "BadRequestError": "errors", "ModelLoadError": "errors", "ModelNotFoundError": "errors",
    "default_model_dir": "loading", "load_model": "loading",
    "Conversation": "conversations", "ConversationNotFoundError": "conversations",
    "ConversationState": "conversations", "ConversationStore": "conversations",
    "FrameCache": "perception", "Perception": "perception", "PrefixState": "perception",
    "Answer": "types", "BoxXYXY": "types", "GroundedItem": "types", "Region": "types", "Status": "types",
    "Task": "types", "Timings": "types",
    "ModelOutputError": "groma_ros.model.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(importlib.import_module(module if "." in module else f".{module}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
