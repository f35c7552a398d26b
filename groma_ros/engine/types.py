"""Plain-Python results of the engine: what the node, the CLI and tests consume.

Kept free of torch and ROS so every layer above the model can use them. Boxes are always
``(x1, y1, x2, y2)`` in pixels of the ORIGINAL image the caller passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

BoxXYXY = tuple[float, float, float, float]


class Task(enum.IntEnum):
    """Groma tasks; values equal the ``GroundedAnswer`` task constants."""

    AUTO = 0
    REFER = 1
    GROUNDED_CAPTION = 2
    REGION_QA = 3
    DETECT = 4
    VQA = 5

    @classmethod
    def parse(cls, value: str | int | Task) -> Task:
        """Accept ``Task``, its int value or a case-insensitive name (``"grounded_caption"``)."""
        if isinstance(value, Task):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).strip().upper().replace("-", "_")]
        except KeyError:
            names = ", ".join(t.name.lower() for t in cls)
            raise ValueError(f"unknown task {value!r}; expected one of: {names}") from None


class Status(enum.IntEnum):
    """Answer status; values equal the ``GroundedAnswer`` status constants."""

    OK = 0
    NO_IMAGE = 1
    STALE_IMAGE = 2
    BAD_REQUEST = 3
    BUSY = 4
    CANCELED = 5
    MODEL_ERROR = 6
    NO_CONVERSATION = 7


@dataclass(frozen=True)
class Region:
    """One kept region of a frame: the model's ``<r{index}>``."""

    index: int
    box: BoxXYXY
    score: float
    from_user: bool = False


@dataclass(frozen=True)
class GroundedItem:
    """A phrase of the answer tied to one or more regions (a ``<p>..</p><roi>..</roi>`` pair).

    ``start``/``end`` index the phrase in ``Answer.text`` (``-1`` when the region has no phrase,
    e.g. a bare ``<roi>`` in a REFER answer, where the query's expression is used as phrase).
    """

    phrase: str
    start: int
    end: int
    regions: tuple[Region, ...]
    grounding: tuple[float, ...] = ()  # per region: probability the LLM gave its <rN> token (empty: no LLM)


@dataclass
class Timings:
    """Milliseconds per stage of one query; stages skipped thanks to the cache are 0."""

    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    proposer_ms: float = 0.0
    region_ms: float = 0.0
    prefix_prefill_ms: float = 0.0
    query_prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0

    @property
    def encode_ms(self) -> float:
        """Vision encoder + proposer + region encoder + prefix prefill (the per-frame work)."""
        return self.vision_ms + self.proposer_ms + self.region_ms + self.prefix_prefill_ms

    @property
    def generate_ms(self) -> float:
        return self.query_prefill_ms + self.decode_ms


@dataclass
class Answer:
    """The engine's answer to one query on one frame."""

    task: Task
    query: str
    text: str
    raw_text: str
    items: list[GroundedItem] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)  # all kept regions of the frame, index order
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the original image
    timings: Timings = field(default_factory=Timings)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prefix: bool = False  # True when the frame's prompt prefix came from the cache
    canceled: bool = False
    warnings: list[str] = field(default_factory=list)  # parser repairs of malformed model output
    conversation_id: str = ""  # the conversation this answers ("" for a single question)
    turn: int = 0  # its turn in that conversation, from 1 (0 for a single question)
