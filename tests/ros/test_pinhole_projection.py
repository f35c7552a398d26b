"""Back-projection against image_geometry's PinholeCameraModel, and the sanity bounds of 3-D lifting.

image_geometry is not installable from PyPI, so ``PinholeReference`` restates the formulas of its C++
``pinhole_camera_model.cpp`` (ros-perception/vision_opencv, rolling = Jazzy): ``fromCameraInfo`` moves
P's principal point by the ROI offset, then multiplies fx, cx, Tx (fy, cy, Ty) by 1 / binning;
``project3dToPixel``: u = (fx X + Tx) / Z + cx; ``projectPixelTo3dRay``: ((u - cx - Tx) / fx, ..., 1);
``getDeltaX``: Z du / fx; ``reducedResolution``: ROI size / binning.
The calibration is the stereo pair of image_geometry's own test (``test/directed.py``, "taken from a real
camera calibration"): its left camera has K fx 430.2, cx 311.7 and P fx 295.5, cx 285.6, the numbers of
the issue; its right camera has Tx = -26.51 (baseline 0.0897 m).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")
from sensor_msgs.msg import CameraInfo, RegionOfInterest  # noqa: E402

from groma_ros.ros.depth import (  # noqa: E402
    CameraInfoError,
    CameraIntrinsics,
    lift_box,
)

LEFT = dict(
    d=[-0.363528858080088, 0.16117037733986861, -8.1109585007538829e-05, -0.00044776712298447841, 0.0],
    k=[430.15433020105519, 0.0, 311.71339830549732, 0.0, 430.60920415473657, 221.06824942698509, 0.0, 0.0, 1.0],
    r=[0.99806560714807102, 0.0068562422224214027, 0.061790256276695904, -0.0067522959054715113,
       0.99997541519165112, -0.0018909025066874664, -0.061801701660692349, 0.0014700186639396652,
       0.99808736527268516],
    p=[295.53402059708782, 0.0, 285.55760765075684, 0.0, 0.0, 295.53402059708782, 223.29617881774902, 0.0,
       0.0, 0.0, 1.0, 0.0],
)
RIGHT = dict(
    d=[-0.3560641041112021, 0.15647260261553159, -0.00016442960757099968, -0.00093175810713916221],
    k=[428.38163131344191, 0.0, 327.95553847249192, 0.0, 428.85728580588329, 217.54828640915309, 0.0, 0.0, 1.0],
    r=[0.9982082576219119, 0.0067433328293516528, 0.059454199832973849, -0.0068433268864187356,
       0.99997549128605434, 0.0014784127772287513, -0.059442773257581252, -0.0018826283666309878,
       0.99822993965212292],
    p=[295.53402059708782, 0.0, 285.55760765075684, -26.507895206214123, 0.0, 295.53402059708782,
       223.29617881774902, 0.0, 0.0, 0.0, 1.0, 0.0],
)


def stereo_info(cal: dict, frame: str, **kw) -> CameraInfo:
    msg = CameraInfo(width=640, height=480, distortion_model="plumb_bob", **cal, **kw)
    msg.header.frame_id = frame
    return msg


class PinholeReference:
    """image_geometry ``PinholeCameraModel`` (C++), the parts that map pixels and points."""

    def __init__(self, msg: CameraInfo) -> None:
        bx, by = msg.binning_x or 1, msg.binning_y or 1
        roi = [msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height]
        if roi == [0, 0, 0, 0]:
            roi[2:] = [msg.width, msg.height]
        p = np.array(msg.p, dtype=np.float64).reshape(3, 4)
        if bx > 1 or by > 1 or roi[0] or roi[1]:
            if roi[0] or roi[1]:
                p[0, 2] -= roi[0]
                p[1, 2] -= roi[1]
            if bx > 1:
                p[0, [0, 2, 3]] *= 1.0 / bx
            if by > 1:
                p[1, [1, 2, 3]] *= 1.0 / by
        self.P = p
        self.reduced_resolution = (roi[2] // bx, roi[3] // by)

    fx = property(lambda self: self.P[0, 0])
    fy = property(lambda self: self.P[1, 1])
    cx = property(lambda self: self.P[0, 2])
    cy = property(lambda self: self.P[1, 2])
    Tx = property(lambda self: self.P[0, 3])
    Ty = property(lambda self: self.P[1, 3])

    def project3d_to_pixel(self, xyz) -> tuple[float, float]:
        x, y, z = xyz
        return ((self.fx * x + self.Tx) / z + self.cx, (self.fy * y + self.Ty) / z + self.cy)

    def project_pixel_to_3d_ray(self, uv) -> tuple[float, float, float]:
        return ((uv[0] - self.cx - self.Tx) / self.fx, (uv[1] - self.cy - self.Ty) / self.fy, 1.0)

    def delta_x(self, du: float, z: float) -> float:
        return z * du / self.fx


def plane(z: float, shape=(480, 640)) -> np.ndarray:
    return np.full(shape, z, np.float32)


BOX = (284.5, 227.5, 324.5, 267.5)  # 40x40 px box centred on pixel (304, 247) (pixel-centre coordinates)


def test_left_camera_gives_the_pinhole_camera_model_point():
    info = stereo_info(LEFT, "left_optical")
    ref = PinholeReference(info)
    got = lift_box(plane(1.5), BOX, CameraIntrinsics.from_camera_info(info))
    ray = ref.project_pixel_to_3d_ray((304.0, 247.0))
    np.testing.assert_allclose(got.point, np.array(ray) * 1.5, rtol=0, atol=1e-12)
    assert tuple(round(c, 3) for c in got.point) == (0.094, 0.120, 1.5)  # the expected numbers
    np.testing.assert_allclose(got.size[:2], (ref.delta_x(40, 1.5), 1.5 * 40 / ref.fy), atol=1e-12)
    np.testing.assert_allclose(ref.project3d_to_pixel(got.point), (304.0, 247.0), atol=1e-9)
    with_k = lift_box(plane(1.5), BOX, CameraIntrinsics.from_camera_info(info, use_projection=False))
    assert tuple(round(c, 3) for c in with_k.point) == (-0.027, 0.090, 1.5)  # what K gave before
    assert with_k.size[0] / got.size[0] == pytest.approx(295.53402059708782 / 430.15433020105519)  # 31 % small


def test_right_camera_tx_projects_back_onto_its_pixel():
    info = stereo_info(RIGHT, "right_optical")
    ref = PinholeReference(info)
    k = CameraIntrinsics.from_camera_info(info)
    assert (k.tx, k.ty) == (ref.Tx, ref.Ty) == (-26.507895206214123, 0.0)
    for z in (0.4, 1.5, 7.0):
        got = lift_box(plane(z), BOX, k)
        np.testing.assert_allclose(ref.project3d_to_pixel(got.point), (304.0, 247.0), atol=1e-9)
        register = (((304.0 - ref.cx) * z - ref.Tx) / ref.fx, ((247.0 - ref.cy) * z - ref.Ty) / ref.fy, z)
        np.testing.assert_allclose(got.point, register, atol=1e-12)  # depth_image_proc register's formula
        # relative to the left camera's point for the same pixel: shifted by the baseline -Tx/fx
        left = lift_box(plane(z), BOX, CameraIntrinsics.from_camera_info(stereo_info(LEFT, "l")))
        assert got.point[0] - left.point[0] == pytest.approx(26.507895206214123 / 295.53402059708782)


def test_binning_and_roi_as_pinhole_camera_model():
    # the ROI/binning case of image_geometry's utest.cpp (offset 100, 50; 400x300; binning 2), right camera
    info = stereo_info(RIGHT, "right_optical", binning_x=2, binning_y=2,
                       roi=RegionOfInterest(x_offset=100, y_offset=50, width=400, height=300, do_rectify=True))
    ref = PinholeReference(info)
    k = CameraIntrinsics.from_camera_info(info)
    np.testing.assert_allclose((k.fx, k.fy, k.cx, k.cy, k.tx, k.ty),
                               (ref.fx, ref.fy, ref.cx, ref.cy, ref.Tx, ref.Ty), rtol=1e-15)
    assert (k.width, k.height) == ref.reduced_resolution == (200, 150)
    got = lift_box(plane(2.0, (150, 200)), (90.0, 60.0, 110.0, 80.0), k)
    np.testing.assert_allclose(ref.project3d_to_pixel(got.point), (99.5, 69.5), atol=1e-9)


# ------------------------------------------------------------------------------------------- sanity bounds

def insane(**changes) -> CameraInfo:
    msg = stereo_info(LEFT, "left_optical")
    for name, value in changes.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize("msg,cause,pattern", [
    (insane(binning_x=2**32 - 1), "binning", r"binning 4294967295x1 leaves no pixel of the 640x480 image"),
    (insane(roi=RegionOfInterest(x_offset=2**31, y_offset=0, width=64, height=48)), "roi",
     r"roi \(x_offset 2147483648, .*\) is not a region of the 640x480 calibrated image"),
    (insane(roi=RegionOfInterest(x_offset=10, y_offset=10, width=0, height=0)), "roi", "not a region"),
    (insane(p=[1e-30, 0.0, 285.6, 0.0, 0.0, 1e-30, 223.3, 0.0, 0.0, 0.0, 1.0, 0.0]), "focal",
     r"fx=1e-30, fy=1e-30 px .* outside \[1, 1e\+06\]"),
    (insane(p=[2e9, 0.0, 285.6, 0.0, 0.0, 2e9, 223.3, 0.0, 0.0, 0.0, 1.0, 0.0]), "focal", "outside"),
    (insane(p=[295.5, 0.0, 5e8, 0.0, 0.0, 295.5, 223.3, 0.0, 0.0, 0.0, 1.0, 0.0]), "principal_point",
     r"principal point \(5e\+08, 223.3\)"),
    (insane(p=[295.5, 0.0, 285.6, -3e6, 0.0, 295.5, 223.3, 0.0, 0.0, 0.0, 1.0, 0.0]), "baseline",
     "baseline over 10 m"),
    (insane(p=[295.5, 0.0, 285.6, 0.0, 0.0, 295.5, 223.3, 0.0, 0.0, 0.0, 1.0, 0.5]), "p", r"P\[2,3\]"),
    (insane(p=[float("nan")] + [0.0] * 11), "p", "must be 12 finite values"),
    (insane(k=[float("inf")] * 9), "k", "must be 9 finite values"),
    (insane(k=[0.0] * 9, p=[0.0] * 12), "k", "uncalibrated"),
])
def test_insane_camera_info_is_refused_with_its_cause(msg, cause, pattern):
    with pytest.raises(CameraInfoError, match=pattern) as err:
        CameraIntrinsics.from_camera_info(msg)
    assert err.value.cause == cause
    assert isinstance(err.value, ValueError)


def test_depth_beyond_max_depth_gives_no_point_and_a_report():
    k = CameraIntrinsics.from_camera_info(stereo_info(LEFT, "left_optical"))
    reports = []
    assert lift_box(plane(1e38), BOX, k, report=lambda *r: reports.append(r)) is None
    assert [c for c, _ in reports] == ["depth_range"] and "beyond max_depth_m 100 m" in reports[0][1]
    mixed = plane(1.5)
    mixed[::2] = 1e38  # every other row: the rest still lifts, at the real depth
    got = lift_box(mixed, BOX, k, report=lambda *r: reports.append(r))
    assert got.depth_m == pytest.approx(1.5) and len(reports) == 2
    assert lift_box(plane(150.0), BOX, k) is None
    assert lift_box(plane(150.0), BOX, k, max_depth_m=200.0).depth_m == pytest.approx(150.0)


def test_implausible_points_are_dropped():
    reports = []
    wide = CameraIntrinsics(1.0, 1.0, 319.5, 239.5, 640, 480)  # 1-px focal length: ~180 deg field of view
    assert lift_box(plane(2.0), (0.0, 0.0, 40.0, 40.0), wide, report=lambda *r: reports.append(r)) is None
    assert reports[0][0] == "implausible_point" and "|X|, |Y| <= 10 Z" in reports[0][1]
    assert lift_box(plane(2.0), (300.0, 220.0, 340.0, 260.0), wide) is not None  # near the axis: fine
