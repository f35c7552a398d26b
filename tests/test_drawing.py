"""Annotated images for the CLI and ~/debug_image: same size, box outlines drawn, labels inside."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from groma_ros.drawing import draw_grounding, phrase_color


@dataclass
class Det:
    phrase: str
    box: tuple
    score: float


@dataclass
class Reg:
    box: tuple
    score: float


@dataclass
class Item:  # shaped like the engine's GroundedItem
    phrase: str
    regions: tuple


def _img(h=240, w=320):
    return np.full((h, w, 3), 40, np.uint8)


def test_same_size_input_untouched_and_outline_drawn():
    img = _img()
    before = img.copy()
    out = draw_grounding(img, [("red mug", (50, 60, 150, 200), 0.87)])
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(img, before)
    changed = np.any(out != img, axis=2)
    assert changed[60:200, 50].all() and changed[60:200, 150].all()  # left/right edges
    assert changed[200, 50:150].all()  # bottom edge
    assert not changed[100:160, 70:130].any()  # box interior untouched
    assert not changed[225:, 200:].any()  # far away untouched
    assert tuple(out[130, 50]) == phrase_color("red mug")


def test_labels_stay_inside_the_image():
    img = _img()
    box = (280, 0, 319, 30)  # label cannot go above nor to the right
    out = draw_grounding(img, [("a very long phrase that would overflow the image", box, 0.5)])
    changed = np.any(out != img, axis=2)
    assert changed[:30, 200:280].any()  # the label was shifted left, inside the image
    assert out.shape == img.shape


def test_item_kinds_and_bad_boxes():
    img = _img()
    items = [Det("cup", (10, 10, 60, 60), 0.9), Item("plate", (Reg((100, 100, 200, 200), 0.4),)),
             ("no score", (20, 150, 80, 220)), ("nan", (float("nan"), 0, 5, 5), 1.0),
             ("ünïcödé 杯子", (150, 20, 300, 90), 0.7), ("outside", (-100, -50, 1000, 2000), 0.2)]
    out = draw_grounding(img, items)
    changed = np.any(out != img, axis=2)
    assert changed[10:60, 10].all() and changed[100:200, 100].all() and changed[150:220, 20].all()
    assert changed[:, 0].any() and changed[239, :].any()  # the huge box is clipped to the border


def test_grey_input_and_errors():
    out = draw_grounding(np.zeros((50, 60), np.uint8), [("x", (5, 5, 40, 40), 0.3)])
    assert out.shape == (50, 60, 3)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        draw_grounding(np.zeros((5, 5, 3), np.float32), [])


def test_phrase_colour_is_stable():
    assert phrase_color("mug") == phrase_color(" Mug ") != phrase_color("plate")
