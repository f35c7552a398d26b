"""One node, several cameras, one model, any camera clock — over real DDS with the node in its own process.

The two-camera node reads ``front`` raw and ``wrist`` compressed with depth (per-camera overrides), each
remapped to a driver-like topic, exactly as a robot's params YAML would configure it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from builtin_interfaces.msg import Time  # noqa: E402
from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer, GroundedDetection3DArray  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402

from groma_ros.ros.image_codec import cv2_to_compressed_imgmsg, cv2_to_imgmsg  # noqa: E402
from tests.support.models import make_tiny_model_dir  # noqa: E402
from tests.support.node_harness import Peer, escaped_exceptions, scene_image, start_node, stop_node  # noqa: E402

pytestmark = pytest.mark.ros
DEEP = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
NAME = "groma_cams"
FRONT = (320, 240)
WRIST = (160, 120)
CAMERA_ARGS = ("-p", "cameras:=[front, wrist]", "-p", "wrist.image_transport:=compressed",
               "-p", "wrist.use_depth:=true",
               "-r", "front/image:=/robot/front/image_raw",
               "-r", "wrist/image/compressed:=/robot/wrist/image_raw/compressed",
               "-r", "wrist/camera_info:=/robot/wrist/camera_info",
               "-r", "wrist/depth/image:=/robot/wrist/depth", "-r", "wrist/depth/camera_info:=/robot/wrist/depth_info")


class RobotCameras(Peer):
    """Two camera drivers (front raw, wrist compressed + depth), a speech front-end per camera, a planner."""

    def __init__(self, name: str, node_name: str = NAME) -> None:
        super().__init__(name, node_name)
        n = self.node
        self.front = n.create_publisher(Image, "/robot/front/image_raw", DEEP)
        self.wrist = n.create_publisher(CompressedImage, "/robot/wrist/image_raw/compressed", DEEP)
        self.wrist_depth = n.create_publisher(Image, "/robot/wrist/depth", DEEP)
        self.wrist_info = n.create_publisher(CameraInfo, "/robot/wrist/depth_info", DEEP)
        self.camera_query = {cam: n.create_publisher(String, f"{self.base}/{cam}/query", DEEP)
                             for cam in ("front", "wrist")}
        self.lifted: list[GroundedDetection3DArray] = []
        n.create_subscription(GroundedDetection3DArray, f"{self.base}/detections_3d", self.lifted.append, DEEP)

    _wrist_ticks = 0

    def front_stamp(self) -> Time:
        """The front camera's clock runs an hour ahead of this machine's."""
        return self.stamp_now(3600.0)

    def wrist_stamp(self) -> Time:
        """The wrist camera counts seconds from 1001 (a clock started in 1970), one per frame."""
        self._wrist_ticks += 1
        return Time(sec=1000 + self._wrist_ticks, nanosec=0)

    def ready(self) -> bool:
        return (self.matched() and self.node.count_subscribers("/robot/front/image_raw") > 0
                and self.node.count_subscribers("/robot/wrist/image_raw/compressed") > 0
                and all(p.get_subscription_count() > 0 for p in self.camera_query.values()))

    def show(self, camera: str, seed: int, stamp: Time) -> Header:
        header = Header(stamp=stamp, frame_id=f"{camera}_optical_frame")
        if camera == "front":
            self.front.publish(cv2_to_imgmsg(scene_image(*FRONT, seed=seed), "rgb8", header))
        else:
            bgr = np.ascontiguousarray(scene_image(*WRIST, seed=seed)[:, :, ::-1])
            self.wrist.publish(cv2_to_compressed_imgmsg(bgr, "jpeg", header=header))
        return header

    def show_until_seen(self, camera: str, seed: int, stamp: Callable[[], Time], tries: int = 20) -> Header:
        """Publish frames (as a streaming camera would) until the node answers a DETECT probe on the latest one:
        best-effort frames sent right after discovery may be lost, like a real camera's first frames."""
        for _ in range(tries):
            header = self.show(camera, seed, stamp())
            self.pause(0.1)
            probe = self.result_of(self.send_goal(Ground.Goal(task=GroundedAnswer.DETECT, camera=camera)))
            if probe.status == GroundedAnswer.OK and probe.header == header:
                return header
        raise AssertionError(f"{camera} frames never reached the node")



