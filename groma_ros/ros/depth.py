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

Projection: ROS depth images are rectified, so back-projection uses ``P`` as image_geometry's
``PinholeCameraModel`` does (fx, fy, cx, cy, Tx, Ty from P, adjusted for ROI then binning like its C++
``fromCameraInfo``); a pixel (u, v) at depth Z becomes the point that ``project3dToPixel`` maps back to
(u, v): ``X = ((u - cx) Z - Tx) / fx``, ``Y = ((v - cy) Z - Ty) / fy`` (depth_image_proc's register does
the same; for a monocular or first stereo camera Tx = Ty = 0 and this is its point_cloud_xyz formula).

Sanity bounds (anything outside gives no 3-D, never a wrong one):
- depth samples count only in (0, ``max_depth_m``] (default :data:`DEFAULT_MAX_DEPTH_M` = 100 m, beyond any
  indoor/robot depth camera; 16UC1 cannot exceed 65.535 m); larger ones are ignored like holes;
- intrinsics after ROI and binning: every value finite, fx and fy in [1, 1e6] px, |cx|, |cy| <= 1e6 px,
  stereo baseline |Tx/fx|, |Ty/fy| <= 10 m, P[2,3] = 0 (image_geometry asserts it), the ROI inside the
  calibrated image, at least one pixel left after binning;
- results: finite, and at most 10 times as far sideways as forward (|X|, |Y| <= 10 Z, i.e. within 84.3 deg
  of the optical axis, more than a rectified pinhole image can show).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from groma_ros.ros.image_codec import DEFAULT_MAX_PIXELS, ImageConversionError, imgmsg_to_cv2

BoxXYXY = tuple[float, float, float, float]
DropReport = Callable[[str, str], None]  # (cause, text): why a box gave no 3-D

DEFAULT_MAX_DEPTH_M = 100.0
FOCAL_RANGE_PX = (1.0, 1e6)
MAX_PRINCIPAL_POINT_PX = 1e6
MAX_BASELINE_M = 10.0
MAX_OFF_AXIS_RATIO = 10.0  # |X| / Z and |Y| / Z
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


class CameraInfoError(ValueError):
    """A CameraInfo that gives no sane pinhole model; ``cause`` names the field (for one warning per cause)."""

    def __init__(self, cause: str, text: str) -> None:
        super().__init__(text)
        self.cause = cause


def _matrix(values: Any, size: int, name: str) -> np.ndarray:
    try:
        mat = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CameraInfoError(name, f"CameraInfo.{name} is not numeric: {exc}") from exc
    if mat.size != size or not np.all(np.isfinite(mat)):
        raise CameraInfoError(name, f"CameraInfo.{name} must be {size} finite values, got {mat.tolist()}")
    return mat


