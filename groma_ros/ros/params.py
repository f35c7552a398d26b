"""The node's parameters: one typed object, declared with descriptors and ranges, validated on configure.

Every parameter lives here once (name, type, default, range, description), so the YAML file, the
launch file and the README table can be checked against one list (tests do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from groma_ros.engine.modes import DECODE_MODES
from groma_ros.model.precision import PRECISIONS, QUANTIZATIONS


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its ROS name, default, allowed range or choices, and description."""

    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = True


SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("autostart", True, "Configure and activate by itself at start (no lifecycle manager needed)."),
    ParamSpec("cameras", [""], "Camera names; each reads `<name>/image`, `<name>/camera_info`, ... and has a "
              "`~/<name>/query` topic; the first is the default camera; \"\" = the unnamed camera (`image`, ...)."),
    ParamSpec("model.path", "", "Directory of a Groma checkpoint in the released format; empty = embedded default."),
    ParamSpec("model.device", "cpu", "torch device: cpu, cuda, cuda:N."),
    ParamSpec("model.dtype", "float32", "Weights precision.", choices=PRECISIONS),
    ParamSpec("model.decode", "auto", "LLM decoding: auto (static on a GPU, dynamic on the CPU), dynamic, static, "
              "compiled (GPU: one CUDA graph per token; compiled at activation).",
              choices=DECODE_MODES),
    ParamSpec("model.quantization", "none", "Weight-only quantization of the LLM linears (torchao): none, int8, "
              "int4 (on a GPU: 4-bit packed, needs model.dtype bfloat16).", choices=QUANTIZATIONS),
    ParamSpec("model.num_threads", 0, "CPU threads for torch; 0 = automatic.", min=0, max=256),
    ParamSpec("model.cache_frames", 4, "Frames whose perception (regions + prompt KV cache) is kept.", min=1, max=64),
    ParamSpec("image_transport", "raw", "Subscribe to `image` (raw) or `image/compressed`.",
              choices=("raw", "compressed")),
    ParamSpec("frame_buffer_size", 8, "Recent camera frames kept (stamp-indexed) to answer queries.", min=1, max=300),
    ParamSpec("max_image_age_s", 2.0,
              "A query on a frame that arrived longer ago than this (node's steady clock) gets STALE_IMAGE; "
              "0 = no check.",
              min=0.0, max=3600.0, read_only=False),
    ParamSpec("queue_size", 4, "Queries waiting for the model; when full, new ones get BUSY.", min=1, max=1000),
    ParamSpec("score_threshold", 0.0, "Minimum proposal score of kept regions; 0 = the model's own (0.15).",
              min=0.0, max=1.0, read_only=False),
    ParamSpec("max_new_tokens", 0, "Cap on generated tokens; 0 = the task's default.", min=0, max=4096,
              read_only=False),
    ParamSpec("conversation.max_turns", 16, "Turns a conversation keeps in context; older ones are dropped.",
              min=1, max=1000, read_only=False),
    ParamSpec("conversation.max_tokens", 1024, "Tokens of turns a conversation keeps (messages + answers after the "
              "frame prefix); older turns are dropped to fit.", min=16, max=100000, read_only=False),
    ParamSpec("conversation.idle_timeout_s", 300.0, "A conversation idle this long ends (its id then answers "
              "NO_CONVERSATION).", min=1.0, max=86400.0, read_only=False),
    ParamSpec("conversation.max_live", 8, "Live conversations at once; starting one more ends the least recently "
              "used.", min=1, max=1000, read_only=False),
    ParamSpec("query_follows_conversation_s", 0.0, "When > 0, a `~/query` (or `~/<camera>/query`) String within this "
              "many seconds of the previous one on that topic continues its conversation; 0 = every String is a "
              "single question.", min=0.0, max=86400.0, read_only=False),
    ParamSpec("use_depth", False, "Subscribe to `depth/image` + `depth/camera_info` and publish 3-D detections."),
    ParamSpec("depth_max_stamp_diff_s", 0.1, "Largest |depth stamp - image stamp| for a depth frame to be used.",
              min=0.0, max=10.0, read_only=False),
    ParamSpec("depth_max_m", 100.0, "Depth samples farther than this (m) are ignored as invalid; 3-D beyond it "
              "is never published.", min=0.1, max=10000.0, read_only=False),
    ParamSpec("target_frame", "",
              "Frame for 3-D outputs (needs tf2_ros); empty = the camera optical frame.", read_only=False),
    ParamSpec("tf_timeout_s", 0.2, "How long to wait for the transform at the image stamp.", min=0.0, max=10.0,
              read_only=False),
    ParamSpec("publish_debug_image", True, "Publish `~/debug_image` (built only while someone subscribes).",
              read_only=False),
    ParamSpec("diagnostics_period_s", 1.0, "Period of /diagnostics updates.", min=0.1, max=60.0),
)

SPEC_BY_NAME = {spec.name: spec for spec in SPECS}

