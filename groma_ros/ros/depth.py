"""REP 118 depth in, 3-D points out: units from the encoding, robust box statistics, pinhole back-projection.

Why: peers got depth units from a divisor parameter (wrong as soon as the camera changes) and took a
plain mean over the box (one background pixel ruins it). Here units come from the encoding (16UC1 =
millimetres with 0 invalid, 32FC1 = metres with NaN invalid) and the depth is a median over a shrunken
core of the box with an outlier band.

Pixel conventions: boxes are ``(x1, y1, x2, y2)`` in continuous pixel-edge coordinates (the image spans
``[0, W] x [0, H]``, pixel ``i`` covers ``[i, i+1)``), as detectors report them. Camera matrices use
pixel-centre indices, so a box coordinate ``u`` maps to ``u - 0.5`` before back-projection.
3-D results are in the depth camera's optical frame (REP 103: x right, y down, z forward), metres.
Pure numpy; ROS messages are only read by duck typing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from groma_ros.ros.image_codec import DEFAULT_MAX_PIXELS, ImageConversionError, imgmsg_to_cv2

BoxXYXY = tuple[float, float, float, float]
_MM_ENCODINGS = ("16UC1", "MONO16")
_M_ENCODINGS = ("32FC1", "64FC1")


def depth_to_meters(msg_or_array: Any, encoding: str | None = None, *,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Depth image (``sensor_msgs/Image`` or array + ``encoding``) -> float32 metres, invalid = NaN.

    16UC1 (and mono16, which some drivers use for the same data): millimetres, 0 invalid.
    32FC1/64FC1: metres; NaN, +-inf and values <= 0 invalid. Anything else -> ImageConversionError.
    ``encoding`` (if given) overrides ``msg.encoding``. Always returns a new array (never a view).
    """
    is_array = isinstance(msg_or_array, np.ndarray)
    if is_array and encoding is None:
        raise ImageConversionError("depth_to_meters(array) needs the encoding (16UC1 or 32FC1)")
    encoding = msg_or_array.encoding if encoding is None else encoding
    enc = str(encoding).strip().upper()
    if enc not in _MM_ENCODINGS + _M_ENCODINGS:
        raise ImageConversionError(
            f"unsupported depth encoding {encoding!r}: REP 118 depth is 16UC1 (mm) or 32FC1 (m)"
        )
    raw = msg_or_array if is_array else imgmsg_to_cv2(msg_or_array, "passthrough", max_pixels=max_pixels)
    if raw.ndim != 2:
        raise ImageConversionError(f"depth must be single-channel HxW, got shape {raw.shape} ({encoding})")
    if enc in _MM_ENCODINGS:
        if raw.dtype != np.uint16:
            raise ImageConversionError(f"{encoding} depth must be uint16, got {raw.dtype}")
        out = raw.astype(np.float32)
        out *= np.float32(0.001)
        out[raw == 0] = np.nan
        return out
    if raw.dtype.kind != "f":
        raise ImageConversionError(f"{encoding} depth must be floating point, got {raw.dtype}")
    out = raw.astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the depth camera (what REP 118 says defines the projection)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    frame_id: str = ""

    @classmethod
    def from_camera_info(cls, msg: Any, *, use_projection: bool = False) -> CameraIntrinsics:
        """From ``sensor_msgs/CameraInfo``: ``K`` (or ``P`` for rectified streams), honouring binning/ROI.

        An all-zero ``K`` means "uncalibrated" in ROS and is rejected, as are non-positive focal lengths.
        """
        mat = np.asarray(msg.p if use_projection else msg.k, dtype=np.float64).reshape(-1)
        name = "P" if use_projection else "K"
        if mat.size not in (9, 12) or not np.all(np.isfinite(mat)):
            raise ValueError(f"CameraInfo.{name.lower()} must be finite with 9/12 values, got {mat.tolist()}")
        if not np.any(mat):
            raise ValueError(f"CameraInfo.{name.lower()} is all zeros: the camera is uncalibrated")
        cols = 3 if mat.size == 9 else 4
        fx, cx, fy, cy = mat[0], mat[2], mat[cols + 1], mat[cols + 2]
        if fx <= 0 or fy <= 0:
            raise ValueError(f"CameraInfo.{name.lower()} focal lengths must be > 0, got fx={fx}, fy={fy}")
        width, height = int(msg.width), int(msg.height)
        bx = max(1, int(getattr(msg, "binning_x", 0) or 1))
        by = max(1, int(getattr(msg, "binning_y", 0) or 1))
        roi = getattr(msg, "roi", None)
        ox = int(getattr(roi, "x_offset", 0) or 0)
        oy = int(getattr(roi, "y_offset", 0) or 0)
        if roi is not None and int(getattr(roi, "width", 0) or 0) > 0:
            width, height = int(roi.width), int(roi.height)
        frame = str(getattr(getattr(msg, "header", None), "frame_id", "") or "")
        return cls(fx / bx, fy / by, (cx - ox) / bx, (cy - oy) / by, width // bx, height // by, frame)

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics for the same camera delivered at another resolution (pixel-edge scaling)."""
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"cannot scale intrinsics with unknown size {self.width}x{self.height}")
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                                (self.cy + 0.5) * sy - 0.5, int(width), int(height), self.frame_id)

    def back_project(self, u: float, v: float, z: float) -> tuple[float, float, float]:
        """Pixel-centre coordinates (u, v) at depth z (m) -> (x, y, z) in the optical frame."""
        return ((u - self.cx) * z / self.fx, (v - self.cy) * z / self.fy, z)


def box_to_depth_box(box_xyxy: Sequence[float], rgb_size: tuple[int, int],
                     depth_size: tuple[int, int]) -> BoxXYXY:
    """Scale a box from the RGB image ``(width, height)`` to the depth image ``(width, height)``.

    Assumes *registered* depth (aligned to the colour camera: same optical centre and field of view,
    possibly another resolution), as ``aligned_depth_to_color`` / ``depth_registered`` topics are.
    Unregistered depth needs the extrinsics and a reprojection; that is out of scope here.
    """
    (rw, rh), (dw, dh) = rgb_size, depth_size
    if min(rw, rh, dw, dh) <= 0:
        raise ValueError(f"image sizes must be positive, got rgb={rgb_size}, depth={depth_size}")
    sx, sy = dw / rw, dh / rh
    x1, y1, x2, y2 = (float(c) for c in box_xyxy)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


@dataclass(frozen=True)
class Lifted3D:
    """A box lifted to 3-D in the depth camera optical frame (metres).

    ``point``: back-projected box centre at the robust (median) surface depth.
    ``size``: (width, height) from the box extents at that depth; depth extent = 10th..90th percentile
    spread of the inlier depths (the visible surface only, so it underestimates thick objects).
    """

    point: tuple[float, float, float]
    size: tuple[float, float, float]
    valid_points: int
    depth_m: float
    frame_id: str = ""


def lift_box(depth_m: np.ndarray, box_xyxy: Sequence[float], intrinsics: CameraIntrinsics, *,
             inner_fraction: float = 0.5, band_fraction: float = 0.1, min_band_m: float = 0.05,
             min_points: int = 10) -> Lifted3D | None:
    """Lift a box (depth-image pixels) to 3-D; None when fewer than ``min_points`` valid depths remain.

    Only the crop is touched: the core of the box (``inner_fraction`` of its width and height, centred;
    at least one pixel) gives the depths; invalid (NaN/inf/<=0) ones are dropped; the median is taken;
    depths outside ``median +- max(min_band_m, band_fraction * median)`` are outliers; the inliers'
    median is the depth. ``depth_m`` is metres as from :func:`depth_to_meters`.
    """
    if depth_m.ndim != 2:
        raise ValueError(f"depth_m must be HxW, got shape {depth_m.shape}")
    if not 0 < inner_fraction <= 1:
        raise ValueError(f"inner_fraction must be in (0, 1], got {inner_fraction}")
    h, w = depth_m.shape
    x1, y1, x2, y2 = (float(c) for c in box_xyxy)
    if not all(math.isfinite(c) for c in (x1, y1, x2, y2)):
        return None
    x1, x2 = sorted((min(max(x1, 0.0), w), min(max(x2, 0.0), w)))
    y1, y2 = sorted((min(max(y1, 0.0), h), min(max(y2, 0.0), h)))
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    cu, cv = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = (x2 - x1) * inner_fraction / 2, (y2 - y1) * inner_fraction / 2
    # pixels whose centres (i + 0.5) fall inside the core; at least one
    c0 = min(math.ceil(cu - hw - 0.5), w - 1)
    r0 = min(math.ceil(cv - hh - 0.5), h - 1)
    c1 = max(math.ceil(cu + hw - 0.5), c0 + 1)
    r1 = max(math.ceil(cv + hh - 0.5), r0 + 1)
    crop = np.asarray(depth_m[r0:r1, c0:c1], dtype=np.float32).reshape(-1)
    with np.errstate(invalid="ignore"):
        vals = crop[np.isfinite(crop) & (crop > 0)]
    if vals.size < min_points:
        return None
    med = float(np.median(vals))
    band = max(min_band_m, band_fraction * med)
    inliers = vals[np.abs(vals - med) <= band]
    if inliers.size < min_points:
        return None
    z = float(np.median(inliers))
    lo, hi = np.percentile(inliers, (10.0, 90.0))
    point = intrinsics.back_project(cu - 0.5, cv - 0.5, z)
    size = ((x2 - x1) * z / intrinsics.fx, (y2 - y1) * z / intrinsics.fy, float(hi - lo))
    return Lifted3D(tuple(float(c) for c in point), tuple(float(s) for s in size), int(inliers.size), z,
                    intrinsics.frame_id)
