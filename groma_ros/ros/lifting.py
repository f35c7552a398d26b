"""3-D lifting of grounded boxes: the depth frame nearest the image stamp, REP 118 units, the depth
camera's intrinsics, and (when tf2_ros is importable and a target frame is set) a transform at the
image stamp. Kept apart from the node so the node only wires topics to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from groma_ros.engine.types import Answer
from groma_ros.ros import messages
from groma_ros.ros.depth import (
    DEFAULT_MAX_DEPTH_M,
    CameraInfoError,
    CameraIntrinsics,
    box_to_depth_box,
    depth_to_meters,
    lift_box,
)
from groma_ros.ros.frame_buffer import FrameBuffer, stamp_to_ns

Point3 = tuple[float, float, float]


@dataclass
class Lifted:
    """3-D results of one answer.

    ``detections``: (detection number, phrase, score, centre, size, valid depth points) in ``frame_id``.
    ``points``: per 2-D detection, its centroid in the image's optical frame (None where depth was
    invalid), or None altogether when the depth frame differs from the image frame.
    """

    frame_id: str  # frame of the 3-D outputs: target_frame, or the depth camera's optical frame
    source_frame_id: str  # the depth camera's optical frame
    detections: list[tuple[int, str, float, Point3, Point3, int]] = field(default_factory=list)
    points: list[Point3 | None] | None = None


class TransformSource:
    """One tf2 buffer + listener for the whole node, created the first time a target frame is asked for.

    tf2_ros is optional at run time: without it 3-D outputs stay in the camera optical frame (warned once).
    """

    def __init__(self, node: Any, warn_once: Callable[[str, str], None]) -> None:
        self._node = node
        self._warn_once = warn_once
        self._buffer: Any = None
        self._listener: Any = None

    def buffer(self, target_frame: str) -> Any:
        """The tf2 buffer, or None when no target frame is set or tf2_ros is missing."""
        if not target_frame:
            return None
        if self._buffer is None:
            try:
                import tf2_geometry_msgs  # noqa: F401  (registers PointStamped transforms)
                import tf2_ros
            except ImportError:
                self._warn_once("tf", f"target_frame={target_frame!r} but tf2_ros is not importable: 3-D "
                                      "outputs stay in the camera optical frame")
                return None
            self._buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self._buffer, self._node)
        return self._buffer


class DepthLifter:
    """One camera's depth frames and camera infos; lifts an answer's boxes on request.

    ``max_stamp_diff_s``, ``target_frame``, ``tf_timeout_s`` and ``max_depth_m`` (depth samples beyond it are
    ignored) are plain attributes: the node changes them at run time and the next ``lift`` uses the new values.
    """

    def __init__(self, buffer_size: int, max_stamp_diff_s: float, target_frame: str, tf_timeout_s: float,
                 warn_once: Callable[[str, str], None], transforms: TransformSource | None = None,
                 max_depth_m: float = DEFAULT_MAX_DEPTH_M) -> None:
        self.depths: FrameBuffer[Any] = FrameBuffer(buffer_size)
        self.depth_info: Any = None
        self.camera_info: Any = None
        self.max_stamp_diff_s = max_stamp_diff_s
        self.target_frame = target_frame
        self.tf_timeout_s = tf_timeout_s
        self.max_depth_m = max_depth_m
        self._warn_once = warn_once
        self._transforms = transforms

    def on_depth(self, msg: Any) -> None:
        self.depths.put(stamp_to_ns(msg.header.stamp), msg)

    def on_depth_info(self, msg: Any) -> None:
        self.depth_info = msg

    def on_camera_info(self, msg: Any) -> None:
        self.camera_info = msg

    def clear(self) -> None:
        self.depths.clear()

    def lift(self, answer: Answer, image_header: Any) -> Lifted | None:
        """Median depth in each box, back-projected with the depth camera's P; None without depth.

        Insane input gives no 3-D and one warning per cause (``warn_once`` keys ``depth_camera_info:<field>``
        for a CameraInfo outside the sanity bounds of :mod:`groma_ros.ros.depth`, ``depth_sanity:<cause>``
        for ignored depth samples or dropped points): no 3-D at all for a bad CameraInfo, none for the
        affected box otherwise.
        """
        found = self.depths.nearest(stamp_to_ns(image_header.stamp), int(self.max_stamp_diff_s * 1e9))
        info = self.depth_info or self.camera_info
        if found is None or info is None:
            self._warn_once("depth", "3-D lifting skipped: no depth frame within "
                                     f"{self.max_stamp_diff_s} s of the image or no depth camera_info yet")
            return None
        depth_msg = found.msg
        depth_m = depth_to_meters(depth_msg)
        dh, dw = depth_m.shape
        try:
            intrinsics = CameraIntrinsics.from_camera_info(info)
            if (intrinsics.width, intrinsics.height) != (dw, dh) and intrinsics.width > 0 and intrinsics.height > 0:
                intrinsics = intrinsics.scaled(dw, dh)
                intrinsics.check(f"CameraInfo scaled to the {dw}x{dh} depth image")
        except CameraInfoError as exc:
            self._warn_once(f"depth_camera_info:{exc.cause}", f"3-D lifting skipped: {exc}")
            return None
        frame = depth_msg.header.frame_id or intrinsics.frame_id
        result = Lifted(frame_id=self._output_frame(frame), source_frame_id=frame)

        def report(cause: str, text: str) -> None:
            self._warn_once(f"depth_sanity:{cause}", f"3-D: {text} (depth frame {frame!r})")

        points: list[Point3 | None] = []
        for n, (phrase, _start, _end, region) in enumerate(messages.detection_pairs(answer)):
            box = box_to_depth_box(region.box, answer.image_size, (dw, dh))
            lifted = lift_box(depth_m, box, intrinsics, max_depth_m=self.max_depth_m, report=report)
            points.append(None if lifted is None else lifted.point)
            if lifted is None:
                continue
            centre = self._to_output_frame(lifted.point, frame, depth_msg.header.stamp)
            if not all(math.isfinite(c) for c in centre):
                report("transform", f"the transform to {self.target_frame!r} gives {centre}; dropped")
                continue
            result.detections.append((n, phrase, region.score, centre, lifted.size, lifted.valid_points))
        # 2-D detections carry the centroid only when it is in their own (image) frame
        result.points = points if frame in (image_header.frame_id, "") else None
        return result

    # -------------------------------------------------------------- TF (optional at run time)
    def _tf_buffer(self) -> Any:
        return self._transforms.buffer(self.target_frame) if self._transforms is not None else None

    def _output_frame(self, frame: str) -> str:
        return self.target_frame if (self.target_frame and self._tf_buffer() is not None) else frame

    def _to_output_frame(self, point: Point3, frame: str, stamp: Any) -> Point3:
        tf_buffer = self._tf_buffer()
        if tf_buffer is None or self.target_frame == frame:
            return point
        from geometry_msgs.msg import PointStamped
        from rclpy.duration import Duration

        stamped = PointStamped()
        stamped.header.frame_id, stamped.header.stamp = frame, stamp
        stamped.point.x, stamped.point.y, stamped.point.z = point
        out = tf_buffer.transform(stamped, self.target_frame, timeout=Duration(seconds=self.tf_timeout_s))
        return (out.point.x, out.point.y, out.point.z)
