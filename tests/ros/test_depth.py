"""REP 118 depth and box lifting: units from the encoding, robust median, exact back-projection."""

from __future__ import annotations

import array
import time

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from groma_ros.ros.depth import (  # noqa: E402
    CameraInfoError,
    CameraIntrinsics,
    box_to_depth_box,
    depth_to_meters,
    lift_box,
)
from groma_ros.ros.image_codec import ImageConversionError, cv2_to_imgmsg  # noqa: E402

W, H, FX, FY, CX, CY = 640, 480, 525.0, 530.0, 319.5, 239.5


def camera_info(w=W, h=H, fx=FX, fy=FY, cx=CX, cy=CY, frame="depth_optical_frame") -> CameraInfo:
    msg = CameraInfo(width=w, height=h, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
                     p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
    msg.header.frame_id = frame
    return msg


def analytic_point(box, z, fx=FX, fy=FY, cx=CX, cy=CY):
    u = (box[0] + box[2]) / 2 - 0.5  # box edges -> pixel-centre coordinates
    v = (box[1] + box[3]) / 2 - 0.5
    return np.array([(u - cx) * z / fx, (v - cy) * z / fy, z])


def plane_with_defects(encoding: str, box, z=1.5, seed=0) -> Image:
    """A fronto-parallel plane at ``z`` m with holes (0 / NaN) and a few outliers inside ``box``."""
    rng = np.random.default_rng(seed)
    x1, y1, x2, y2 = (int(c) for c in box)
    if encoding == "16UC1":
        img = np.full((H, W), int(round(z * 1000)), np.uint16)
        holes, near, far = 0, 300, 6000
    else:
        img = np.full((H, W), z, np.float32)
        holes, near, far = np.nan, 0.3, 6.0
    n = (x2 - x1) * (y2 - y1)
    ys = rng.integers(y1, y2, n // 5)
    xs = rng.integers(x1, x2, n // 5)
    img[ys, xs] = holes  # 20 % holes
    img[ys[:15], xs[:15] + 0] = near  # a few outliers each side
    img[ys[-15:], xs[-15:]] = far
    if encoding == "32FC1":
        img[y1, x1:x1 + 5] = [np.inf, -np.inf, -1.0, 0.0, np.nan]
    return cv2_to_imgmsg(img, encoding)


def test_depth_to_meters_16uc1_and_32fc1():
    mm = np.array([[0, 1000, 1500], [65535, 1, 0]], np.uint16)
    out = depth_to_meters(cv2_to_imgmsg(mm, "16UC1"))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[np.nan, 1.0, 1.5], [65.535, 0.001, np.nan]], rtol=1e-6)
    m = np.array([[1.5, np.nan, np.inf], [-np.inf, 0.0, -2.0]], np.float32)
    out = depth_to_meters(m, "32FC1")
    assert out[0, 0] == np.float32(1.5) and np.isnan(out).sum() == 5
    assert depth_to_meters(np.array([[2.0]]), "64FC1").dtype == np.float32


def test_depth_to_meters_big_endian_message_and_copy():
    mm = np.array([[1234, 0]], np.uint16)
    data = mm.astype(">u2").tobytes()
    msg = Image(height=1, width=2, encoding="16UC1", is_bigendian=1, step=4, data=array.array("B", data))
    out = depth_to_meters(msg)
    assert out[0, 0] == pytest.approx(1.234) and np.isnan(out[0, 1])
    f = cv2_to_imgmsg(np.ones((2, 2), np.float32), "32FC1")
    out = depth_to_meters(f)
    out[:] = 7.0  # a copy: the message is untouched
    assert np.frombuffer(f.data, np.float32)[0] == 1.0


def test_depth_units_come_from_the_encoding_only():
    with pytest.raises(ImageConversionError, match="unsupported depth encoding 'rgb8'"):
        depth_to_meters(cv2_to_imgmsg(np.zeros((2, 2, 3), np.uint8), "rgb8"))
    with pytest.raises(ImageConversionError, match="needs the encoding"):
        depth_to_meters(np.zeros((2, 2), np.uint16))
    with pytest.raises(ImageConversionError, match="must be uint16"):
        depth_to_meters(np.zeros((2, 2), np.float32), "16UC1")


def test_intrinsics_from_camera_info():
    k = CameraIntrinsics.from_camera_info(camera_info())
    assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height, k.frame_id) == (FX, FY, CX, CY, W, H,
                                                                         "depth_optical_frame")
    assert (k.tx, k.ty) == (0.0, 0.0)
    assert CameraIntrinsics.from_camera_info(camera_info(), use_projection=False) == k
    binned = camera_info()
    binned.binning_x = binned.binning_y = 2
    kb = CameraIntrinsics.from_camera_info(binned)
    assert (kb.fx, kb.cx, kb.width, kb.height) == (FX / 2, CX / 2, W // 2, H // 2)
    k_only = camera_info()
    k_only.p = [0.0] * 12  # drivers that never rectify leave P unset: K is the model
    assert CameraIntrinsics.from_camera_info(k_only) == k
    with pytest.raises(CameraInfoError, match="all zeros: the camera is uncalibrated"):
        CameraIntrinsics.from_camera_info(CameraInfo(width=W, height=H))
    with pytest.raises(CameraInfoError, match=r"focal lengths fx=-1, fy=530 px .* outside \[1, 1e\+06\]"):
        CameraIntrinsics.from_camera_info(camera_info(fx=-1.0))


BOXES = [(200.0, 150.0, 320.0, 260.0), (10.3, 400.7, 120.9, 479.0), (500, 20, 640, 90)]


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
@pytest.mark.parametrize("box", BOXES)
def test_plane_lifts_to_analytic_point(encoding, box):
    k = CameraIntrinsics.from_camera_info(camera_info())
    depth = depth_to_meters(plane_with_defects(encoding, box))
    got = lift_box(depth, box, k)
    assert got is not None
    np.testing.assert_allclose(got.point, analytic_point(box, 1.5), atol=1e-6)
    assert got.depth_m == pytest.approx(1.5, abs=1e-6)
    w_m, h_m = (box[2] - box[0]) * 1.5 / FX, (box[3] - box[1]) * 1.5 / FY
    np.testing.assert_allclose(got.size, (w_m, h_m, 0.0), atol=1e-6)
    assert got.valid_points > 0 and got.frame_id == "depth_optical_frame"


def test_object_in_front_of_background_uses_the_object():
    k = CameraIntrinsics.from_camera_info(camera_info())
    depth = np.full((H, W), 3.0, np.float32)
    box = (250, 180, 390, 300)
    depth[190:290, 262:378] = 0.8 + np.random.default_rng(1).normal(0, 0.005, (100, 116))  # object
    got = lift_box(depth, box, k)
    assert got.depth_m == pytest.approx(0.8, abs=0.01)
    assert 0.0 < got.size[2] < 0.03  # surface spread only
    np.testing.assert_allclose(got.point, analytic_point(box, got.depth_m), atol=1e-9)


def test_too_few_valid_points_and_degenerate_boxes():
    k = CameraIntrinsics.from_camera_info(camera_info())
    depth = np.full((H, W), np.nan, np.float32)
    assert lift_box(depth, (100, 100, 200, 200), k) is None
    depth[150, 150] = 1.0
    assert lift_box(depth, (100, 100, 200, 200), k) is None
    plane = np.full((H, W), 2.0, np.float32)
    assert lift_box(plane, (700, 10, 800, 50), k) is None  # outside
    assert lift_box(plane, (10, 10, 10, 50), k) is None  # zero width
    assert lift_box(plane, (np.nan, 10, 30, 50), k) is None
    assert lift_box(plane, (-50, -50, 20, 20), k) is not None  # clipped to the image
    tiny = lift_box(plane, (100, 100, 101, 101), k, min_points=1)  # one-pixel box still works
    assert tiny is not None and tiny.valid_points == 1


def test_mismatched_depth_resolution_scales_the_box():
    # RGB 1280x960, registered depth 640x480 (same field of view): the same 3-D point either way
    rgb_info = camera_info(1280, 960, 2 * FX, 2 * FY, 2 * CX + 0.5, 2 * CY + 0.5)
    rgb_k = CameraIntrinsics.from_camera_info(rgb_info)
    depth_k = CameraIntrinsics.from_camera_info(camera_info())
    assert rgb_k.scaled(W, H) == CameraIntrinsics(FX, FY, CX, CY, W, H, "depth_optical_frame")
    rgb_box = (400.0, 300.0, 640.0, 520.0)
    dbox = box_to_depth_box(rgb_box, (1280, 960), (W, H))
    assert dbox == (200.0, 150.0, 320.0, 260.0)
    depth = depth_to_meters(plane_with_defects("16UC1", dbox))
    got = lift_box(depth, dbox, depth_k)
    np.testing.assert_allclose(got.point, analytic_point(rgb_box, 1.5, 2 * FX, 2 * FY, 2 * CX + 0.5,
                                                         2 * CY + 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        box_to_depth_box(rgb_box, (0, 960), (W, H))


def test_lift_is_fast_on_vga():
    k = CameraIntrinsics.from_camera_info(camera_info())
    depth = depth_to_meters(plane_with_defects("16UC1", (0, 0, W, H)))
    lift_box(depth, (0, 0, W, H), k)
    t0 = time.perf_counter()
    for _ in range(20):
        assert lift_box(depth, (0, 0, W, H), k) is not None  # worst case: the whole image
    per_call = (time.perf_counter() - t0) / 20
    assert per_call < 0.05, f"lift_box took {per_call * 1e3:.1f} ms on a full VGA box"
