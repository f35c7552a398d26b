"""DepthLifter with real sensor_msgs messages: P-based 3-D, and insane input dropped with one warning per cause."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")
from sensor_msgs.msg import CameraInfo, RegionOfInterest  # noqa: E402

from groma_ros.engine.types import Answer, GroundedItem, Region, Task  # noqa: E402
from groma_ros.ros.image_codec import cv2_to_imgmsg  # noqa: E402
from groma_ros.ros.lifting import DepthLifter  # noqa: E402

# image_geometry's test calibration (left camera): K fx 430.15, cx 311.71; P fx 295.53, cx 285.56
K = [430.15433020105519, 0.0, 311.71339830549732, 0.0, 430.60920415473657, 221.06824942698509, 0.0, 0.0, 1.0]
P = [295.53402059708782, 0.0, 285.55760765075684, 0.0, 0.0, 295.53402059708782, 223.29617881774902, 0.0,
     0.0, 0.0, 1.0, 0.0]
BOX = (284.5, 227.5, 324.5, 267.5)  # centred on pixel (304, 247)


class Warnings:
    """The node's ``warn_once``: one log line per key."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.texts: list[str] = []

    def __call__(self, key: str, text: str) -> None:
        if key not in self.keys:
            self.keys.append(key)
            self.texts.append(text)


def depth_msg(z: float, stamp_s: int = 5, frame: str = "depth_optical"):
    msg = cv2_to_imgmsg(np.full((480, 640), z, np.float32), "32FC1")
    msg.header.stamp.sec, msg.header.frame_id = stamp_s, frame
    return msg


def info(**changes) -> CameraInfo:
    msg = CameraInfo(width=640, height=480, k=K, p=P)
    msg.header.frame_id = "depth_optical"
    for name, value in changes.items():
        setattr(msg, name, value)
    return msg


def answer(*boxes) -> Answer:
    regions = tuple(Region(i, box, 0.9) for i, box in enumerate(boxes))
    return Answer(Task.GROUNDED_CAPTION, "q", "a cup", "a cup",
                  items=[GroundedItem("a cup", 0, 5, regions)], regions=list(regions), image_size=(640, 480))


def lifter(warnings: Warnings, depth_z: float = 1.5, camera_info: CameraInfo | None = None) -> DepthLifter:
    out = DepthLifter(4, 0.1, "", 0.1, warnings)
    out.on_depth(depth_msg(depth_z))
    out.on_depth_info(camera_info or info())
    return out


def image_header():
    return depth_msg(1.0).header  # same stamp and frame as the depth frame


def test_lift_uses_p():
    warnings = Warnings()
    got = lifter(warnings).lift(answer(BOX), image_header())
    (n, phrase, score, centre, size, valid), = got.detections
    assert (n, phrase, score) == (0, "a cup", 0.9) and valid == 400
    assert tuple(round(c, 3) for c in centre) == (0.094, 0.120, 1.5)
    assert size[0] == pytest.approx(40 * 1.5 / P[0])
    assert got.points[0] == centre and got.frame_id == "depth_optical" and warnings.keys == []


def test_insane_depth_gives_no_3d_and_one_warning():
    warnings = Warnings()
    lift = lifter(warnings, depth_z=1e38)
    for _ in range(3):
        got = lift.lift(answer(BOX, (10.0, 10.0, 60.0, 60.0)), image_header())
        assert got.detections == [] and got.points == [None, None]
    assert warnings.keys == ["depth_sanity:depth_range"]
    assert "beyond max_depth_m 100 m" in warnings.texts[0]
    lift.max_depth_m = 1e39  # the bound is a setting: raised, the same frame lifts
    assert len(lift.lift(answer(BOX), image_header()).detections) == 1


@pytest.mark.parametrize("changes,key", [
    (dict(binning_x=2**32 - 1), "depth_camera_info:binning"),
    (dict(roi=RegionOfInterest(x_offset=4_000_000_000, y_offset=0, width=640, height=480)),
     "depth_camera_info:roi"),
    (dict(p=[1e-9, 0.0, 285.6, 0.0, 0.0, 1e-9, 223.3, 0.0, 0.0, 0.0, 1.0, 0.0]), "depth_camera_info:focal"),
    (dict(p=[float("nan")] * 12), "depth_camera_info:p"),
    (dict(k=[0.0] * 9, p=[0.0] * 12), "depth_camera_info:k"),
])
def test_insane_intrinsics_give_no_3d_and_one_warning(changes, key):
    warnings = Warnings()
    lift = lifter(warnings, camera_info=info(**changes))
    assert lift.lift(answer(BOX), image_header()) is None
    assert lift.lift(answer(BOX), image_header()) is None
    assert warnings.keys == [key]
    assert warnings.texts[0].startswith("3-D lifting skipped: CameraInfo")


def test_intrinsics_scaled_to_a_tiny_depth_image_are_checked_again():
    warnings = Warnings()
    lift = DepthLifter(4, 0.1, "", 0.1, warnings)
    tiny = cv2_to_imgmsg(np.full((1, 2), 1.5, np.float32), "32FC1")  # P fx 295.5 at 640 px -> 0.92 at 2 px
    tiny.header.stamp.sec, tiny.header.frame_id = 5, "depth_optical"
    lift.on_depth(tiny)
    lift.on_depth_info(info())
    assert lift.lift(answer(BOX), image_header()) is None
    assert warnings.keys == ["depth_camera_info:focal"]
    assert "scaled to the 2x1 depth image" in warnings.texts[0]
