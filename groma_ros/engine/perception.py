"""Per-frame perception state and the frame LRU.

A ``Perception`` is everything about one image that does not depend on the question: the vision encoder /
proposer output, the kept regions (deterministic, score order), their region tokens and the prompt prefix
(system text + image tokens + ``<rK><region>`` pairs) prefilled into a KV cache. Questions then only feed
their own suffix on top of a *fork* of that cache.

User boxes (REGION_QA) join the region candidates, so they change the region list and hence the prefix:
each distinct box set gets its own ``PrefixState`` (a few per frame, LRU), built from the frame's cached
vision output without re-running the vision encoder.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .types import BoxXYXY, Region

BoxKey = tuple[BoxXYXY, ...]


def tensor_bytes(obj: Any) -> int:
    """Approximate bytes held by tensors inside ``obj`` (tensors, lists/tuples/dicts, dataclasses, caches)."""
    seen: set[int] = set()

    def walk(o: Any) -> int:
        if isinstance(o, torch.Tensor):
            key = o.untyped_storage().data_ptr() if o.device.type != "meta" else id(o)
            if key in seen:
                return 0
            seen.add(key)
            return o.untyped_storage().nbytes()
        if isinstance(o, DynamicCache):
            return sum(walk(layer.keys) + walk(layer.values) for layer in o.layers if layer.is_initialized)
        if isinstance(o, (list, tuple)):
            return sum(walk(v) for v in o)
        if isinstance(o, dict):
            return sum(walk(v) for v in o.values())
        if hasattr(o, "__dataclass_fields__"):
            return sum(walk(getattr(o, f)) for f in o.__dataclass_fields__)
        return 0

    return walk(obj)


def fork_cache(cache: DynamicCache) -> DynamicCache:
    """A cache holding the same prefix that a query may extend without touching ``cache``.

    ``DynamicLayer.update`` grows by ``torch.cat`` (new tensors), so plain dynamic layers can share the prefix
    tensors with no copy; any other layer type (static / quantized / offloaded) gets a real clone.
    """
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        forked = DynamicCache()
        forked.layers = []
        for layer in cache.layers:
            new = DynamicLayer()
            if layer.is_initialized:
                new.lazy_initialization(layer.keys, layer.values)
                new.keys, new.values = layer.keys, layer.values
            forked.layers.append(new)
        return forked
    return DynamicCache(ddp_cache_data=[(layer.keys.clone(), layer.values.clone()) for layer in cache.layers])


@dataclass
class PrefixState:
    """One region set of a frame and the prompt prefix prefilled with it."""

    user_boxes: BoxKey  # original-image pixel boxes that joined the candidates (empty for the base state)
    region_boxes: torch.Tensor  # [K, 4] normalized cx, cy, w, h of the model input, <r i> = row i
    regions: list[Region]  # same boxes in original-image pixels (x1, y1, x2, y2), with scores
    refer_match: list[int]  # region index matched to each user box (argmax IoU)
    region_tokens: torch.Tensor  # [K, H]
    prefix_ids: torch.Tensor  # [1, T] LLM-side ids of the prefix (expanded)
    cache: DynamicCache  # KV of ``prefix_ids``; read-only, queries use ``fork_cache``
    region_ms: float = 0.0
    prefill_ms: float = 0.0

    @property
    def prefix_len(self) -> int:
        return int(self.prefix_ids.shape[-1])

    def nbytes(self) -> int:
        return tensor_bytes([self.region_boxes, self.region_tokens, self.prefix_ids, self.cache])


@dataclass
class Perception:
    """What the engine knows about one frame, independent of any question.

    ``base`` is the prefix without user boxes; ``boxed`` holds prefixes for user-box sets (LRU, bounded).
    Timings are those of building it (they are reported once, on the query that triggered them).
    """

    frame_id: Hashable | None
    image_size: tuple[int, int]  # (width, height) of the original image
    vision: Any  # model VisionOutput (image tokens, proposals, region maps)
    proposal_boxes: torch.Tensor  # [Q, 4] normalized cx, cy, w, h
    proposal_scores: torch.Tensor  # [Q]
    base: PrefixState
    preprocess_ms: float = 0.0
    vision_ms: float = 0.0
    proposer_ms: float = 0.0
    region_ms: float = 0.0  # region-map fusion (per frame); per-box-set work is in PrefixState
    boxed: OrderedDict[BoxKey, PrefixState] = field(default_factory=OrderedDict)
    max_boxed: int = 4
    reported: bool = False  # the build timings were reported on a query already
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def regions(self) -> list[Region]:
        """Kept regions without user boxes, ``<r i>`` = ``regions[i]``, descending score."""
        return self.base.regions

    def prefix_for(self, boxes: BoxKey) -> PrefixState | None:
        if not boxes:
            return self.base
        with self.lock:
            state = self.boxed.get(boxes)
            if state is not None:
                self.boxed.move_to_end(boxes)
            return state

    def add_prefix(self, state: PrefixState) -> None:
        with self.lock:
            self.boxed[state.user_boxes] = state
            self.boxed.move_to_end(state.user_boxes)
            while len(self.boxed) > self.max_boxed:
                self.boxed.popitem(last=False)

    def nbytes(self) -> int:
        """Approximate memory held (tensors only): vision output, proposals and every cached prefix."""
        with self.lock:
            states = [self.base, *self.boxed.values()]
        return tensor_bytes([self.vision, self.proposal_boxes, self.proposal_scores]) + sum(
            s.nbytes() for s in states
        )


class FrameCache:
    """LRU of ``Perception`` by frame id, bounded by a count and an approximate byte budget.

    The newest entry is always kept even if it alone exceeds the budget (otherwise it could not be used).
    ``max_frames=0`` disables caching.
    """

    def __init__(self, max_frames: int = 4, max_bytes: int | None = None) -> None:
        if max_frames < 0:
            raise ValueError("max_frames must be >= 0")
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, Perception] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, frame_id: Hashable) -> bool:
        return frame_id in self._items

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def get(self, frame_id: Hashable | None) -> Perception | None:
        if frame_id is None:
            return None
        with self._lock:
            p = self._items.get(frame_id)
            if p is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(frame_id)
            return p

    def put(self, perception: Perception) -> None:
        if perception.frame_id is None or self.max_frames == 0:
            return
        with self._lock:
            self._items[perception.frame_id] = perception
            self._items.move_to_end(perception.frame_id)
            self.trim()

    def nbytes(self) -> int:
        with self._lock:
            return sum(p.nbytes() for p in self._items.values())

    def perceptions(self) -> list[Perception]:
        """Cached perceptions, least recently used first."""
        with self._lock:
            return list(self._items.values())

    def evict_oldest(self) -> bool:
        """Drop the least recently used frame unless it is the only one; True if one was dropped."""
        with self._lock:
            if len(self._items) <= 1:
                return False
            self._items.popitem(last=False)
            return True

    def trim(self) -> None:
        """Evict least-recently-used frames until both bounds hold (call again after a frame grew)."""
        with self._lock:
            while len(self._items) > self.max_frames:
                self._items.popitem(last=False)
            if self.max_bytes is None:
                return
            sizes = {k: p.nbytes() for k, p in self._items.items()}
            total = sum(sizes.values())
            while total > self.max_bytes and len(self._items) > 1:
                key, _ = self._items.popitem(last=False)
                total -= sizes[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def boxes_to_pixels(boxes_cxcywh: torch.Tensor, image_size: tuple[int, int]) -> list[BoxXYXY]:
    """Normalized cx,cy,w,h of the (squashed) model input → original-image pixel x1,y1,x2,y2, clipped."""
    w, h = image_size
    out = []
    for cx, cy, bw, bh in boxes_cxcywh.detach().double().cpu().tolist():
        x1, x2 = (cx - bw / 2) * w, (cx + bw / 2) * w
        y1, y2 = (cy - bh / 2) * h, (cy + bh / 2) * h
        x1, x2 = sorted((min(max(x1, 0.0), float(w)), min(max(x2, 0.0), float(w))))
        y1, y2 = sorted((min(max(y1, 0.0), float(h)), min(max(y2, 0.0), float(h))))
        out.append((x1, y1, x2, y2))
    return out


def pixels_to_cxcywh(boxes: Sequence[BoxXYXY], image_size: tuple[int, int]) -> torch.Tensor:
    """Validated, clipped pixel x1,y1,x2,y2 → normalized cx,cy,w,h ``[n, 4]`` float32."""
    w, h = image_size
    rows = [((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h) for x1, y1, x2, y2 in boxes]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def clip_user_box(box: Sequence[float], image_size: tuple[int, int]) -> BoxXYXY:
    """Check one user box and clip it to the image; ``ValueError`` with the reason if unusable."""
    vals = list(box)
    if len(vals) != 4:
        raise ValueError(f"a box needs 4 numbers (x1, y1, x2, y2), got {len(vals)}")
    try:
        x1, y1, x2, y2 = (float(v) for v in vals)
    except (TypeError, ValueError):
        raise ValueError(f"box {vals!r} is not numeric") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"box {vals!r} has NaN or infinite coordinates")
    w, h = image_size
    cx1, cx2 = min(max(x1, 0.0), float(w)), min(max(x2, 0.0), float(w))
    cy1, cy2 = min(max(y1, 0.0), float(h)), min(max(y2, 0.0), float(h))
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        raise ValueError(
            f"box {tuple(vals)} is empty after clipping to the {w}x{h} image "
            "(need x1 < x2, y1 < y2, overlapping the image)"
        )
    return (cx1, cy1, cx2, cy2)
