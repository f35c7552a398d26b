"""Groma model: configuration, network and checkpoint I/O (pure PyTorch + transformers 5.x, no ROS)."""

from ._offline import enforce_offline

enforce_offline()  # before transformers is imported by the modules below

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
