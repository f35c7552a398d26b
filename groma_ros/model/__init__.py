"""Groma model: configuration, network and checkpoint I/O (pure PyTorch + transformers 5.x, no ROS)."""

from ._offline import enforce_offline
from ._quiet import filter_import_noise

enforce_offline()  # before transformers is imported by the modules below
filter_import_noise()  # transformers imports torchao, which logs missing CUDA extensions on a CPU torch

from .checkpoint import to_release_state_dict  # noqa: E402
from .configuration_groma import GromaConfig, GromaTokenIds  # noqa: E402
from .errors import CheckpointError, CheckpointMemoryError, CheckpointRefusedError, ModelOutputError  # noqa: E402
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
    "CheckpointMemoryError",
    "CheckpointRefusedError",
    "ExpandedInput",
    "GreedyOutput",
    "GromaConfig",
    "GromaForConditionalGeneration",
    "GromaOutput",
    "GromaTokenIds",
    "ModelOutputError",
    "RegionSelection",
    "VisionOutput",
    "to_release_state_dict",
]
