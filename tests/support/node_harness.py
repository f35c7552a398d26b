"""Start the Groma node in its own process and drive it from a peer: shared by reliability tests and benchmarks.

The node runs exactly as users start it (``python -m groma_ros.ros.node --ros-args --params-file ...``), so
everything crosses real DDS. The peer is the robot around it: camera, speech front-end, planner. Scripts
must call ``ros_env()`` before ``rclpy.init()`` (tests get it from ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REMAPS = ("-r", "image:=/cam/image_raw", "-r", "image/compressed:=/cam/image_raw/compressed",
          "-r", "camera_info:=/cam/camera_info", "-r", "depth/image:=/cam/depth",
          "-r", "depth/camera_info:=/cam/depth_info")


def ros_env(domain_id: int | None = None) -> None:
    """Keep DDS on loopback in a private domain and the model hub offline (every script must)."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else 100 + os.getpid() % 100)
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def benchmark_model_dir(workdir: Path, endless: bool = True) -> tuple[Path, str]:
    """The embedded default model when installed, else a tiny random one; returns (dir, label)."""
    from groma_ros.engine.loading import DEFAULT_MODEL_DIR, DEFAULT_MODEL_FILES
    from tests.support.models import make_tiny_model_dir

    if all((DEFAULT_MODEL_DIR / f).is_file() for f in DEFAULT_MODEL_FILES):
        return DEFAULT_MODEL_DIR, "embedded default model"
    return make_tiny_model_dir(workdir / "tiny_model", endless=endless), "tiny random model (tiny_config)"


PROBE_TEXT = "peer round trip probe"  # ~/query texts of Peer.wait_answering


