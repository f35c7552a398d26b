"""RViz MarkerArray: DELETEALL first, stable ids, one header everywhere, serialisable."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("visualization_msgs.msg")
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from groma_ros.ros.markers import detections_to_marker_array  # noqa: E402


def _header(frame="camera_color_optical_frame"):
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = 100, 250
    return h


def test_counts_ids_namespaces_and_headers():
    objs = [("red mug", (0.1, 0.0, 1.5), (0.08, 0.1, 0.0), 0.91),
            ("plate", (-0.2, 0.1, 1.2), (0.3, 0.02, 0.2))]
    arr = detections_to_marker_array(objs, _header(), ns="groma", lifetime_s=1.5)
    assert isinstance(arr, MarkerArray)
    assert len(arr.markers) == 1 + 3 * len(objs)
    assert arr.markers[0].action == Marker.DELETEALL
    for m in arr.markers:
        assert m.header.frame_id == "camera_color_optical_frame"
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (100, 250)
    rest = arr.markers[1:]
    keys = [(m.ns, m.id) for m in rest]
    assert len(set(keys)) == len(keys)
    by_ns = {ns: sorted(m.id for m in rest if m.ns == ns) for ns in {m.ns for m in rest}}
    assert by_ns == {"groma/boxes": [0, 1], "groma/edges": [0, 1], "groma/labels": [0, 1]}
    cube = next(m for m in rest if m.ns == "groma/boxes" and m.id == 0)
    assert cube.type == Marker.CUBE and cube.action == Marker.ADD
    assert (cube.pose.position.x, cube.pose.position.z) == (0.1, 1.5) and cube.pose.orientation.w == 1.0
    assert cube.scale.z == pytest.approx(0.01)  # zero depth extent clamped so RViz shows it
    assert (cube.lifetime.sec, cube.lifetime.nanosec) == (1, 500_000_000)
    edges = next(m for m in rest if m.ns == "groma/edges" and m.id == 1)
    assert edges.type == Marker.LINE_LIST and len(edges.points) == 24
    labels = [m for m in rest if m.ns == "groma/labels"]
    assert labels[0].type == Marker.TEXT_VIEW_FACING and labels[0].text == "red mug 0.91"
    assert labels[1].text == "plate"
    assert labels[0].pose.position.y < 0.0  # above the box = -y in an optical frame


def test_body_frame_label_goes_up_and_empty_input_clears():
    arr = detections_to_marker_array([("box", (1.0, 0.0, 0.5), (0.2, 0.2, 0.2), 0.5)], _header("base_link"),
                                     edges=False)
    assert len(arr.markers) == 3
    assert arr.markers[-1].pose.position.z > 0.6
    empty = detections_to_marker_array([], _header())
    assert [m.action for m in empty.markers] == [Marker.DELETEALL]


def test_detection3d_messages_and_objects():
    pose = Pose(position=Point(x=1.0, y=2.0, z=3.0), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=0.0))
    det = SimpleNamespace(phrase="mug", results=[SimpleNamespace(hypothesis=SimpleNamespace(score=0.5))],
                          bbox=SimpleNamespace(center=pose, size=Vector3(x=0.1, y=0.2, z=0.3)))
    obj = SimpleNamespace(phrase="cup", point=(0.0, 0.0, 1.0), size=(0.1, 0.1, 0.1), score=None)
    arr = detections_to_marker_array([det, obj], _header())
    cube = arr.markers[1]
    assert (cube.pose.position.x, cube.scale.y) == (1.0, 0.2) and cube.pose.orientation.w == 1.0
    assert det.bbox.center.orientation.w == 0.0  # the caller's message is not modified
    assert arr.markers[3].text == "mug 0.50" and arr.markers[4].pose.position.z == 1.0


def test_serialises_with_rclpy():
    serialization = pytest.importorskip("rclpy.serialization")
    arr = detections_to_marker_array([("a", (0, 0, 1), (0.1, 0.1, 0.1), 0.3)], _header(), lifetime_s=0.25)
    data = serialization.serialize_message(arr)
    back = serialization.deserialize_message(data, MarkerArray)
    assert len(back.markers) == 4 and back.markers[3].text == "a 0.30"
