"""Procedural scenes of coloured shapes with exact boxes, for the embedded tiny Groma.

Why procedural: real Groma weights and datasets cannot ship, yet the default model must really ground
("the red circle" -> that circle's box).  A scene is a dark background with 1..6 bright, anti-aliased shapes
whose attributes (shape, colour, size class) are exactly known, so every text in ``texts.py`` is checkable.

Conventions
-----------
* ``Scene.image`` is H x W x 3 ``uint8`` **RGB**.
* Boxes are ``(x1, y1, x2, y2)`` float pixels in the *continuous* convention where pixel ``(i, j)`` covers
  ``[i, i+1) x [j, j+1)``; the full image is ``(0, 0, W, H)``.  cv2 draws with pixel centres at integer
  coordinates, so geometry is shifted by +0.5 when converted to boxes.  cv2's anti-aliasing ramp extends
  filled shapes ~0.7 px beyond their geometry (measured), so boxes are the geometry grown by 0.5 px per side:
  they match the visibly drawn pixels within 1 px.
* Everything is a pure function of ``seed`` (``numpy.random.default_rng(seed)``; never the global RNG).
* Splits: ``split_seeds`` hands out disjoint integer ranges (train ``[0, 10M)``, val ``[10M, 20M)``,
  test ``[20M, 30M)``), so splits never share a scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")

# Saturated, far apart in RGB, all much brighter/more chromatic than the dark backgrounds.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 185, 40),
    "blue": (45, 80, 240),
    "yellow": (240, 225, 30),
    "purple": (160, 45, 215),
    "orange": (255, 135, 0),
    "white": (245, 245, 245),
    "cyan": (0, 215, 225),
}

# Size classes as ranges of the shape's extent (its box's longer side), as fractions of the image size.
# Gaps between classes (>= 25 %) keep them separable by eye and by a small network.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.11, 0.15),
    "medium": (0.20, 0.25),
    "large": (0.31, 0.37),
}
SIZE_RANK: dict[str, int] = {"small": 0, "medium": 1, "large": 2}

BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "textured")

_AA = 0.5  # box growth per side for the anti-aliasing fringe
SPLIT_STRIDE = 10_000_000
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": SPLIT_STRIDE, "test": 2 * SPLIT_STRIDE}


@dataclass(frozen=True)
class SceneConfig:
    """What a scene may contain; the defaults are the shipped model's training distribution."""

    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 6
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    sizes: tuple[str, ...] = tuple(SIZES)
    backgrounds: tuple[str, ...] = BACKGROUNDS
    max_iou: float = 0.1  # between any two object boxes
    max_cover: float = 0.15  # intersection / smaller box area: stops a small shape hiding in a large box
    share_attribute_prob: float = 0.5  # copy an earlier object's colour/shape: attributes must disambiguate
    color_jitter: int = 12  # +- per channel; names stay unambiguous
    placement_tries: int = 40

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        unknown = (set(self.shapes) - set(SHAPES)) | (set(self.colors) - set(COLORS)) | (
            set(self.sizes) - set(SIZES)) | (set(self.backgrounds) - set(BACKGROUNDS))
        if unknown:
            raise ValueError(f"unknown attribute values: {sorted(unknown)}")


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape; ``box_xyxy``/``center`` in continuous pixel coordinates (see module docstring)."""

    shape: str
    color: str
    size: str
    box_xyxy: tuple[float, float, float, float]
    center: tuple[float, float]


@dataclass(frozen=True)
class Scene:
    seed: int
    image: np.ndarray = field(repr=False)
    objects: list[SceneObject]
    background: str

    @property
    def boxes(self) -> np.ndarray:
        """[N, 4] float32 xyxy boxes, in ``objects`` order."""
        return np.array([o.box_xyxy for o in self.objects], dtype=np.float32).reshape(-1, 4)


def split_seeds(split: str, n: int) -> range:
    """Seeds of the first ``n`` scenes of ``split``; the ranges of different splits are disjoint."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    if not 0 <= n <= SPLIT_STRIDE:
        raise ValueError(f"n must be in [0, {SPLIT_STRIDE}]")
    start = SPLIT_OFFSETS[split]
    return range(start, start + n)