@pytest.fixture(scope="module")
def robot(model_dir, ros_context, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    proc = start_node(model_dir, log, *CAMERA_ARGS, "-p", "queue_size:=16", node_name=NAME)
    peer = RobotCameras("two_camera_robot")
    try:
        assert peer.spin_until(peer.ready, 60), log.read_text()
        yield peer, proc, log
    finally:
        stop_node(proc)
        peer.close()
    assert not escaped_exceptions(log.read_text()), log.read_text()


def test_each_camera_answers_from_its_own_frame_in_its_own_clock(robot):
    peer, proc, log = robot
    # several frames each: the clock warning must come once per camera, not per frame
    headers = {"front": peer.show_until_seen("front", 1, peer.front_stamp),
               "wrist": peer.show_until_seen("wrist", 2, peer.wrist_stamp)}
    for _ in range(2):
        headers["front"] = peer.show_until_seen("front", 1, peer.front_stamp)
        headers["wrist"] = peer.show_until_seen("wrist", 2, peer.wrist_stamp)
    topic_queries = {"default camera query": ("front", peer.query), "front camera query": ("front",
                     peer.camera_query["front"]), "wrist camera query": ("wrist", peer.camera_query["wrist"])}
    for text, (_camera, pub) in topic_queries.items():
        pub.publish(String(data=text))
    goals = {"front goal": "front", "wrist goal": "wrist", "default goal": "", "wrist detect": "wrist"}
    handles = {text: peer.send_goal(Ground.Goal(query=text, camera=camera,
                                                task=GroundedAnswer.DETECT if "detect" in text else 0))
               for text, camera in goals.items()}
    results = {text: peer.result_of(h) for text, h in handles.items()}
    texts = list(topic_queries) + list(goals)
    assert peer.spin_until(lambda: all(peer.answers_to(texts).values()), 30)
    peer.pause(0.5)
    got = peer.answers_to(texts)
    assert {t: len(v) for t, v in got.items()} == {t: 1 for t in texts}  # exactly one answer each
    expected_camera = {t: c for t, (c, _) in topic_queries.items()} | {t: c or "front" for t, c in goals.items()}
    for text, [answer] in got.items():
        camera = expected_camera[text]
        assert answer.status == GroundedAnswer.OK, (text, answer.error)
        assert answer.camera == camera and answer.header == headers[camera], text
        size = FRONT if camera == "front" else WRIST
        assert (answer.detections.image_width, answer.detections.image_height) == size, text
        assert all(d.header == headers[camera] and d.camera == camera for d in answer.detections.detections)
    assert results["wrist detect"].detections.detections  # the wrist's own (compressed) pixels were perceived
    text = log.read_text()
    assert text.count("camera 'front' stamps frames") == 1 and "ahead of this node's clock" in text
    assert text.count("camera 'wrist' stamps frames") == 1 and "behind this node's clock" in text
    assert text.count("loading model") == 1
    assert proc.poll() is None


def test_every_camera_query_answers_with_the_best_camera(robot):
    peer, _, _ = robot
    headers = {"front": peer.show_until_seen("front", 4, peer.front_stamp),
               "wrist": peer.show_until_seen("wrist", 5, peer.wrist_stamp)}

    def ask(camera: str, task: int, query: str = "") -> GroundedAnswer:
        answer = peer.result_of(peer.send_goal(Ground.Goal(query=query, task=task, camera=camera)))
        assert answer.status == GroundedAnswer.OK, answer.error
        assert answer.camera in headers and answer.header == headers[answer.camera]
        assert all(d.camera == answer.camera and d.header == answer.header for d in answer.detections.detections)
        return answer

    # DETECT scores are proposal scores: the best camera is the one whose best region scores highest
    top = {cam: max(d.proposal_score for d in ask(cam, GroundedAnswer.DETECT).detections.detections)
           for cam in headers}
    best = ask("*", GroundedAnswer.DETECT)
    assert best.camera == max(top, key=top.get), top
    assert max(d.proposal_score for d in best.detections.detections) == pytest.approx(top[best.camera])
    grounded = ask("*", GroundedAnswer.REFER, "where is the red box?")  # text, spans and boxes of one camera
    assert all(0.0 <= d.grounding_score <= 1.0 for d in grounded.detections.detections)
    unknown = peer.result_of(peer.send_goal(Ground.Goal(query="where is the red box?", camera="tail")))
    assert unknown.status == GroundedAnswer.BAD_REQUEST and "unknown camera 'tail'" in unknown.error
    assert "'front', 'wrist'" in unknown.error


def test_runtime_depth_tolerance_changes_the_pairing(robot):
    peer, _, _ = robot
    stamp = peer.wrist_stamp()
    w, h = WRIST
    header = peer.show_until_seen("wrist", 6, lambda: stamp)
    ns = stamp.nanosec + 300_000_000  # depth 0.3 s after the image: outside the default 0.1 s tolerance
    later = Time(sec=stamp.sec + ns // 10**9, nanosec=ns % 10**9)
    info = CameraInfo(header=Header(stamp=later, frame_id=header.frame_id), width=w, height=h)
    info.k = [150.0, 0.0, w / 2 - 0.5, 0.0, 150.0, h / 2 - 0.5, 0.0, 0.0, 1.0]
    info.p = [150.0, 0.0, w / 2 - 0.5, 0.0, 0.0, 150.0, h / 2 - 0.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    peer.wrist_info.publish(info)
    peer.wrist_depth.publish(cv2_to_imgmsg(np.full((h, w), 1500, np.uint16), "16UC1", info.header))
    peer.pause(0.3)

    def lift() -> tuple[GroundedAnswer, list]:
        answer = peer.result_of(peer.send_goal(Ground.Goal(task=GroundedAnswer.DETECT, camera="wrist", lift_3d=True,
                                                           image_stamp=stamp)))
        assert answer.status == GroundedAnswer.OK, answer.error
        peer.pause(0.5)
        return answer, [a for a in peer.lifted if a.query_id == answer.query_id]

    _, lifted = lift()
    assert lifted == []  # no depth frame within 0.1 s of the image
    assert all(r.successful for r in peer.set_parameters({"depth_max_stamp_diff_s": 0.5}))
    answer, lifted = lift()
    assert len(lifted) == 1 and lifted[0].header.stamp == stamp
    assert all(d.bbox.center.position.z == pytest.approx(1.5) for d in lifted[0].detections)


def test_one_model_serves_both_cameras(ros_context, tmp_path):
    """A second camera costs a frame buffer, not a second model: RSS of a two-camera node vs a one-camera node."""
    psutil = pytest.importorskip("psutil")
    fat = make_tiny_model_dir(tmp_path / "fat_model", llm_intermediate_size=40_000)  # ~125 MB of weights
    one = start_node(fat, tmp_path / "one.log", "-p", "max_image_age_s:=0.0", node_name="groma_one")
    two = start_node(fat, tmp_path / "two.log", *CAMERA_ARGS, "-p", "max_image_age_s:=0.0", node_name="groma_two")
    single, double = Peer("one_camera_robot", "groma_one"), RobotCameras("two_camera_peer", "groma_two")
    try:
        assert single.wait_active(), (tmp_path / "one.log").read_text()
        assert double.spin_until(double.ready, 60), (tmp_path / "two.log").read_text()
        answer = None
        while answer is None or answer.status == GroundedAnswer.NO_IMAGE:
            single.publish_frame(scene_image(*FRONT), settle_s=0.2)
            answer = single.ask("where is the red box?")
        assert answer.status == GroundedAnswer.OK
        double.show_until_seen("front", 1, double.front_stamp)
        double.show_until_seen("wrist", 2, double.wrist_stamp)
        for camera in ("front", "wrist"):
            answer = double.result_of(double.send_goal(Ground.Goal(query="where is the red box?", camera=camera)))
            assert answer.status == GroundedAnswer.OK and answer.camera == camera
        rss_one = psutil.Process(one.pid).memory_info().rss
        rss_two = psutil.Process(two.pid).memory_info().rss
        print(f"\nRSS one camera {rss_one / 2**20:.0f} MB, two cameras {rss_two / 2**20:.0f} MB "
              f"({rss_two / rss_one - 1:+.1%})")
        assert rss_two <= 1.05 * rss_one
        assert (tmp_path / "two.log").read_text().count("loading model") == 1
    finally:
        for proc in (one, two):
            stop_node(proc)
        single.close()
        double.close()


def test_sim_time_camera_with_a_clock_topic(model_dir, ros_context, tmp_path):
    log = tmp_path / "node.log"
    proc = start_node(model_dir, log, "-p", "use_sim_time:=true", node_name="groma_sim")
    peer = Peer("simulator", "groma_sim")
    clock = peer.node.create_publisher(Clock, "/clock", 10)
    try:
        assert peer.wait_active(), log.read_text()
        sim = Time(sec=500, nanosec=0)
        for i in range(5):  # the simulator's clock and camera agree; the wall clock is decades later
            sim = Time(sec=500 + i, nanosec=0)
            clock.publish(Clock(clock=sim))
            header = peer.publish_frame(stamp=sim, settle_s=0.1)
        answer = peer.ask("where is the red box?")
        assert answer.status == GroundedAnswer.OK, answer.error
        assert answer.header == header
        assert "stamps frames" not in log.read_text()  # same clock domain: no warning
    finally:
        stop_node(proc)
        peer.close()