def _uint(msg: Any, name: str) -> int:
    value = getattr(msg, name, 0) or 0
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise CameraInfoError(name, f"CameraInfo.{name} is not an integer: {value!r}") from exc


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole model of the depth camera for its delivered (ROI, binned) image: P's fx, fy, cx, cy, Tx, Ty."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    frame_id: str = ""
    tx: float = 0.0  # P[0,3] = -fx * baseline for the second camera of a stereo pair, else 0
    ty: float = 0.0  # P[1,3]

    @classmethod
    def from_camera_info(cls, msg: Any, *, use_projection: bool = True) -> CameraIntrinsics:
        """From ``sensor_msgs/CameraInfo`` as image_geometry's ``PinholeCameraModel.fromCameraInfo``.

        ``P`` (``use_projection=False``: ``K``, no Tx/Ty); a ``P`` of all zeros falls back to ``K``
        (drivers that never rectify leave it unset). The principal point moves by the ROI offset, then
        fx, cx, Tx (fy, cy, Ty) divide by binning_x (binning_y); binning 0 means 1, an all-zero ROI means
        the full image. Raises :class:`CameraInfoError` for an uncalibrated (all-zero) camera and for
        anything outside the module's sanity bounds.
        """
        k, p = _matrix(msg.k, 9, "k"), _matrix(msg.p, 12, "p")
        if use_projection and np.any(p):
            name, (fx, cx, tx, fy, cy, ty) = "p", (p[0], p[2], p[3], p[5], p[6], p[7])
            if p[11] != 0:
                raise CameraInfoError("p", f"CameraInfo.p[11] (P[2,3]) must be 0, got {p[11]}: both stereo "
                                           "cameras must lie in one plane")
        elif np.any(k):
            name, (fx, cx, tx, fy, cy, ty) = "k", (k[0], k[2], 0.0, k[4], k[5], 0.0)
        else:
            raise CameraInfoError("k", "CameraInfo.k and .p are all zeros: the camera is uncalibrated")
        full_w, full_h = _uint(msg, "width"), _uint(msg, "height")
        bx, by = max(1, _uint(msg, "binning_x")), max(1, _uint(msg, "binning_y"))
        roi = getattr(msg, "roi", None)
        ox, oy, rw, rh = (_uint(roi, f) for f in ("x_offset", "y_offset", "width", "height"))
        if (ox, oy, rw, rh) == (0, 0, 0, 0):
            rw, rh = full_w, full_h
        elif rw == 0 or rh == 0 or (full_w and ox + rw > full_w) or (full_h and oy + rh > full_h):
            raise CameraInfoError("roi", f"CameraInfo.roi (x_offset {ox}, y_offset {oy}, width {rw}, height "
                                         f"{rh}) is not a region of the {full_w}x{full_h} calibrated image")
        if (rw and rw // bx < 1) or (rh and rh // by < 1):
            raise CameraInfoError("binning", f"CameraInfo binning {bx}x{by} leaves no pixel of the {rw}x{rh} "
                                             "image")
        frame = str(getattr(getattr(msg, "header", None), "frame_id", "") or "")
        out = cls(fx / bx, fy / by, (cx - ox) / bx, (cy - oy) / by, rw // bx, rh // by, frame, tx / bx, ty / by)
        out.check(f"CameraInfo.{name}")
        return out

    def check(self, what: str = "intrinsics") -> None:
        """Raise :class:`CameraInfoError` unless the model is within the module's sanity bounds."""
        lo, hi = FOCAL_RANGE_PX
        values = (self.fx, self.fy, self.cx, self.cy, self.tx, self.ty)
        if not all(math.isfinite(v) for v in values):
            raise CameraInfoError("intrinsics", f"{what} gives non-finite intrinsics {values}")
        if not (lo <= self.fx <= hi and lo <= self.fy <= hi):
            raise CameraInfoError("focal", f"{what} focal lengths fx={self.fx:g}, fy={self.fy:g} px (after "
                                           f"binning) are outside [{lo:g}, {hi:g}]")
        if max(abs(self.cx), abs(self.cy)) > MAX_PRINCIPAL_POINT_PX:
            raise CameraInfoError("principal_point", f"{what} principal point ({self.cx:g}, {self.cy:g}) px "
                                                     f"(after ROI/binning) is beyond {MAX_PRINCIPAL_POINT_PX:g}")
        if max(abs(self.tx / self.fx), abs(self.ty / self.fy)) > MAX_BASELINE_M:
            raise CameraInfoError("baseline", f"{what} stereo offset Tx={self.tx:g}, Ty={self.ty:g} means a "
                                              f"baseline over {MAX_BASELINE_M:g} m")

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics for the same camera delivered at another resolution (pixel-edge scaling)."""
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"cannot scale intrinsics with unknown size {self.width}x{self.height}")
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                                (self.cy + 0.5) * sy - 0.5, int(width), int(height), self.frame_id,
                                self.tx * sx, self.ty * sy)

    def back_project(self, u: float, v: float, z: float) -> tuple[float, float, float]:
        """Pixel-centre coordinates (u, v) at depth z (m) -> the (x, y, z) that P projects onto (u, v)."""
        return (((u - self.cx) * z - self.tx) / self.fx, ((v - self.cy) * z - self.ty) / self.fy, z)


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
             min_points: int = 10, max_depth_m: float = DEFAULT_MAX_DEPTH_M,
             report: DropReport | None = None) -> Lifted3D | None:
    """Lift a box (depth-image pixels) to 3-D; None when fewer than ``min_points`` valid depths remain.

    Only the crop is touched: the core of the box (``inner_fraction`` of its width and height, centred;
    at least one pixel) gives the depths; invalid ones (NaN/inf/<=0, or beyond ``max_depth_m``) are
    dropped; the median is taken; depths outside ``median +- max(min_band_m, band_fraction * median)`` are
    outliers; the inliers' median is the depth. ``depth_m`` is metres as from :func:`depth_to_meters`.
    ``report(cause, text)`` hears about insane input: ``"depth_range"`` (samples beyond ``max_depth_m``
    ignored) and ``"implausible_point"`` (a non-finite or off-axis result, dropped).
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
    too_far = vals > np.float32(min(max_depth_m, float(np.finfo(np.float32).max)))
    if too_far.any():
        if report is not None:
            report("depth_range", f"{int(too_far.sum())} depth samples up to {float(vals.max()):.3g} m are beyond "
                                  f"max_depth_m {max_depth_m:g} m and were ignored")
        vals = vals[~too_far]
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
    if not (all(math.isfinite(c) for c in (*point, *size))
            and max(abs(point[0]), abs(point[1])) <= MAX_OFF_AXIS_RATIO * z):
        if report is not None:
            report("implausible_point", f"box {tuple(round(c, 1) for c in box_xyxy)} lifts to {point} (size "
                                        f"{size}), outside |X|, |Y| <= {MAX_OFF_AXIS_RATIO:g} Z; dropped")
        return None
    return Lifted3D(tuple(float(c) for c in point), tuple(float(s) for s in size), int(inliers.size), z,
                    intrinsics.frame_id)
