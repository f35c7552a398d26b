"""RViz ``visualization_msgs/MarkerArray`` for 3-D detections.

Why a DELETEALL first: RViz keeps markers until told otherwise, so a frame with fewer objects than the
last would leave ghosts; starting every array with DELETEALL makes each array the complete scene.
Ids are the object's index in the array (stable within one array; namespaces separate boxes, edges and
labels). Every marker carries the given header (source image stamp + 3-D frame).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from groma_ros.drawing import phrase_color

_MIN_SIZE = 0.01  # m; RViz hides zero-thickness cubes
# the 12 edges of a unit cube as corner index pairs; corner bits are (x, y, z) signs
_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


def _iter_objects(objects: Iterable[Any]) -> Iterator[tuple[str, Pose, tuple[float, float, float], Any]]:
    """(phrase, pose, size, score) from tuples ``(phrase, center_xyz, size_xyz[, score])``, objects with
    ``phrase``/``center`` (or ``point``)/``size``/``score``, or ``GroundedDetection3D`` messages."""
    for obj in objects:
        if isinstance(obj, (tuple, list)):
            phrase, center, size, score = (list(obj) + [None])[:4]
            pose = Pose()
            pose.position.x, pose.position.y, pose.position.z = (float(c) for c in center)
            pose.orientation.w = 1.0
        elif hasattr(obj, "bbox"):  # GroundedDetection3D / vision_msgs Detection3D
            phrase = getattr(obj, "phrase", "")
            src, vec = obj.bbox.center, obj.bbox.size
            pose = Pose(position=Point(x=src.position.x, y=src.position.y, z=src.position.z),
                        orientation=Quaternion(x=src.orientation.x, y=src.orientation.y,
                                               z=src.orientation.z, w=src.orientation.w))
            size = (vec.x, vec.y, vec.z)
            results = getattr(obj, "results", None)
            score = results[0].hypothesis.score if results else None
        else:
            phrase, size, score = getattr(obj, "phrase", ""), obj.size, getattr(obj, "score", None)
            center = getattr(obj, "center", None)
            center = obj.point if center is None else center
            pose = Pose()
            pose.position.x, pose.position.y, pose.position.z = (float(c) for c in center)
            pose.orientation.w = 1.0
        q = pose.orientation
        if q.x == q.y == q.z == q.w == 0.0:  # an all-zero quaternion makes RViz warn and skip
            q.w = 1.0
        yield str(phrase), pose, tuple(max(float(s), _MIN_SIZE) for s in size), score


def _duration(seconds: float) -> Duration:
    sec = int(math.floor(seconds))
    return Duration(sec=sec, nanosec=int(round((seconds - sec) * 1e9)) % 1_000_000_000)


def _color(phrase: str, alpha: float) -> ColorRGBA:
    r, g, b = phrase_color(phrase)
    return ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=float(alpha))


def detections_to_marker_array(objects: Iterable[Any], header: Any, *, ns: str = "groma",
                               lifetime_s: float = 0.0, box_alpha: float = 0.35, edges: bool = True,
                               text_height: float = 0.05) -> MarkerArray:
    """DELETEALL + per object a translucent CUBE (``<ns>/boxes``), a LINE_LIST outline (``<ns>/edges``)
    and a TEXT_VIEW_FACING label "phrase score" (``<ns>/labels``) above the box.

    "Above" is -y in an ``*_optical_frame`` (y points down, REP 103) and +z in body frames.
    ``lifetime_s`` 0 means forever (until the next DELETEALL).
    """
    out = MarkerArray()
    clear = Marker(header=header, ns=ns, id=0, action=Marker.DELETEALL)
    out.markers.append(clear)
    optical = str(getattr(header, "frame_id", "")).endswith("optical_frame")
    life = _duration(max(0.0, float(lifetime_s)))
    for i, (phrase, pose, size, score) in enumerate(_iter_objects(objects)):
        cube = Marker(header=header, ns=f"{ns}/boxes", id=i, type=Marker.CUBE, action=Marker.ADD,
                      pose=pose, lifetime=life, color=_color(phrase, box_alpha))
        cube.scale.x, cube.scale.y, cube.scale.z = size
        out.markers.append(cube)
        if edges:
            line = Marker(header=header, ns=f"{ns}/edges", id=i, type=Marker.LINE_LIST,
                          action=Marker.ADD, pose=pose, lifetime=life, color=_color(phrase, 1.0))
            line.scale.x = max(0.002, min(size) * 0.03)
            corners = [Point(x=(1 if c & 1 else -1) * size[0] / 2, y=(1 if c & 2 else -1) * size[1] / 2,
                             z=(1 if c & 4 else -1) * size[2] / 2) for c in range(8)]
            line.points = [corners[k] for e in _EDGES for k in e]
            out.markers.append(line)
        text = Marker(header=header, ns=f"{ns}/labels", id=i, type=Marker.TEXT_VIEW_FACING,
                      action=Marker.ADD, lifetime=life, text=phrase if score is None
                      else f"{phrase} {float(score):.2f}", color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0))
        text.scale.z = float(text_height)
        text.pose.position.x, text.pose.position.y, text.pose.position.z = (
            pose.position.x, pose.position.y, pose.position.z)
        if optical:  # above = -y (label offset in the frame, ignoring the box's rotation)
            text.pose.position.y -= size[1] / 2 + text_height
        else:
            text.pose.position.z += size[2] / 2 + text_height
        text.pose.orientation.w = 1.0
        out.markers.append(text)
    return out
