"""Engine results → our ROS messages. Every header is the source image header (stamp + optical frame)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, Vector3
from std_msgs.msg import Header

from groma_ros.engine.types import Answer, BoxXYXY, GroundedItem, Region, Status, Task
from groma_ros.msg import (
    BoundingBox2D,
    BoundingBox3D,
    GroundedAnswer,
    GroundedDetection,
    GroundedDetection3D,
    GroundedDetection3DArray,
    GroundedDetectionArray,
    ObjectHypothesisWithPose,
)

DETECT_CLASS_ID = "object"  # class-agnostic proposals carry no phrase
UNKNOWN_POSE_COVARIANCE = [-1.0 if i % 7 == 0 else 0.0 for i in range(36)]  # "pose not set"


def box_to_msg(box: BoxXYXY) -> BoundingBox2D:
    x1, y1, x2, y2 = (float(v) for v in box)
    msg = BoundingBox2D(size_x=x2 - x1, size_y=y2 - y1)
    msg.center.position.x = (x1 + x2) / 2.0
    msg.center.position.y = (y1 + y2) / 2.0
    return msg


def msg_to_box(msg: BoundingBox2D) -> BoxXYXY:
    cx, cy = msg.center.position.x, msg.center.position.y
    return (cx - msg.size_x / 2.0, cy - msg.size_y / 2.0, cx + msg.size_x / 2.0, cy + msg.size_y / 2.0)


def _hypothesis(class_id: str, score: float, point: Sequence[float] | None) -> ObjectHypothesisWithPose:
    result = ObjectHypothesisWithPose()
    result.hypothesis.class_id = class_id
    result.hypothesis.score = float(score)
    if point is None:
        result.pose = PoseWithCovariance(covariance=UNKNOWN_POSE_COVARIANCE)
    else:
        result.pose.pose.position = Point(x=float(point[0]), y=float(point[1]), z=float(point[2]))
        result.pose.pose.orientation = Quaternion(w=1.0)
    return result


def grounding_scores(item: GroundedItem) -> tuple[float, ...]:
    """Per region of ``item``: the probability the LLM gave its ``<rN>`` token (1.0 where no LLM chose it)."""
    if len(item.grounding) == len(item.regions):
        return tuple(item.grounding)
    return (1.0,) * len(item.regions)


def detection_pairs(answer: Answer) -> list[tuple[str, int, int, Region]]:
    """(phrase, start, end, region) for every grounded region of the answer, in answer order.

    DETECT answers are class-agnostic: their phrase is empty (``class_id`` becomes ``"object"``).
    """
    detect = answer.task == Task.DETECT
    return [("" if detect else item.phrase, item.start, item.end, region)
            for item in answer.items for region in item.regions]


def detections_msg(answer: Answer, header: Header, query_id: str,
                   points: Sequence[Sequence[float] | None] | None = None, camera: str = "") -> GroundedDetectionArray:
    """The 2-D detections of an answer; ``points`` (optional) are 3-D centroids in the header frame."""
    array = GroundedDetectionArray(header=header, query_id=query_id)
    array.image_width, array.image_height = (int(v) for v in answer.image_size)
    grounding = [g for item in answer.items for g in grounding_scores(item)]
    for n, (phrase, start, end, region) in enumerate(detection_pairs(answer)):
        point = points[n] if points is not None else None
        det = GroundedDetection(
            header=header, camera=camera, id=f"{query_id}/{n}", bbox=box_to_msg(region.box), phrase=phrase,
            phrase_start=int(start), phrase_end=int(end), region_index=int(region.index),
            proposal_score=float(region.score), from_user_region=bool(region.from_user),
            grounding_score=float(grounding[n]))
        det.results.append(_hypothesis(phrase or DETECT_CLASS_ID, region.score, point))
        array.detections.append(det)
    return array


def answer_msg(answer: Answer, header: Header, query_id: str, model_id: str,
               points: Sequence[Sequence[float] | None] | None = None,
               status: Status = Status.OK, error: str = "", camera: str = "") -> GroundedAnswer:
    """A full GroundedAnswer (status OK, or CANCELED with the text generated so far)."""
    t = answer.timings
    return GroundedAnswer(
        header=header, camera=camera, query_id=query_id, query=answer.query, task=int(answer.task),
        status=int(status), error=error, text=answer.text, raw_text=answer.raw_text,
        detections=detections_msg(answer, header, query_id, points, camera), model_id=model_id,
        preprocess_ms=float(t.preprocess_ms), encode_ms=float(t.encode_ms), generate_ms=float(t.generate_ms),
        total_ms=float(t.total_ms),
        prompt_tokens=int(answer.prompt_tokens), completion_tokens=int(answer.completion_tokens),
        conversation_id=answer.conversation_id, turn=int(answer.turn))


def error_answer_msg(query_id: str, query: str, task: int, status: Status, error: str, model_id: str = "",
                     header: Header | None = None, camera: str = "", conversation_id: str = "") -> GroundedAnswer:
    """An answer that carries only a status and a reason (no image used, bad request, busy, ...)."""
    header = header if header is not None else Header()
    return GroundedAnswer(header=header, camera=camera, query_id=query_id, query=query, task=int(task),
                          status=int(status), error=error, model_id=model_id, conversation_id=conversation_id,
                          detections=GroundedDetectionArray(header=header, query_id=query_id))


def detections_3d_msg(header: Header, query_id: str, source_frame_id: str,
                      lifted: Sequence[tuple[int, str, float, Sequence[float], Sequence[float], int]]
                      ) -> GroundedDetection3DArray:
    """3-D detections: ``lifted`` = (detection number, phrase, score, centre xyz, size xyz, valid points)."""
    array = GroundedDetection3DArray(header=header, query_id=query_id)
    for n, phrase, score, centre, size, valid in lifted:
        bbox = BoundingBox3D(center=Pose(position=Point(x=float(centre[0]), y=float(centre[1]),
                                                         z=float(centre[2])),
                                          orientation=Quaternion(w=1.0)),
                             size=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])))
        det = GroundedDetection3D(header=header, id=f"{query_id}/{n}", bbox=bbox, phrase=phrase,
                                  valid_depth_points=int(valid), source_frame_id=source_frame_id)
        det.results.append(_hypothesis(phrase or DETECT_CLASS_ID, score, centre))
        array.detections.append(det)
    return array


def optional_vision_msgs() -> Any:
    """``vision_msgs.msg`` when installed (an optional run-time dependency), else None."""
    try:
        import vision_msgs.msg as vision
    except ImportError:
        return None
    return vision


def to_vision_msgs(answer: GroundedAnswer) -> Any:
    """Our detections as ``vision_msgs/Detection2DArray`` for planners written against vision_msgs."""
    vision = optional_vision_msgs()
    out = vision.Detection2DArray(header=answer.header)
    for det in answer.detections.detections:
        v = vision.Detection2D(header=det.header, id=det.id)
        v.bbox.center.position.x, v.bbox.center.position.y = det.bbox.center.position.x, det.bbox.center.position.y
        v.bbox.size_x, v.bbox.size_y = det.bbox.size_x, det.bbox.size_y
        for r in det.results:
            h = vision.ObjectHypothesisWithPose()
            h.hypothesis.class_id, h.hypothesis.score = r.hypothesis.class_id, r.hypothesis.score
            h.pose = r.pose
            v.results.append(h)
        out.detections.append(v)
    return out
