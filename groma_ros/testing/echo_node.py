"""The rclpy floor under the Groma node's round trip: a node with no model that answers ``~/query`` at once.

Same topics, message types, QoS and executor as ``groma_ros.ros.node``; the answer is a ``GroundedAnswer`` with
one detection (a REC answer's shape). ``benchmarks/ros_latency.py`` runs it in its own process beside the real
node, so the overhead the Groma node adds can be split into what any rclpy node pays for two DDS hops and what
is ours. ``--worker`` answers from a second thread, as the Groma node's inference worker does.

    python -m groma_ros.testing.echo_node [--worker] --ros-args -r __node:=echo
"""

from __future__ import annotations

import queue
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Header, String

from groma_ros.msg import BoundingBox2D, GroundedAnswer, GroundedDetection, GroundedDetectionArray, Pose2D
from groma_ros.ros.node import RESULTS_QOS


def echo_answer(query: str) -> GroundedAnswer:
    """An OK answer with one detection, about the size of the node's REC answer."""
    header = Header(frame_id="cam_optical_frame")
    box = BoundingBox2D(center=Pose2D(), size_x=40.0, size_y=30.0)
    det = GroundedDetection(header=header, id="echo/0", phrase=query, bbox=box, proposal_score=0.9)
    return GroundedAnswer(header=header, query_id="echo", query=query, text=query, raw_text=query,
                          detections=GroundedDetectionArray(header=header, query_id="echo", detections=[det]))


class EchoNode(Node):
    def __init__(self, use_worker: bool) -> None:
        super().__init__("echo")
        self._answers = self.create_publisher(GroundedAnswer, "~/answer", RESULTS_QOS)
        self._jobs: queue.SimpleQueue[str] = queue.SimpleQueue()
        if use_worker:
            threading.Thread(target=self._work, daemon=True).start()
        self.create_subscription(String, "~/query", self._jobs.put if use_worker else self._answer, RESULTS_QOS)

    def _answer(self, msg: String) -> None:
        self._answers.publish(echo_answer(msg.data))

    def _work(self) -> None:
        while True:
            self._answer(self._jobs.get())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rclpy.init(args=argv)
    node = EchoNode(use_worker="--worker" in argv)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
