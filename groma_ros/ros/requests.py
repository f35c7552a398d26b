"""A query as the node handles it, whichever interface it came from, and the checks it passes before any work.

Kept apart from the node so the rules a request must satisfy (and the status each failure gets) read in one
place and test without rclpy's executor.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from groma_ros.engine.types import BoxXYXY, Status, Task

MAX_QUERY_CHARS = 2000


@dataclass
class Request:
    """One query: what to ask, about which camera and frame, and how to report progress."""

    query_id: str
    query: str
    task: int
    boxes: list[BoxXYXY] = field(default_factory=list)
    camera: str = ""  # "" = the default camera; "*" = every camera
    image_stamp_ns: int = 0  # 0 = newest frame
    score_threshold: float = 0.0
    max_new_tokens: int = 0
    lift_3d: bool = False
    conversation_id: str = ""
    continue_conversation: bool = False
    on_progress: Callable[[int, str], None] | None = None  # (stage, partial text) -> action feedback
    cancel_requested: Callable[[], bool] = lambda: False


class Rejected(Exception):
    """A request answered without running the model: its status and the reason users see."""

    def __init__(self, status: Status, reason: str, header: Any = None, camera: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.header = header
        self.camera = camera


def request_problem(request: Request) -> str:
    """Why a request is a BAD_REQUEST, or "" when it is well-formed."""
    if request.task not in {int(t) for t in Task}:
        return f"unknown task {request.task}; expected 0..{max(int(t) for t in Task)}"
    if request.task != Task.DETECT and not _visible(request.query):
        return "empty query"
    if len(request.query) > MAX_QUERY_CHARS:
        return f"query too long ({len(request.query)} characters, at most {MAX_QUERY_CHARS})"
    if request.score_threshold < 0 or request.score_threshold > 1 or math.isnan(request.score_threshold):
        return f"score_threshold must be in [0, 1], got {request.score_threshold}"
    if request.continue_conversation and not request.conversation_id:
        return "continue_conversation needs a conversation_id"
    return ""


def _visible(text: str) -> bool:
    """True when ``text`` holds something other than whitespace and control/format characters."""
    return any(not (ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf")) for ch in text)


def goal_boxes(regions: Sequence[Any], to_box: Callable[[Any], BoxXYXY]) -> tuple[list[BoxXYXY], str]:
    """User boxes of a goal (``BoundingBox2D`` messages) and the problem with them, if any."""
    boxes = [to_box(r) for r in regions]
    for i, box in enumerate(boxes):
        if not all(math.isfinite(v) for v in box):
            return [], f"region {i} has a non-finite coordinate: {box}"
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            return [], f"region {i} must have a positive size, got size_x={regions[i].size_x}, " \
                       f"size_y={regions[i].size_y}"
    return boxes, ""
