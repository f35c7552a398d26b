"""One camera of the node: its topic names, frame buffer, depth lifter and clock-domain check.

A robot has several cameras and one model: the node keeps one ``CameraInput`` per entry of its ``cameras``
parameter and shares the engine between them. The unnamed camera ``""`` reads today's single-camera topics
(``image``, ``camera_info``, ``depth/image``, ...); a camera named ``front`` reads ``front/image``, ... (all
relative names, so namespaces and remapping work). Nothing here creates subscriptions: the node subscribes the
bound callbacks on activate, so a camera object outlives a deactivate/activate cycle.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from groma_ros.ros.frame_buffer import Frame, FrameBuffer, stamp_to_ns
from groma_ros.ros.lifting import DepthLifter
from groma_ros.ros.params import CameraSettings

CLOCK_OFFSET_WARN_S = 5.0  # stamps further than this from the node's clock point at another clock domain


@dataclass(frozen=True)
class SerializedImage:
    """A camera message as it came off the wire: its header read from the bytes, the pixels left serialized.

    Why: turning a VGA ``Image`` into a Python message costs ~0.2 ms per frame (a fifth of an idle node's
    per-frame cost), and most frames are never asked about. The header serves frame selection and answers;
    ``message()`` deserializes when a query needs the pixels.
    """

    data: bytes
    msg_type: type
    header: Any

    def message(self) -> Any:
        from rclpy.serialization import deserialize_message

        from groma_ros.ros.image_codec import ImageConversionError

        try:
            return deserialize_message(self.data, self.msg_type)
        except Exception as exc:  # noqa: BLE001 - rclpy raises several types for bytes that are no such message
            raise ImageConversionError(f"the {self.msg_type.__name__} message does not deserialize: {exc}") from None

    @classmethod
    def from_bytes(cls, data: bytes, msg_type: type) -> SerializedImage:
        """Header from the CDR prefix (``std_msgs/Header`` leads both image types); a full deserialize of
        anything it cannot read."""
        header = cdr_header(data)
        if header is None:
            header = cls(data, msg_type, None).message().header
        return cls(data, msg_type, header)


_CDR_ENCAPSULATIONS = {0x00: ">", 0x01: "<", 0x06: ">", 0x07: "<"}  # (X)CDR plain, big / little endian


def cdr_header(data: bytes) -> Any:
    """``std_msgs/Header`` at the start of a CDR-serialized message, or None when the bytes do not read as one.

    Layout after the 4-byte encapsulation: int32 sec, uint32 nanosec, uint32 length (with the NUL), frame_id.
    """
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    if len(data) < 16 or data[0] != 0 or data[1] not in _CDR_ENCAPSULATIONS:
        return None
    sec, nanosec, length = struct.unpack_from(_CDR_ENCAPSULATIONS[data[1]] + "iII", data, 4)
    if not 1 <= length <= len(data) - 16 or data[16 + length - 1] != 0 or nanosec >= 1_000_000_000:
        return None
    try:
        frame_id = data[16:16 + length - 1].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


class CameraInput:
    """A camera's frames (stamp-indexed, arrival-timed) and, with depth, its lifter."""

    def __init__(self, settings: CameraSettings, buffer_size: int, lifter: DepthLifter | None,
                 clock_now_ns: Callable[[], int], warn_once: Callable[[str, str], None]) -> None:
        self.settings = settings
        self.name = settings.name
        self.frames: FrameBuffer[Any] = FrameBuffer(buffer_size)
        self.lifter = lifter
        self._clock_now_ns = clock_now_ns
        self._warn_once = warn_once
        self._clock_warned = False

    @property
    def label(self) -> str:
        """How logs and errors name this camera."""
        return f"camera {self.name!r}" if self.name else "the unnamed camera"

    def topic(self, base: str) -> str:
        """``front/image`` for camera ``front``; ``image`` for the unnamed camera."""
        return f"{self.name}/{base}" if self.name else base

    @property
    def image_type(self) -> type:
        from sensor_msgs.msg import CompressedImage, Image

        return CompressedImage if self.settings.image_transport == "compressed" else Image

    @property
    def image_topic(self) -> str:
        return self.topic("image/compressed" if self.settings.image_transport == "compressed" else "image")

    def query_topic(self) -> str | None:
        """This camera's own query topic (``~/front/query``); the unnamed camera uses ``~/query`` only."""
        return f"~/{self.name}/query" if self.name else None

    def on_image(self, data: bytes) -> None:
        """Subscription callback on serialized messages (``raw=True``): store, decode later."""
        try:
            msg = SerializedImage.from_bytes(data, self.image_type)
        except ValueError as exc:  # unreadable even as a whole message: nothing to keep
            self._warn_once(f"undeserializable/{self.name}", f"{self.label}: dropped a frame: {exc}")
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        self.frames.put(stamp_ns, msg)
        if not self._clock_warned:
            self._check_clock(stamp_ns)

    def _check_clock(self, stamp_ns: int) -> None:
        """Warn once when this camera stamps in another clock domain than the node's clock.

        Staleness is measured from arrival, so such a camera still works; the warning explains why stamps and
        the node's clock disagree, which matters for TF lookups and for anyone comparing stamps.
        """
        if stamp_ns == 0:
            self._clock_warned = True
            self._warn_once(f"clock/{self.name}", f"{self.label} does not stamp its frames (stamp 0): the newest "
                            "frame is the last received one and queries cannot select frames by stamp")
            return
        offset_s = (stamp_ns - self._clock_now_ns()) / 1e9
        if abs(offset_s) > CLOCK_OFFSET_WARN_S:
            self._clock_warned = True
            direction = "ahead of" if offset_s > 0 else "behind"
            self._warn_once(
                f"clock/{self.name}",
                f"{self.label} stamps frames {abs(offset_s):.1f} s {direction} this node's clock: likely "
                "use_sim_time differs between camera and node, a bag replayed without /clock, or a camera "
                "hardware clock. Frame age (max_image_age_s) is measured from arrival, so queries still work; "
                "TF lookups at these stamps need transforms in the camera's clock domain.")

    def frame(self, stamp_ns: int = 0) -> Frame[Any] | None:
        """The frame a query means: the exact stamp when given, else the newest stamp."""
        return self.frames.exact(stamp_ns) if stamp_ns else self.frames.newest()

    def clear(self) -> None:
        self.frames.clear()
        if self.lifter is not None:
            self.lifter.clear()
