"""Our generated interfaces travel over real DDS between processes (foundation smoke tests)."""

from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer, GroundedDetection  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from tests.support.ros_processes import log_of, start_python, stop  # noqa: E402

pytestmark = pytest.mark.ros

PUBLISHER = """
import sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
from groma_ros.msg import GroundedAnswer, GroundedDetection
rclpy.init()
node = rclpy.create_node("answer_publisher")
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
pub = node.create_publisher(GroundedAnswer, "answers", qos)
msg = GroundedAnswer(query_id="q-7", query="pick up the red mug", task=GroundedAnswer.REFER,
                     status=GroundedAnswer.OK, text="the red mug", raw_text="<roi><r3></roi>", model_id="tiny")
msg.header.frame_id = "camera_color_optical_frame"
msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000000, 123
det = GroundedDetection(id="q-7/0", phrase="the red mug", phrase_start=0, phrase_end=11, region_index=3,
                        proposal_score=0.87, from_user_region=False)
det.bbox.center.position.x, det.bbox.center.position.y = 320.5, 240.25
det.bbox.size_x, det.bbox.size_y = 64.0, 48.0
msg.detections.detections.append(det)
msg.detections.image_width, msg.detections.image_height = 640, 480
pub.publish(msg)
print("published", flush=True)
end = time.time() + float(sys.argv[1])
while rclpy.ok() and time.time() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
rclpy.shutdown()
"""

ACTION_SERVER = """
import time, rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from groma_ros.action import Ground
from groma_ros.msg import GroundedAnswer

def execute(goal_handle):
    words = goal_handle.request.query.split()
    for i in range(len(words)):
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
            return Ground.Result(answer=GroundedAnswer(query=goal_handle.request.query, status=GroundedAnswer.CANCELED))
        fb = Ground.Feedback(stage=Ground.Feedback.STAGE_GENERATING, partial_text=" ".join(words[: i + 1]),
                             elapsed_s=0.05 * (i + 1))
        goal_handle.publish_feedback(fb)
        time.sleep(0.3)
    goal_handle.succeed()
    return Ground.Result(answer=GroundedAnswer(query=goal_handle.request.query, text=goal_handle.request.query.upper(),
                                               status=GroundedAnswer.OK, task=goal_handle.request.task))

rclpy.init()
node = rclpy.create_node("ground_server")
group = ReentrantCallbackGroup()
server = ActionServer(node, Ground, "ground", execute_callback=execute, callback_group=group,
                      goal_callback=lambda g: GoalResponse.ACCEPT, cancel_callback=lambda g: CancelResponse.ACCEPT)
executor = MultiThreadedExecutor(num_threads=4)
executor.add_node(node)
print("serving", flush=True)
try:
    executor.spin()
except KeyboardInterrupt:
    pass
"""


@pytest.fixture
def ros_node():
    rclpy.init()
    node = Node("test_client")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def spin_until(node: Node, predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
        if predicate():
            return True
    return False


def test_grounded_answer_crosses_processes(ros_node, tmp_path):
    proc = start_python(PUBLISHER, tmp_path, "publisher", "30")
    received: list[GroundedAnswer] = []
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    ros_node.create_subscription(GroundedAnswer, "answers", received.append, qos)
    try:
        assert spin_until(ros_node, lambda: received, 25), log_of(tmp_path, "publisher")
    finally:
        stop(proc)
    msg = received[0]
    assert (msg.query_id, msg.query, msg.task, msg.status) == ("q-7", "pick up the red mug", 1, 0)
    assert msg.header.frame_id == "camera_color_optical_frame"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1700000000, 123)
    det = msg.detections.detections[0]
    assert isinstance(det, GroundedDetection)
    assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.size_x) == (320.5, 240.25, 64.0)
    assert (det.phrase, det.phrase_start, det.phrase_end, det.region_index) == ("the red mug", 0, 11, 3)
    assert abs(det.proposal_score - 0.87) < 1e-6
    assert (msg.detections.image_width, msg.detections.image_height) == (640, 480)


def send_goal(node: Node, client: ActionClient, goal, feedback_callback=None, tries: int = 3):
    """The goal handle; sends again when no response came within 5 s. Why: ``wait_for_server`` only says our
    request reached the server; right after start-up the server may not yet have matched our *reply* reader, so
    DDS drops the response (CI saw it once). This server's goals are cheap and independent, so a resend is safe."""
    for _ in range(tries):
        send = client.send_goal_async(goal, feedback_callback=feedback_callback)
        if spin_until(node, send.done, 5):
            return send.result()
    raise AssertionError(f"no goal response after {tries} tries")


def test_ground_action_feedback_result_and_cancel(ros_node, tmp_path):
    proc = start_python(ACTION_SERVER, tmp_path, "server")
    client = ActionClient(ros_node, Ground, "ground")
    try:
        assert client.wait_for_server(timeout_sec=25), log_of(tmp_path, "server")

        feedback: list[Ground.Feedback] = []
        goal = Ground.Goal(query="where is the red mug", task=Ground.Goal().task)
        handle = send_goal(ros_node, client, goal, lambda f: feedback.append(f.feedback))
        assert handle.accepted
        result_future = handle.get_result_async()
        assert spin_until(ros_node, result_future.done, 20)
        result = result_future.result().result
        assert result.answer.status == result.answer.OK
        assert result.answer.text == "WHERE IS THE RED MUG"
        assert [f.partial_text for f in feedback][-1] == "where is the red mug"
        assert all(f.stage == Ground.Feedback.STAGE_GENERATING for f in feedback)

        long_goal = Ground.Goal(query=" ".join(["word"] * 40))
        handle = send_goal(ros_node, client, long_goal)
        time.sleep(0.5)
        cancel = handle.cancel_goal_async()
        assert spin_until(ros_node, cancel.done, 10)
        assert len(cancel.result().goals_canceling) == 1
        result_future = handle.get_result_async()
        assert spin_until(ros_node, result_future.done, 10)
        assert result_future.result().result.answer.status == GroundedAnswer.CANCELED
    finally:
        client.destroy()
        stop(proc)
