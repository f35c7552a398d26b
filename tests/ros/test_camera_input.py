"""Camera frames are kept serialized: their header is read from the CDR bytes exactly as rclpy would read it."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from groma_ros.ros.camera import SerializedImage, cdr_header  # noqa: E402
from groma_ros.ros.image_codec import ImageConversionError  # noqa: E402

FRAME_IDS = ["", "cam", "head_camera_color_optical_frame", "kamera_\u00fc\u00df_\U0001f4f7", "x" * 300]


@pytest.mark.parametrize("msg_type", [Image, CompressedImage])
def test_header_from_bytes_equals_rclpy(msg_type):
    rng = random.Random(7)
    for frame_id in FRAME_IDS:
        for _ in range(20):
            header = Header(stamp=Time(sec=rng.randint(-2**31, 2**31 - 1), nanosec=rng.randint(0, 999_999_999)),
                            frame_id=frame_id)
            msg = msg_type(header=header)
            if msg_type is Image:
                msg.height, msg.width, msg.encoding, msg.step, msg.data = 2, 3, "rgb8", 9, bytes(range(18))
            else:
                msg.format, msg.data = "jpeg", b"\xff\xd8\xff\xd9"
            data = serialize_message(msg)
            assert cdr_header(data) == header
            frame = SerializedImage.from_bytes(data, msg_type)
            assert frame.header == header and frame.message() == msg


def test_unreadable_bytes_fall_back_or_fail_clearly():
    good = serialize_message(Image(header=Header(frame_id="cam")))
    assert cdr_header(good[:10]) is None  # too short
    assert cdr_header(b"\x00\x09" + good[2:]) is None  # an encapsulation it does not know
    broken = bytearray(good)
    broken[12:16] = (10**6).to_bytes(4, "little")  # frame_id longer than the message
    assert cdr_header(bytes(broken)) is None
    with pytest.raises(ImageConversionError, match="does not deserialize"):
        SerializedImage(bytes(broken), Image, None).message()