# ---------------------------------------------------------------------------------- geometry

def _regular(n: int, r: float, phase: float) -> np.ndarray:
    a = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _unit_polygon(shape: str) -> np.ndarray | None:
    """Vertices for extent radius 1 (y down), or None for the circle; upright so shapes read clearly."""
    if shape == "square":
        return np.array([[-0.9, -0.9], [0.9, -0.9], [0.9, 0.9], [-0.9, 0.9]])
    if shape == "triangle":
        h = math.sqrt(3) / 2
        return np.array([[0.0, -h], [1.0, h], [-1.0, h]])
    if shape == "star":
        outer = _regular(5, 1.0, -math.pi / 2)
        inner = _regular(5, 0.45, -math.pi / 2 + math.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(10, 2)
    if shape == "hexagon":
        return _regular(6, 1.0, 0.0)
    if shape == "cross":
        a, t = 0.9, 0.32
        return np.array([[-t, -a], [t, -a], [t, -t], [a, -t], [a, t], [t, t], [t, a], [-t, a], [-t, t],
                         [-a, t], [-a, -t], [-t, -t]])
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}")


_UNIT = {s: _unit_polygon(s) for s in SHAPES}


def _half_extent(shape: str, r: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) distances from the centre to the drawn geometry's bounds."""
    poly = _UNIT[shape]
    if poly is None:
        return r, r, r, r
    lo, hi = poly.min(axis=0) * r, poly.max(axis=0) * r
    return -lo[0], -lo[1], hi[0], hi[1]


def _draw(img: np.ndarray, shape: str, cx: float, cy: float, r: float, rgb: tuple[int, int, int]) -> None:
    """Anti-aliased fill at sub-pixel precision (shift=4); (cx, cy) in cv2 pixel-centre coordinates."""
    s = 16
    poly = _UNIT[shape]
    if poly is None:
        cv2.circle(img, (round(cx * s), round(cy * s)), round(r * s), rgb, -1, cv2.LINE_AA, 4)
        return
    pts = np.round((poly * r + (cx, cy)) * s).astype(np.int32)
    cv2.fillPoly(img, [pts], rgb, cv2.LINE_AA, shift=4)


# ---------------------------------------------------------------------------------- backgrounds

