"""Conversations about one frame: the pinned region set, the turns so far and their KV cache.

A conversation pins what the first turn saw: the frame's ``PrefixState`` (regions, region tokens, the prefilled
prompt prefix; a user-box set on turn 1 pins that box set's prefix). It does not hold the frame's vision output,
so frame-cache eviction and newer frames never change it, and ``<rN>`` means the same region in every turn.

Turns follow the original template (conv_llava, style 'two'): ``...</s>USER: {m1} ASSISTANT: {a1}</s>USER: {m2}
ASSISTANT:``. The answer ids are kept as generated (the KV holds exactly them) and closed with ``</s>``. The cache
holds everything but ``pending``: the last answer's final token(s) that decoding never fed (its ``</s>``, or the
last token when the budget ran out), which the next turn prefills in front of its own message.

Limits (``ConversationStore`` settings, changeable at runtime): ``max_turns`` kept turns and ``max_tokens`` tokens
of turns (user messages + answers after the frame prefix; a new turn counts its message and its answer budget).
``on_limit="drop_oldest"`` (default) drops the oldest turns until the new one fits (the first exchange, the frame
prefix, always stays) and re-prefills the remaining turns on the frame prefix together with the new message;
``on_limit="end"`` ends the conversation instead (``ConversationNotFoundError``, reason ``limit``). Idle
conversations expire after ``idle_timeout_s`` (checked on every lookup and by ``expire_idle``); at most
``max_live`` live at once (starting one more ends the least recently used, reason ``evicted``). Memory is counted
by the engine in its frame-cache byte budget (reason ``memory``). Ended ids are remembered (the last
``ENDED_MEMORY`` of them) so that reusing one never silently starts a new conversation.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from transformers import DynamicCache

from .perception import PrefixState, tensor_bytes
from .types import BoxXYXY, Task

ON_LIMIT = ("drop_oldest", "end")
ENDED_MEMORY = 4096  # ended ids remembered for a precise error (older ones read as unknown)
REASONS = ("unknown", "expired", "limit", "memory", "evicted", "ended", "released")


class ConversationNotFoundError(LookupError):
    """No live conversation under this id; ``reason`` is one of ``REASONS`` and the message says why."""

    def __init__(self, conversation_id: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.conversation_id = conversation_id
        self.reason = reason


@dataclass
class Turn:
    """One answered turn as the model saw it."""

    task: Task
    raw_ids: list[int]  # tokenizer ids: user message (``<refer_box>`` unreplaced) + answer + ``</s>``
    ids: list[int]  # LLM ids: the same with ``<refer_box>`` -> ``<r k>``
    refer_positions: list[int]  # positions in ``ids`` of the user's ``<refer_feat>`` (they take region features)
    refer_regions: list[int]  # region index fed at each of them


@dataclass
class Conversation:
    """A live conversation. ``turns`` counts every answered turn (``Answer.turn`` numbers them from 1);
    ``history`` holds the turns still in context (fewer once the oldest were dropped). ``meta`` is the caller's."""

    id: str
    frame_id: Hashable | None
    image_size: tuple[int, int]
    state: PrefixState
    created: float
    last_used: float
    turns: int = 0
    dropped_turns: int = 0
    history: list[Turn] = field(default_factory=list)
    cache: DynamicCache | None = field(default=None, repr=False)  # KV of the prefix + history minus ``pending``
    cache_len: int = 0
    pending: list[int] = field(default_factory=list)  # history LLM ids not yet in ``cache``
    pending_refer: list[tuple[int, int]] = field(default_factory=list)  # (position in ``pending``, region)
    meta: dict[str, Any] = field(default_factory=dict)
    busy: bool = False  # a turn is being answered (idle expiry waits for it)

    @property
    def user_boxes(self) -> tuple[BoxXYXY, ...]:
        """The user boxes pinned on the first turn (later turns may refer to these, not to new ones)."""
        return self.state.user_boxes

    @property
    def history_tokens(self) -> int:
        return sum(len(t.ids) for t in self.history)

    def context_len(self) -> int:
        """LLM tokens in context: frame prefix + kept turns."""
        return self.state.prefix_len + self.history_tokens

    def nbytes(self) -> int:
        return tensor_bytes([self.state, self.cache])

    def commit(self, turn: Turn, cache: DynamicCache, cache_len: int, pending: list[int]) -> None:
        """Append an answered turn: ``cache`` holds everything of it but ``pending`` (its unfed tail)."""
        expected = self.context_len() + len(turn.ids) - len(pending)
        if cache_len != expected:
            raise RuntimeError(f"conversation {self.id!r}: the KV holds {cache_len} tokens, expected {expected}")
        self.history.append(turn)
        self.turns += 1
        self.cache, self.cache_len = cache, cache_len
        self.pending, self.pending_refer = list(pending), []


def pinned_box_index(pinned: tuple[BoxXYXY, ...], box: BoxXYXY, tol: float = 1e-3) -> int | None:
    """Index of ``box`` among the pinned user boxes (within ``tol`` pixels), else None."""
    for i, p in enumerate(pinned):
        if all(abs(a - b) <= tol for a, b in zip(p, box, strict=True)):
            return i
    return None