def start_node(model_dir: Path, log_path: Path, *extra: str, node_name: str = "groma") -> subprocess.Popen:
    """``groma_node --ros-args --params-file config/groma.yaml -p model.path:=... -r image:=/cam/image_raw ...``"""
    args = [sys.executable, "-m", "groma_ros.ros.node", "--ros-args",
            "--params-file", str(ROOT / "config" / "groma.yaml"),
            "-p", f"model.path:={model_dir}", "-p", "model.num_threads:=1", *REMAPS,
            "-r", f"__node:={node_name}", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(args, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115


def stop_node(proc: subprocess.Popen) -> int | None:
    """SIGINT (as Ctrl-C), then kill if it hangs; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def escaped_exceptions(log_text: str) -> list[str]:
    """Lines of a node log that show an exception escaping a callback (rclpy prints these)."""
    return [line for line in log_text.splitlines() if "Exception in callback" in line or "Traceback" in line]


def scene_image(w: int = 320, h: int = 240, seed: int = 0) -> np.ndarray:
    """A small non-square scene with two coloured boxes (shifted by ``seed`` so frames differ)."""
    img = np.full((h, w, 3), 30, np.uint8)
    dx = (seed * 7) % max(1, w // 4)
    img[h // 4 : h // 4 + h // 3, w // 8 + dx : w // 8 + dx + w // 4] = (220, 30, 30)
    img[h // 2 : h // 2 + h // 3, w // 2 : w // 2 + w // 3] = (30, 30, 220)
    return img


class Peer:
    """Camera + query publisher + answer listener + action/lifecycle clients around one node.

    ``received`` holds ``(perf_counter at arrival, GroundedAnswer)`` for latency measurements; the arrival is
    stamped on the serialized message, so it excludes rclpy's conversion to Python objects (~0.5 ms for a
    detection-laden answer, the consumer's cost: a C++ planner pays a fraction of it).
    """

    def __init__(self, name: str, node_name: str = "groma", keep_all: bool = False) -> None:
        """``keep_all``: the query writer and answer reader keep every sample (KEEP_ALL), as a client whose
        bursts outgrow any fixed depth must (the README's guarantee); else they keep the last 1000."""
        import rclpy
        import rclpy.executors
        from groma_ros.action import Ground
        from groma_ros.msg import GroundedAnswer
        from lifecycle_msgs.srv import ChangeState, GetState
        from rclpy.action import ActionClient
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from std_msgs.msg import String

        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.rclpy = rclpy
        self.node = n = rclpy.create_node(name)
        self.base = f"/{node_name}"
        self.camera = n.create_publisher(Image, "/cam/image_raw", reliable)
        self.camera_best_effort = n.create_publisher(Image, "/cam/image_raw", qos_profile_sensor_data)
        self.compressed = n.create_publisher(CompressedImage, "/cam/image_raw/compressed", reliable)
        self.depth = n.create_publisher(Image, "/cam/depth", reliable)
        self.depth_info = n.create_publisher(CameraInfo, "/cam/depth_info", reliable)
        deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                          history=HistoryPolicy.KEEP_ALL if keep_all else HistoryPolicy.KEEP_LAST)
        self.query = n.create_publisher(String, f"{self.base}/query", deep)
        self.received: list[tuple[float, Any]] = []
        from rclpy.serialization import deserialize_message

        self.probe_answers: list[Any] = []  # answers to ``wait_answering``'s probes, kept out of ``received``

        def on_answer(data: bytes) -> None:  # stamped on arrival, before the Python conversion of the message
            arrived = time.perf_counter()
            answer = deserialize_message(data, GroundedAnswer)
            if answer.query.startswith(PROBE_TEXT):
                self.probe_answers.append(answer)
            else:
                self.received.append((arrived, answer))

        self.answer_subscription = n.create_subscription(GroundedAnswer, f"{self.base}/answer", on_answer, deep,
                                                         raw=True)
        self.action = ActionClient(n, Ground, f"{self.base}/ground")
        self.change_state = n.create_client(ChangeState, f"{self.base}/change_state")
        self.get_state = n.create_client(GetState, f"{self.base}/get_state")
        # one executor for the peer's life: ``rclpy.spin_once(node)`` adds and removes the node on the global
        # executor every call, which costs more than the DDS round trip being measured
        self.executor = rclpy.executors.SingleThreadedExecutor()
        self.executor.add_node(n)

    @property
    def answers(self) -> list[Any]:
        return [m for _, m in self.received]

    def answers_to(self, texts: list[str]) -> dict[str, list[Any]]:
        """Every answer received so far for each query text (exactly-once checks count them)."""
        by_text: dict[str, list[Any]] = {t: [] for t in texts}
        for answer in self.answers:
            if answer.query in by_text:
                by_text[answer.query].append(answer)
        return by_text

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)
            if predicate():
                return True
        return False

    def spin_once(self, timeout_sec: float = 0.0) -> None:
        self.executor.spin_once(timeout_sec=timeout_sec)

    def wait_future(self, future: Any, timeout: float) -> bool:
        return self.spin_until(future.done, timeout)

    def pause(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def matched(self) -> bool:
        """Our query publisher and answer subscription are matched with the node's endpoints (not just seen in
        the graph: a reliable message sent before the match is lost)."""
        return self.query.get_subscription_count() > 0 and self.answer_subscription.get_publisher_count() > 0

    def wait_answering(self, timeout: float = 30.0) -> bool:
        """Until a query published on ~/query comes back on ~/answer. ``matched`` proves only our side of each
        match: the node's answer writer may not have matched our reader yet and would drop what it publishes.
        A round trip proves both directions. The probes' answers (also late ones) go to ``probe_answers``, never
        to ``received``, so they cannot be mistaken for the answer to a later query."""
        end, attempt = time.monotonic() + timeout, 0
        from std_msgs.msg import String

        while time.monotonic() < end:
            if self.matched():
                self.query.publish(String(data=f"{PROBE_TEXT} {attempt}"))
                attempt += 1
            if self.spin_until(lambda: bool(self.probe_answers), 1.0):
                return True
        return False

    def wait_active(self, timeout: float = 90.0, compressed: bool = False) -> bool:
        image = "/cam/image_raw/compressed" if compressed else "/cam/image_raw"
        return self.spin_until(lambda: self.matched() and self.node.count_subscribers(image) > 0, timeout)

    def stamp_now(self, offset_s: float = 0.0) -> Any:
        from builtin_interfaces.msg import Time

        ns = self.node.get_clock().now().nanoseconds + int(offset_s * 1e9)
        return Time(sec=ns // 10**9, nanosec=ns % 10**9)

    def image_msg(self, image: np.ndarray | None = None, frame_id: str = "cam_optical_frame",
                  stamp: Any = None) -> Any:
        from std_msgs.msg import Header

        from groma_ros.ros.image_codec import cv2_to_imgmsg

        image = scene_image() if image is None else image
        return cv2_to_imgmsg(image, "rgb8", Header(stamp=self.stamp_now() if stamp is None else stamp,
                                                   frame_id=frame_id))

    def publish_frame(self, image: np.ndarray | None = None, settle_s: float = 0.05, *, stamp: Any = None,
                      best_effort: bool = False, frame_id: str = "cam_optical_frame") -> Any:
        """Publish one rgb8 frame (stamped now by default); spin ``settle_s`` so it arrives before a query."""
        msg = self.image_msg(image, frame_id, stamp)
        (self.camera_best_effort if best_effort else self.camera).publish(msg)
        if settle_s:
            self.pause(settle_s)
        return msg.header

    def publish_until_seen(self, image: np.ndarray | None = None, tries: int = 30, **kwargs: Any) -> Any:
        """Publish a frame until the node answers a DETECT probe on it (a real camera streams; the first frames
        after discovery, or under load, may be lost on the best-effort subscription); returns its header."""
        from groma_ros.action import Ground
        from groma_ros.msg import GroundedAnswer

        for _ in range(tries):
            header = self.publish_frame(image, settle_s=0.1, **kwargs)
            probe = self.result_of(self.send_goal(Ground.Goal(task=GroundedAnswer.DETECT)))
            if probe.header == header:
                return header
        raise AssertionError(f"no frame reached the node in {tries} tries")

    def ask(self, text: str, timeout: float = 60.0) -> Any:
        """Publish on ~/query and return the first answer to this text (the caller checks it is the only one)."""
        from std_msgs.msg import String

        before = len(self.received)
        self.query.publish(String(data=text))

        def answer() -> Any:  # the first answer to this text (answers to goals arrive on ~/answer too)
            return next((a for _, a in self.received[before:] if a.query == text), None)

        assert self.spin_until(lambda: answer() is not None, timeout), f"no answer to {text!r}"
        return answer()

    def send_goal(self, goal: Any, feedback: list | None = None) -> Any:
        assert self.action.wait_for_server(timeout_sec=20)
        future = self.action.send_goal_async(
            goal, feedback_callback=(lambda f: feedback.append(f.feedback)) if feedback is not None else None)
        assert self.spin_until(future.done, 20)
        handle = future.result()
        assert handle.accepted
        return handle

    def result_of(self, handle: Any, timeout: float = 60.0) -> Any:
        future = handle.get_result_async()
        assert self.spin_until(future.done, timeout)
        return future.result().result.answer

    def lifecycle(self, transition: int, timeout: float = 60.0) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        assert self.change_state.wait_for_service(timeout_sec=10)
        future = self.change_state.call_async(ChangeState.Request(transition=Transition(id=transition)))
        assert self.spin_until(future.done, timeout)
        return future.result().success

    def state(self) -> int:
        """The node's lifecycle state id (``lifecycle_msgs/State``)."""
        from lifecycle_msgs.srv import GetState

        assert self.get_state.wait_for_service(timeout_sec=10)
        # A reply can be lost while the server has not yet matched this client's reply reader (DDS discovery
        # race right after start-up); the query is idempotent, so ask again.
        for _ in range(4):
            future = self.get_state.call_async(GetState.Request())
            if self.spin_until(future.done, 5):
                return future.result().current_state.id
            self.get_state.remove_pending_request(future)
        raise AssertionError("no reply from get_state after 4 tries")

    def set_parameters(self, values: dict[str, Any], timeout: float = 10.0) -> list[Any]:
        """``ros2 param set`` for several values at once; the node's ``SetParametersResult`` per value."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        if not hasattr(self, "_set_parameters"):
            self._set_parameters = self.node.create_client(SetParameters, f"{self.base}/set_parameters")
        assert self._set_parameters.wait_for_service(timeout_sec=timeout)
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        future = self._set_parameters.call_async(request)
        assert self.spin_until(future.done, timeout), "no reply from set_parameters"
        return list(future.result().results)

    def image_publisher(self, topic: str, best_effort: bool = False) -> Any:
        """A camera publisher on ``topic`` (reliable like most drivers, or best effort)."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        qos = qos_profile_sensor_data if best_effort else QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        return self.node.create_publisher(Image, topic, qos)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