# Settings a named camera may override (``<camera>.<name>``); the global value is the default.
CAMERA_OVERRIDES = ("image_transport", "use_depth")
ALL_CAMERAS = "*"
_CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def camera_name_problem(names: list[str]) -> str | None:
    """Why a ``cameras`` list is unusable, or None: names are ROS name tokens, unique, "" only for one camera."""
    if not names:
        return "cameras must name at least one camera (\"\" = the unnamed camera)"
    for name in names:
        if name and not _CAMERA_NAME.match(name):
            return f"camera name {name!r} is not a ROS name token (a letter, then letters, digits or _)"
    if len(set(names)) != len(names):
        return f"camera names must be unique, got {names}"
    return None


@dataclass(frozen=True)
class CameraSettings:
    """One camera's resolved settings (its overrides, else the node's global values)."""

    name: str
    image_transport: str
    use_depth: bool


@dataclass(frozen=True)
class NodeParams:
    """Typed view of the node's parameters (dotted ROS names become underscores)."""

    autostart: bool
    cameras: tuple[str, ...]
    model_path: str
    model_device: str
    model_dtype: str
    model_decode: str
    model_quantization: str
    model_num_threads: int
    model_cache_frames: int
    image_transport: str
    frame_buffer_size: int
    max_image_age_s: float
    queue_size: int
    score_threshold: float
    max_new_tokens: int
    conversation_max_turns: int
    conversation_max_tokens: int
    conversation_idle_timeout_s: float
    conversation_max_live: int
    query_follows_conversation_s: float
    use_depth: bool
    depth_max_stamp_diff_s: float
    depth_max_m: float
    target_frame: str
    tf_timeout_s: float
    publish_debug_image: bool
    diagnostics_period_s: float

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> NodeParams:
        """Validate raw values (ROS names) and build the typed object; raise ValueError listing every problem."""
        problems = validate(values)
        if problems:
            raise ValueError("invalid parameters: " + "; ".join(problems))
        merged = {spec.name: values.get(spec.name, spec.default) for spec in SPECS}
        kwargs = {spec.name.replace(".", "_"): _coerce(spec, merged[spec.name]) for spec in SPECS}
        return cls(**kwargs)

    def as_ros_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def descriptor(spec: ParamSpec) -> Any:
    """The ``rcl_interfaces/ParameterDescriptor`` of a spec: description, choices and numeric range."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    text = spec.description + (f" One of: {', '.join(spec.choices)}." if spec.choices else "")
    desc = ParameterDescriptor(description=text, read_only=False)
    if isinstance(spec.default, bool):
        return desc
    if isinstance(spec.default, int) and spec.min is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
    elif isinstance(spec.default, float) and spec.min is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                        step=0.0)]
    return desc


def _coerce(spec: ParamSpec, value: Any) -> Any:
    if isinstance(spec.default, list):
        return tuple(str(v) for v in value)
    if isinstance(spec.default, bool):
        return bool(value)
    if isinstance(spec.default, int):
        return int(value)
    if isinstance(spec.default, float):
        return float(value)
    return str(value)


def validate_one(spec: ParamSpec, value: Any) -> str | None:
    """Return a problem description for one value, or None when it is fine."""
    expected = type(spec.default)
    if expected is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return f"{spec.name} must be a list of strings, got {value!r}"
        return camera_name_problem(list(value)) if spec.name == "cameras" else None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is bool and not isinstance(value, bool):
        return f"{spec.name} must be a bool, got {value!r}"
    if expected is int and (not isinstance(value, int) or isinstance(value, bool)):
        return f"{spec.name} must be an integer, got {value!r}"
    if expected is float and not isinstance(value, float):
        return f"{spec.name} must be a number, got {value!r}"
    if expected is str and not isinstance(value, str):
        return f"{spec.name} must be a string, got {value!r}"
    if expected in (int, float):
        if value != value:  # NaN
            return f"{spec.name} must not be NaN"
        if spec.min is not None and value < spec.min:
            return f"{spec.name}={value} is below the minimum {spec.min}"
        if spec.max is not None and value > spec.max:
            return f"{spec.name}={value} is above the maximum {spec.max}"
    if spec.choices and value not in spec.choices:
        return f"{spec.name}={value!r} is not one of {', '.join(spec.choices)}"
    if spec.name == "model.device" and not _valid_device(value):
        return f"model.device={value!r} is not a torch device (cpu, cuda, cuda:N, mps)"
    return None


def _valid_device(value: str) -> bool:
    kind, _, index = value.partition(":")
    return kind in ("cpu", "cuda", "mps", "xpu") and (index == "" or index.isdigit())


def validate(values: dict[str, Any]) -> list[str]:
    """All problems of a set of raw values (unknown names are ignored: ROS keeps its own)."""
    problems = []
    for spec in SPECS:
        if spec.name in values:
            problem = validate_one(spec, values[spec.name])
            if problem:
                problems.append(problem)
    return problems