def fit_turn(store: ConversationStore, conv: Conversation, n_new: int, budget: int, context: int) -> int:
    """Make room for a turn of ``n_new`` message ids and ``budget`` answer tokens; returns the turns dropped.

    ``drop_oldest``: drop the oldest turns until the kept turns + 1 <= ``max_turns``, their tokens + the new turn's
    <= ``max_tokens`` and everything fits the model's ``context``; the rest is re-prefilled on the frame prefix
    with the new message (it becomes ``pending``). ``end``: end the conversation (reason ``limit``) and raise
    ``ConversationNotFoundError``. A turn that does not fit even alone runs as a single question would (its
    answer budget cut to the context left)."""

    def fits() -> bool:
        hist = conv.history_tokens
        return ((store.max_turns is None or len(conv.history) < store.max_turns)
                and (store.max_tokens is None or hist + n_new + budget <= store.max_tokens)
                and conv.state.prefix_len + hist + n_new + budget <= context)

    if fits() or not conv.history:
        return 0
    if store.on_limit == "end":
        message = (f"conversation {conv.id!r} ended at its limit after {conv.turns} turn(s) (max_turns "
                   f"{store.max_turns}, max_tokens {store.max_tokens}, model context {context})")
        store.end(conv.id, "limit", message)
        raise ConversationNotFoundError(conv.id, "limit", message)
    dropped = 0
    while conv.history and not fits():
        conv.history.pop(0)
        dropped += 1
    conv.dropped_turns += dropped
    conv.cache, conv.cache_len = None, conv.state.prefix_len
    conv.pending, conv.pending_refer = [], []
    for turn in conv.history:
        conv.pending_refer += [(len(conv.pending) + p, k)
                               for p, k in zip(turn.refer_positions, turn.refer_regions, strict=True)]
        conv.pending += turn.ids
    return dropped


@dataclass(frozen=True)
class ConversationState:
    """What ``ConversationStore.state`` says about an id: ``status`` is ``live`` or one of ``REASONS``."""

    id: str
    status: str
    message: str
    turns: int = 0

    @property
    def live(self) -> bool:
        return self.status == "live"


def _positive_or_none(name: str, value: float | None, integer: bool) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
            integer and int(value) != value):
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'} or None, got {value!r}")
    return int(value) if integer else float(value)


