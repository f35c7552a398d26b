"""Draw grounded phrases and boxes on an RGB image (CLI ``--save`` and the node's ``~/debug_image``).

No ROS here so the CLI can use it. Colours are a stable function of the phrase, so the same phrase keeps
its colour across frames. Labels are kept inside the image (above the box when there is room, else
inside it) and use ASCII only, since OpenCV's Hershey fonts cannot draw anything else.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def phrase_color(phrase: str) -> tuple[int, int, int]:
    """A bright RGB colour derived from the phrase (deterministic across runs and processes)."""
    hue = (zlib.crc32(phrase.strip().lower().encode("utf-8")) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _iter_items(items: Iterable[Any]) -> Iterator[tuple[str, tuple[float, ...], float | None]]:
    """Normalise items: ``(phrase, box, score)`` tuples, objects with ``phrase``/``box``/``score``
    (``box_xyxy`` also accepted), or engine ``GroundedItem``s with ``regions``."""
    for it in items:
        if isinstance(it, (tuple, list)):
            phrase, box, score = (list(it) + [None])[:3]
            yield str(phrase), tuple(box), score
        elif hasattr(it, "regions"):
            for reg in it.regions:
                yield str(it.phrase), tuple(reg.box), getattr(reg, "score", None)
        else:
            box = getattr(it, "box_xyxy", None)
            box = getattr(it, "box", None) if box is None else box
            yield str(getattr(it, "phrase", "")), tuple(box), getattr(it, "score", None)


def _ascii(text: str, max_chars: int) -> str:
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text.replace("\n", " "))
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def draw_grounding(image_rgb: np.ndarray, items: Iterable[Any], *, max_label_chars: int = 40) -> np.ndarray:
    """Return a copy of ``image_rgb`` (HxWx3 uint8, or HxW grey) with each box, phrase and score drawn.

    Boxes are ``(x1, y1, x2, y2)`` pixels of this image; they are clipped, and non-finite ones skipped.
    """
    img = np.asarray(image_rgb)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"draw_grounding needs an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")
    out = np.ascontiguousarray(img).copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 320))
    scale = max(0.35, min(h, w) / 900)
    for phrase, box, score in _iter_items(items):
        if len(box) != 4 or not all(math.isfinite(float(c)) for c in box):
            continue
        x1, x2 = sorted(int(round(min(max(float(c), 0.0), w - 1))) for c in box[0::2])
        y1, y2 = sorted(int(round(min(max(float(c), 0.0), h - 1))) for c in box[1::2])
        color = phrase_color(phrase)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_8)
        label = phrase if score is None else f"{phrase} {float(score):.2f}"
        label = _ascii(label, max_label_chars)
        if not label.strip():
            continue
        (tw, th), base = cv2.getTextSize(label, _FONT, scale, thick)
        lh = th + base + 2 * thick
        ty = y1 - lh if y1 - lh >= 0 else min(y1, max(h - lh, 0))  # above the box, else inside its top
        tx = min(max(x1, 0), max(w - tw - 2 * thick, 0))
        cv2.rectangle(out, (tx, ty), (min(tx + tw + 2 * thick, w - 1), min(ty + lh, h - 1)), color, -1)
        text_color = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        cv2.putText(out, label, (tx + thick, ty + th + thick), _FONT, scale, text_color, thick, cv2.LINE_AA)
    return out
