"""The rclpy floor under the Groma node's round trip: a node with no model that answers ``~/query`` at once.

Same topics, message types, QoS and executor as ``groma_ros.ros.node``; the answer is a ``GroundedAnswer`` with
one detection (a REC answer's shape). ``benchmarks/ros_latency.py`` runs it in its own process beside the real
node, so the overhead the Groma node adds can be split into what any rclpy node pays for two DDS hops and what
is ours. ``--worker`` answers from a second thread, as the Groma node's inference worker does.
``--work-ms X`` (implies ``--worker``) first computes for X ms on that thread (torch matrix products, which
release the GIL as the engine's do) and reports that time as the answer's ``total_ms``: the floor for an answer
that comes X ms after its query, which is not the instant echo's (an idle machine wakes slower after a wait).

    python -m benchmarks.echo_node [--worker] [--work-ms 6.5] --ros-args -r __node:=echo
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time

import rclpy
from groma_ros.msg import BoundingBox2D, GroundedAnswer, GroundedDetection, GroundedDetectionArray, Pose2D
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.utilities import remove_ros_args
from std_msgs.msg import Header, String

from groma_ros.ros.node import ANSWER_QOS, INTAKE_QOS


def echo_answer(query: str) -> GroundedAnswer:
    """An OK answer with one detection, about the size of the node's REC answer."""
    header = Header(frame_id="cam_optical_frame")
    box = BoundingBox2D(center=Pose2D(), size_x=40.0, size_y=30.0)
    det = GroundedDetection(header=header, id="echo/0", phrase=query, bbox=box, proposal_score=0.9)
    return GroundedAnswer(header=header, query_id="echo", query=query, text=query, raw_text=query,
                          detections=GroundedDetectionArray(header=header, query_id="echo", detections=[det]))


def busy_torch(ms: float) -> float:
    """Matrix products (the embedded model's width) for ``ms`` milliseconds on one thread; the time spent, in ms."""
    import torch

    torch.set_num_threads(1)
    x, w = torch.randn(160, 192), torch.randn(192, 192) / 14.0
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1000.0 < ms:
        x = torch.tanh(x @ w)
    return (time.perf_counter() - start) * 1000.0


class EchoNode(Node):
    def __init__(self, use_worker: bool, work_ms: float = 0.0) -> None:
        super().__init__("echo")
        self._work_ms = work_ms
        if work_ms > 0:
            busy_torch(1.0)  # import and warm torch before the first query
        self._answers = self.create_publisher(GroundedAnswer, "~/answer", ANSWER_QOS)
        self._jobs: queue.SimpleQueue[str] = queue.SimpleQueue()
        if use_worker or work_ms > 0:
            threading.Thread(target=self._work, daemon=True).start()
            self.create_subscription(String, "~/query", lambda msg: self._jobs.put(msg.data), INTAKE_QOS)
        else:
            self.create_subscription(String, "~/query", self._answer, INTAKE_QOS)

    def _answer(self, msg: String) -> None:
        self._answers.publish(echo_answer(msg.data))

    def _work(self) -> None:
        while True:
            query = self._jobs.get()
            answer = echo_answer(query)
            if self._work_ms > 0:
                answer.total_ms = busy_torch(self._work_ms)
            self._answers.publish(answer)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help="answer from a second thread")
    ap.add_argument("--work-ms", type=float, default=0.0, help="compute this long on that thread first")
    args = ap.parse_args(remove_ros_args(argv))
    rclpy.init(args=argv)
    node = EchoNode(use_worker=args.worker, work_ms=args.work_ms)
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