class ConversationStore:
    """Thread-safe table of live conversations plus the reasons why ended ones ended."""

    def __init__(self, *, max_live: int | None = 8, idle_timeout_s: float | None = 300.0,
                 max_turns: int | None = 16, max_tokens: int | None = 1024, on_limit: str = "drop_oldest",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.RLock()
        self._live: OrderedDict[str, Conversation] = OrderedDict()  # least recently used first
        self._ended: OrderedDict[str, ConversationState] = OrderedDict()
        self.clock = clock
        self.max_live = max_live
        self.idle_timeout_s = idle_timeout_s
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.on_limit = on_limit

    # ------------------------------------------------------------------------------------------ settings
    @property
    def max_live(self) -> int | None:
        return self._max_live

    @max_live.setter
    def max_live(self, value: int | None) -> None:
        self._max_live = _positive_or_none("max_live", value, integer=True)

    @property
    def idle_timeout_s(self) -> float | None:
        return self._idle_timeout_s

    @idle_timeout_s.setter
    def idle_timeout_s(self, value: float | None) -> None:
        self._idle_timeout_s = _positive_or_none("idle_timeout_s", value, integer=False)

    @property
    def max_turns(self) -> int | None:
        return self._max_turns

    @max_turns.setter
    def max_turns(self, value: int | None) -> None:
        self._max_turns = _positive_or_none("max_turns", value, integer=True)

    @property
    def max_tokens(self) -> int | None:
        return self._max_tokens

    @max_tokens.setter
    def max_tokens(self, value: int | None) -> None:
        self._max_tokens = _positive_or_none("max_tokens", value, integer=True)

    @property
    def on_limit(self) -> str:
        return self._on_limit

    @on_limit.setter
    def on_limit(self, value: str) -> None:
        if value not in ON_LIMIT:
            raise ValueError(f"on_limit must be one of {', '.join(ON_LIMIT)}, got {value!r}")
        self._on_limit = value

    # ------------------------------------------------------------------------------------------ queries
    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def __contains__(self, conversation_id: str) -> bool:
        return self.get(conversation_id) is not None

    def ids(self) -> list[str]:
        """Live ids, least recently used first."""
        with self._lock:
            return list(self._live)

    def get(self, conversation_id: str) -> Conversation | None:
        """The live conversation (an idle one past its timeout is ended here, reason ``expired``), else None."""
        with self._lock:
            conv = self._live.get(conversation_id)
            if conv is not None and self._idle_expired(conv, self.clock()):
                self._end(conv, "expired", self._expired_message(conv))
                return None
            return conv

    def claim(self, conversation_id: str) -> Conversation | None:
        """``get`` and mark it ``busy`` in one step (a turn starts: idle expiry and memory eviction skip it)."""
        with self._lock:
            conv = self.get(conversation_id)
            if conv is not None:
                conv.busy = True
            return conv

    def release(self, conv: Conversation) -> None:
        """The turn on ``conv`` is over."""
        with self._lock:
            conv.busy = False

    def state(self, conversation_id: str) -> ConversationState:
        """``live`` with its turn count, or why there is no such conversation."""
        with self._lock:
            conv = self.get(conversation_id)
            if conv is not None:
                return ConversationState(conv.id, "live", f"conversation {conv.id!r}: {conv.turns} turn(s)",
                                         conv.turns)
            ended = self._ended.get(conversation_id)
            if ended is not None:
                return ended
            return ConversationState(conversation_id, "unknown", f"no conversation {conversation_id!r} (unknown id)")

    def require(self, conversation_id: str) -> Conversation:
        """The live conversation, else ``ConversationNotFoundError`` saying why."""
        conv = self.get(conversation_id)
        if conv is not None:
            return conv
        st = self.state(conversation_id)
        raise ConversationNotFoundError(conversation_id, st.status, st.message)

    def check_startable(self, conversation_id: str) -> None:
        """``ConversationNotFoundError`` when the id belongs to a conversation that ended (ids are never reused)."""
        with self._lock:
            ended = self._ended.get(conversation_id)
            if ended is not None:
                raise ConversationNotFoundError(conversation_id, ended.status,
                                                ended.message + "; start a new conversation under a new id")

    def nbytes(self) -> int:
        with self._lock:
            return tensor_bytes([[c.state, c.cache] for c in self._live.values()])

    def tensors(self) -> list[Any]:
        """What live conversations hold (for the engine's shared byte count)."""
        with self._lock:
            return [[c.state, c.cache] for c in self._live.values()]

    # ------------------------------------------------------------------------------------------ changes
    def start(self, conversation_id: str, frame_id: Hashable | None, image_size: tuple[int, int],
              state: PrefixState) -> Conversation:
        """A new live conversation, claimed for its first turn (``release`` it after); the least recently used
        one ends if ``max_live`` would be exceeded."""
        with self._lock:
            self.check_startable(conversation_id)
            if conversation_id in self._live:
                raise ValueError(f"conversation {conversation_id!r} is already live")
            now = self.clock()
            conv = Conversation(conversation_id, frame_id, image_size, state, created=now, last_used=now,
                                cache=None, cache_len=state.prefix_len, busy=True)
            self._live[conversation_id] = conv
            while self.max_live is not None and len(self._live) > self.max_live:
                victim = self.least_recent(exclude=conv)
                if victim is None:
                    break
                self._end(victim, "evicted", f"conversation {victim.id!r} was ended to make room for a newer one "
                                             f"(max_live {self.max_live})")
            return conv

    def touch(self, conv: Conversation) -> None:
        """Mark ``conv`` used now (most recently used)."""
        with self._lock:
            conv.last_used = self.clock()
            if conv.id in self._live:
                self._live.move_to_end(conv.id)

    def is_live(self, conv: Conversation) -> bool:
        with self._lock:
            return self._live.get(conv.id) is conv

    def least_recent(self, exclude: Conversation | None = None) -> Conversation | None:
        with self._lock:
            return next((c for c in self._live.values() if c is not exclude and not c.busy), None)

    def end(self, conversation_id: str, reason: str = "ended", message: str | None = None) -> bool:
        """End a live conversation (frees its KV); False if it was not live."""
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")
        with self._lock:
            conv = self._live.get(conversation_id)
            if conv is None:
                return False
            self._end(conv, reason, message or f"conversation {conversation_id!r} was ended by the caller")
            return True

    def expire_idle(self) -> list[str]:
        """End every conversation idle longer than ``idle_timeout_s``; returns their ids."""
        with self._lock:
            now = self.clock()
            gone = [c for c in self._live.values() if self._idle_expired(c, now)]
            for conv in gone:
                self._end(conv, "expired", self._expired_message(conv))
            return [c.id for c in gone]

    def clear(self, reason: str = "released", message: str = "the engine was released") -> None:
        with self._lock:
            for conv in list(self._live.values()):
                self._end(conv, reason, message)

    # ------------------------------------------------------------------------------------------ internals
    def _idle_expired(self, conv: Conversation, now: float) -> bool:
        return self.idle_timeout_s is not None and not conv.busy and now - conv.last_used > self.idle_timeout_s

    def _expired_message(self, conv: Conversation) -> str:
        return f"conversation {conv.id!r} expired after {self.idle_timeout_s:g} s idle"

    def _end(self, conv: Conversation, reason: str, message: str) -> None:
        # The object itself is left as it is: a turn in flight on it finishes (and is not kept).
        self._live.pop(conv.id, None)
        self._ended[conv.id] = ConversationState(conv.id, reason, message, conv.turns)
        self._ended.move_to_end(conv.id)
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)
