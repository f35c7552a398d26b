"""Groma model: configuration, network and checkpoint I/O (pure PyTorch + transformers 5.x, no ROS)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USE_HUB_KERNELS", "NO")

from .checkpoint import CheckpointError, to_release_state_dict  # noqa: E402
from .configuration_groma import GromaConfig, GromaTokenIds  # noqa: E402
from .modeling_groma import (  # noqa: E402
    ExpandedInput,
    GreedyOutput,
    GromaForConditionalGeneration,
    GromaOutput,
    RegionSelection,
    VisionOutput,
)

__all__ = [
    "CheckpointError",
    "ExpandedInput",
    "GreedyOutput",
    "GromaConfig",
    "GromaForConditionalGeneration",
    "GromaOutput",
    "GromaTokenIds",
    "RegionSelection",
    "VisionOutput",
    "to_release_state_dict",
]