def _background(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """Dark (<= ~90 per channel), low-contrast backgrounds so every colour, even blue, stays visible."""
    base = rng.integers(0, 56) + rng.integers(-6, 7, size=3)
    if kind == "plain":
        return np.broadcast_to(np.clip(base, 0, 70).astype(np.uint8), (size, size, 3)).copy()
    if kind == "gradient":
        other = rng.integers(0, 70) + rng.integers(-6, 7, size=3)
        ang = rng.uniform(0, 2 * math.pi)
        t = np.linspace(-0.5, 0.5, size, dtype=np.float32)
        ramp = (math.cos(ang) * t[None, :] + math.sin(ang) * t[:, None]) / 0.71 + 0.5  # ~0..1
        img = base[None, None, :] + ramp[..., None] * (other - base)[None, None, :]
        return np.clip(img, 0, 80).astype(np.uint8)
    return _textured(rng, base, size)


def _textured(rng: np.random.Generator, base: np.ndarray, size: int) -> np.ndarray:
    pattern = rng.integers(0, 3)
    amp = float(rng.uniform(8, 18))
    if pattern == 0:  # smooth blotchy noise
        cells = int(rng.integers(4, 17))
        low = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
        tex = cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR)
    else:
        period = float(rng.uniform(4, 14))
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        if pattern == 1:  # stripes at a random angle
            ang = rng.uniform(0, math.pi)
            tex = np.sign(np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * (math.pi / period)))
        else:  # checker
            tex = (((xx // period) + (yy // period)) % 2) * 2 - 1
    img = base[None, None, :].astype(np.float32) + amp * tex[..., None]
    return np.clip(img, 0, 90).astype(np.uint8)


# ---------------------------------------------------------------------------------- placement

def _iou_and_cover(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float]:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0, 0.0
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter), inter / min(area_a, area_b)


def _pick_attributes(rng: np.random.Generator, cfg: SceneConfig,
                     placed: list[SceneObject]) -> tuple[str, str]:
    shape = cfg.shapes[rng.integers(len(cfg.shapes))]
    color = cfg.colors[rng.integers(len(cfg.colors))]
    if placed and rng.random() < cfg.share_attribute_prob:
        src = placed[rng.integers(len(placed))]
        what = rng.random()
        if what < 0.5:
            color = src.color
        elif what < 0.85:
            shape = src.shape
        else:
            shape, color = src.shape, src.color
    return shape, color


def _place(rng: np.random.Generator, cfg: SceneConfig, shape: str, size: str,
           placed: list[SceneObject]) -> tuple[float, float, float, tuple[float, float, float, float]] | None:
    """Random centre/radius whose box stays inside the image and barely overlaps others; None if no room."""
    s = cfg.image_size
    lo, hi = SIZES[size]
    for _ in range(cfg.placement_tries):
        r = float(rng.uniform(lo, hi)) * s / 2
        left, top, right, bottom = _half_extent(shape, r)
        # cv2 centre coordinates (+0.5 in box coordinates) and the AA fringe (see module docstring).
        cx = float(rng.uniform(left + 1.0, s - right - 2.0))
        cy = float(rng.uniform(top + 1.0, s - bottom - 2.0))
        box = (cx - left + 0.5 - _AA, cy - top + 0.5 - _AA, cx + right + 0.5 + _AA, cy + bottom + 0.5 + _AA)
        if all(_ok(box, o.box_xyxy, cfg) for o in placed):
            return cx, cy, r, box
    return None


def _ok(a: tuple[float, ...], b: tuple[float, ...], cfg: SceneConfig) -> bool:
    iou, cover = _iou_and_cover(a, b)
    return iou <= cfg.max_iou and cover <= cfg.max_cover


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    if amount <= 0:
        return rgb
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + d, 0, 255))


def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """The scene for ``seed``: identical image bytes and objects on every call and machine."""
    cfg = config or SceneConfig()
    rng = np.random.default_rng(seed)
    kind = cfg.backgrounds[rng.integers(len(cfg.backgrounds))]
    image = _background(rng, kind, cfg.image_size)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objects: list[SceneObject] = []
    for _ in range(4 * n):  # bounded: a crowded scene simply ends with fewer objects (never below 1)
        if len(objects) == n:
            break
        shape, color = _pick_attributes(rng, cfg, objects)
        size = cfg.sizes[rng.integers(len(cfg.sizes))]
        spot = _place(rng, cfg, shape, size, objects)
        if spot is None and size != cfg.sizes[0]:
            size = min(cfg.sizes, key=SIZE_RANK.__getitem__)  # crowded: fall back to the smallest size
            spot = _place(rng, cfg, shape, size, objects)
        if spot is None:
            if len(objects) >= cfg.min_objects:
                break
            continue
        cx, cy, r, box = spot
        _draw(image, shape, cx, cy, r, _jitter(rng, COLORS[color], cfg.color_jitter))
        objects.append(SceneObject(shape, color, size, box, (cx + 0.5, cy + 0.5)))
    return Scene(seed=seed, image=image, objects=objects, background=kind)


def draw_boxes(scene: Scene, labels: bool = True) -> np.ndarray:
    """A copy of the image with object boxes (and indices) drawn, for contact sheets and debugging."""
    img, magenta = scene.image.copy(), (255, 0, 255)  # magenta: no shape colour, visible on white shapes
    for i, o in enumerate(scene.objects):
        x1, y1, x2, y2 = (round(v - 0.5) for v in o.box_xyxy)
        cv2.rectangle(img, (x1, y1), (x2, y2), magenta, 1)
        if labels:
            cv2.putText(img, str(i), (x1 + 1, y1 + 9), cv2.FONT_HERSHEY_PLAIN, 0.7, magenta, 1)
    return img
