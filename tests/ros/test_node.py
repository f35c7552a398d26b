"""The Groma node in its own process, over real DDS: inputs, queries, answers, 3-D, lifecycle, errors.

One node process (tiny random model in the released format, started with the README's
``--params-file`` + remapping form) serves most tests; tests run in file order, and the first one
expects that no frame has arrived yet.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer, GroundedDetection3DArray  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from groma_ros.ros.image_codec import cv2_to_compressed_imgmsg, cv2_to_imgmsg  # noqa: E402
from groma_ros.ros.messages import box_to_msg  # noqa: E402
from tests.support import image_bombs  # noqa: E402
from tests.support.node_harness import Peer, scene_image, start_node, stop_node  # noqa: E402

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[2]
W, H = 320, 240
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
FX = FY = 300.0
CX, CY = W / 2 - 0.5, H / 2 - 0.5


class RobotPeer(Peer):
    """The harness peer plus what a planner listens to: 3-D detections, markers, diagnostics."""

    def __init__(self, name: str, node_name: str = "groma") -> None:
        super().__init__(name, node_name)
        n = self.node
        self.answers_3d: list[GroundedDetection3DArray] = []
        self.markers: list[MarkerArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.debug_images: list[Image] = []
        n.create_subscription(GroundedDetection3DArray, f"{self.base}/detections_3d", self.answers_3d.append,
                              RELIABLE)
        n.create_subscription(MarkerArray, f"{self.base}/markers", self.markers.append, RELIABLE)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, RELIABLE)

    def publish_frame(self, image: np.ndarray | None = None, settle_s: float = 0.3, **kwargs) -> Header:
        return super().publish_frame(image, settle_s, **kwargs)

    def ask(self, text: str, timeout: float = 30.0) -> GroundedAnswer:
        """The single answer to a ~/query (waits a little longer to see that no second one comes)."""
        before = len(self.received)
        super().ask(text, timeout)
        self.pause(0.3)
        new = [a for a in self.answers[before:] if a.query == text]
        assert len(new) == 1, [(a.query_id, a.status) for a in new]
        return new[0]


def camera_info(header: Header, w: int = W, h: int = H) -> CameraInfo:
    info = CameraInfo(header=header, width=w, height=h, distortion_model="plumb_bob")
    info.k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
    info.p = [FX, 0.0, CX, 0.0, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


@pytest.fixture(scope="module")
def node(endless_model_dir, ros_context, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    proc = start_node(endless_model_dir, log, "-p", "use_depth:=true", "-p", "queue_size:=1",
                      "-p", "max_image_age_s:=5.0")
    peer = RobotPeer("test_robot")
    try:
        assert peer.wait_active(), log.read_text()
        yield peer, proc, log
    finally:
        stop_node(proc)
        peer.node.destroy_node()


def test_no_image_yet_gives_no_image(node):
    peer, _, _ = node
    answer = peer.ask("where is the red mug?")
    assert answer.status == GroundedAnswer.NO_IMAGE
    assert "no image received yet on /cam/image_raw" in answer.error
    assert answer.query_id


def test_query_gets_one_answer_with_source_header_and_pixel_boxes(node):
    peer, _, _ = node
    header = peer.publish_frame()
    answer = peer.ask("pick up the red mug")
    assert answer.status == GroundedAnswer.OK, answer.error
    assert answer.header == header
    assert answer.detections.header == header
    assert (answer.detections.image_width, answer.detections.image_height) == (W, H)
    assert answer.task == GroundedAnswer.REFER
    assert answer.model_id and answer.prompt_tokens > 0 and answer.completion_tokens > 0
    stages = answer.preprocess_ms + answer.encode_ms + answer.generate_ms
    assert 0 < stages <= answer.total_ms < stages + 1000
    for det in answer.detections.detections:
        x1 = det.bbox.center.position.x - det.bbox.size_x / 2
        y1 = det.bbox.center.position.y - det.bbox.size_y / 2
        assert -1e-3 <= x1 and x1 + det.bbox.size_x <= W + 1e-3
        assert -1e-3 <= y1 and y1 + det.bbox.size_y <= H + 1e-3
        assert det.header == header and det.results[0].hypothesis.score == pytest.approx(det.proposal_score)


def test_best_effort_camera_also_reaches_the_node(node):
    peer, _, _ = node
    header = peer.publish_frame(best_effort=True, frame_id="best_effort_optical_frame")
    answer = peer.ask("where is the blue box?")
    assert answer.status == GroundedAnswer.OK, answer.error
    assert answer.header == header


def test_action_streams_feedback_and_returns_the_answer(node):
    peer, _, _ = node
    header = peer.publish_frame()
    feedback: list = []
    handle = peer.send_goal(Ground.Goal(query="what do you see?", task=GroundedAnswer.VQA, max_new_tokens=6),
                            feedback)
    answer = peer.result_of(handle)
    assert answer.status == GroundedAnswer.OK, answer.error
    assert answer.header == header and answer.task == GroundedAnswer.VQA
    assert answer.completion_tokens == 6
    stages = [f.stage for f in feedback]
    assert Ground.Feedback.STAGE_PERCEIVING in stages and Ground.Feedback.STAGE_GENERATING in stages
    # the last feedback (parsed text, as the answer: phrases without tags) may trail the result on the wire
    assert peer.spin_until(lambda: [f.partial_text for f in feedback][-1] == answer.text, 5), \
        ([f.partial_text for f in feedback], answer.text)
    assert peer.spin_until(lambda: any(a.query_id == answer.query_id for a in peer.answers), 5)


def test_action_cancel_stops_generation_between_tokens(node):
    peer, _, _ = node
    peer.publish_frame()
    feedback: list = []
    handle = peer.send_goal(Ground.Goal(query="tell me a story", task=GroundedAnswer.VQA, max_new_tokens=1000),
                            feedback)
    assert peer.spin_until(lambda: any(f.stage == Ground.Feedback.STAGE_GENERATING for f in feedback), 30)
    cancel = handle.cancel_goal_async()
    assert peer.spin_until(cancel.done, 10)
    answer = peer.result_of(handle)
    assert answer.status == GroundedAnswer.CANCELED
    assert 0 < answer.completion_tokens < 1000


def test_full_queue_answers_busy_and_every_goal_gets_one_result(node):
    peer, _, _ = node
    peer.publish_frame()
    feedback: list = []
    first = peer.send_goal(Ground.Goal(query="story 0", task=GroundedAnswer.VQA, max_new_tokens=1000), feedback)
    # the first one runs before the others arrive (a goal the worker has not picked up yet counts as waiting)
    assert peer.spin_until(lambda: any(f.stage == Ground.Feedback.STAGE_GENERATING for f in feedback), 30)
    handles = [first] + [peer.send_goal(Ground.Goal(query=f"story {i}", task=GroundedAnswer.VQA,
                                                    max_new_tokens=1000)) for i in range(1, 4)]
    # queue_size=1: one runs, one waits, the others are BUSY at once
    futures = [h.get_result_async() for h in handles]
    assert peer.spin_until(lambda: sum(f.done() for f in futures) >= 2, 20)
    busy = [f.result().result.answer for f in futures if f.done()]
    assert all(a.status == GroundedAnswer.BUSY for a in busy), [a.status for a in busy]
    assert "queue_size=1" in busy[0].error
    for h, f in zip(handles, futures, strict=True):
        if not f.done():
            h.cancel_goal_async()
    assert peer.spin_until(lambda: all(f.done() for f in futures), 60)
    statuses = sorted(f.result().result.answer.status for f in futures)
    assert statuses.count(GroundedAnswer.BUSY) == 2 and statuses.count(GroundedAnswer.CANCELED) == 2


def test_age_counts_from_arrival_and_stamps_select_exactly(node):
    peer, _, _ = node
    # stamped an hour ago (another clock domain) but it arrives now: fresh, and selectable by its own stamp
    old = peer.publish_frame(stamp=peer.stamp_now(-3600.0))
    answer = peer.result_of(peer.send_goal(Ground.Goal(query="where is the cup?", image_stamp=old.stamp)))
    assert answer.status == GroundedAnswer.OK, answer.error
    assert answer.header == old
    # a runtime change of max_image_age_s takes effect: the same frames are now too old
    assert all(r.successful for r in peer.set_parameters({"max_image_age_s": 0.2}))
    try:
        peer.pause(0.4)
        answer = peer.ask("where is the cup now?")
        assert answer.status == GroundedAnswer.STALE_IMAGE
        assert "arrived" in answer.error and "max_image_age_s=0.2" in answer.error
    finally:
        assert all(r.successful for r in peer.set_parameters({"max_image_age_s": 5.0}))
    for name, value in (("", 1), ("no_such_parameter", 1.0), ("max_image_age_s", -1.0)):
        result = peer.set_parameters({name: value})[0]
        assert not result.successful and result.reason, name
    handle = peer.send_goal(Ground.Goal(query="where is the cup?", image_stamp=Time(sec=12, nanosec=5)))
    answer = peer.result_of(handle)
    assert answer.status == GroundedAnswer.NO_IMAGE and "no buffered frame with stamp 12000000005" in answer.error


def test_newest_means_newest_stamp_and_frames_are_told_apart_by_arrival(node):
    peer, _, _ = node
    fresh = peer.publish_frame(scene_image(seed=1))
    # a frame stamped 5 s earlier that arrives late does not hide the fresh one
    peer.publish_frame(scene_image(seed=2), stamp=peer.stamp_now(-5.0))
    answer = peer.ask("where is the red box?")
    assert answer.status == GroundedAnswer.OK and answer.header == fresh
    # a new image reusing that stamp and frame_id is a new frame: answered from its own pixels, not the cache
    first = peer.result_of(peer.send_goal(Ground.Goal(task=GroundedAnswer.DETECT, image_stamp=fresh.stamp)))
    blank = np.zeros((H, W, 3), np.uint8)
    peer.publish_frame(blank, stamp=fresh.stamp)
    second = peer.result_of(peer.send_goal(Ground.Goal(task=GroundedAnswer.DETECT, image_stamp=fresh.stamp)))
    assert first.status == second.status == GroundedAnswer.OK
    boxes = lambda a: [(d.bbox.center.position.x, d.bbox.center.position.y) for d in a.detections.detections]  # noqa: E731
    assert boxes(first) != boxes(second)


def test_bad_requests_are_answered_not_dropped(node):
    peer, _, _ = node
    peer.publish_frame()
    assert peer.ask("   ").status == GroundedAnswer.BAD_REQUEST
    box = box_to_msg((10.0, 10.0, 50.0, 50.0))
    box.size_x = float("nan")
    answer = peer.result_of(peer.send_goal(Ground.Goal(query="what is this?", regions=[box])))
    assert answer.status == GroundedAnswer.BAD_REQUEST and "non-finite" in answer.error
    answer = peer.result_of(peer.send_goal(Ground.Goal(query="x", task=42)))
    assert answer.status == GroundedAnswer.BAD_REQUEST and "unknown task 42" in answer.error


@pytest.mark.parametrize("defect", ["wrong_step", "short_data", "unknown_encoding"])
def test_malformed_image_gets_an_error_answer_and_the_node_keeps_serving(node, defect):
    peer, proc, _ = node
    msg = cv2_to_imgmsg(scene_image(), "rgb8", Header(stamp=peer.stamp_now(), frame_id="cam_optical_frame"))
    if defect == "wrong_step":
        msg.step = W  # one byte per pixel for an rgb8 image
    elif defect == "short_data":
        msg.data = bytes(msg.data[: len(msg.data) // 2])
    else:
        msg.encoding = "yuv_super_422"
    peer.camera.publish(msg)
    peer.spin_until(lambda: False, 0.3)
    answer = peer.ask(f"where is the mug ({defect})?")
    assert answer.status == GroundedAnswer.NO_IMAGE
    assert "could not be decoded" in answer.error
    peer.publish_frame()
    assert peer.ask("where is the mug now?").status == GroundedAnswer.OK
    assert proc.poll() is None


@pytest.mark.parametrize(("encoding", "z"), [("16UC1", 1.5), ("32FC1", 2.25)])
def test_depth_lifts_boxes_to_3d_points(node, encoding, z):
    peer, _, _ = node
    stamp = peer.stamp_now()
    header = Header(stamp=stamp, frame_id="cam_optical_frame")
    # depth at half resolution (registered): the node must scale boxes and intrinsics
    dw, dh = W // 2, H // 2
    if encoding == "16UC1":
        depth = np.full((dh, dw), int(z * 1000), np.uint16)
        depth[::7, ::5] = 0  # invalid pixels
    else:
        depth = np.full((dh, dw), z, np.float32)
        depth[::7, ::5] = np.nan
    peer.depth_info.publish(camera_info(header))
    peer.depth.publish(cv2_to_imgmsg(depth, encoding, header))
    peer.publish_frame(stamp=stamp)
    before = len(peer.answers_3d)
    handle = peer.send_goal(Ground.Goal(query="", task=GroundedAnswer.DETECT, lift_3d=True))
    answer = peer.result_of(handle)
    assert answer.status == GroundedAnswer.OK, answer.error
    assert peer.spin_until(lambda: len(peer.answers_3d) > before, 10)
    lifted = peer.answers_3d[-1]
    assert lifted.query_id == answer.query_id and lifted.header.stamp == stamp
    assert lifted.header.frame_id == "cam_optical_frame"
    by_id = {d.id: d for d in answer.detections.detections}
    assert len(lifted.detections) >= 1
    for det3 in lifted.detections:
        det2 = by_id[det3.id]
        u, v = det2.bbox.center.position.x, det2.bbox.center.position.y
        # back-projection of the box centre (pixel-edge coordinates) with the colour intrinsics
        expect = ((u - 0.5 - CX) * z / FX, (v - 0.5 - CY) * z / FY, z)
        got = det3.bbox.center.position
        assert (got.x, got.y, got.z) == pytest.approx(expect, abs=0.02)
        assert det3.valid_depth_points > 0
        pose = det2.results[0].pose.pose.position
        assert (pose.x, pose.y, pose.z) == pytest.approx(expect, abs=0.02)
    assert peer.spin_until(lambda: peer.markers and len(peer.markers[-1].markers) > len(lifted.detections), 5)
    assert all(m.header.frame_id == "cam_optical_frame" for m in peer.markers[-1].markers)


@pytest.mark.parametrize("defect", ["depth_1e38", "binning", "roi_offset"])
def test_insane_depth_or_intrinsics_publish_no_3d(node, defect):
    peer, proc, log = node
    stamp = peer.stamp_now()
    header = Header(stamp=stamp, frame_id="cam_optical_frame")
    info = camera_info(header)
    depth = np.full((H, W), 1.5, np.float32)
    if defect == "depth_1e38":
        depth[:] = 1e38
    elif defect == "binning":
        info.binning_x = 2**32 - 1
    else:
        info.roi.x_offset, info.roi.width, info.roi.height = 2**31, W, H
    peer.depth_info.publish(info)
    peer.depth.publish(cv2_to_imgmsg(depth, "32FC1", header))
    peer.publish_frame(stamp=stamp)
    answer = peer.result_of(peer.send_goal(Ground.Goal(task=GroundedAnswer.DETECT, lift_3d=True,
                                                       image_stamp=stamp)))
    assert answer.status == GroundedAnswer.OK and answer.detections.detections  # the 2-D answer stands
    peer.pause(0.5)
    assert not [a for a in peer.answers_3d if a.query_id == answer.query_id and a.detections]
    for det in answer.detections.detections:
        assert det.results[0].pose.covariance[0] == -1.0  # no 3-D centroid claimed
    assert proc.poll() is None


def test_debug_image_is_published_only_while_someone_listens(node):
    peer, _, _ = node
    header = peer.publish_frame()
    assert peer.ask("where is the red thing?").status == GroundedAnswer.OK
    assert not peer.debug_images  # nobody subscribed yet: nothing drawn or sent
    sub = peer.node.create_subscription(Image, f"{peer.base}/debug_image", peer.debug_images.append, RELIABLE)
    try:
        peer.spin_until(lambda: False, 0.5)
        assert peer.ask("where is the blue thing?").status == GroundedAnswer.OK
        assert peer.spin_until(lambda: peer.debug_images, 5)
        image = peer.debug_images[-1]
        assert image.header == header and (image.width, image.height, image.encoding) == (W, H, "rgb8")
    finally:
        peer.node.destroy_subscription(sub)


def test_diagnostics_report_model_queue_and_latency(node):
    peer, _, _ = node
    assert peer.spin_until(lambda: any(s.name.endswith("groma") for d in peer.diagnostics for s in d.status), 5)
    status = next(s for d in reversed(peer.diagnostics) for s in d.status if s.name.endswith("groma"))
    values = {kv.key: kv.value for kv in status.values}
    assert values["model"] and values["device"] == "cpu" and float(values["rss_mb"]) > 0
    assert int(values["answered"]) >= 1 and "queue_depth" in values and float(values["last_total_ms"]) > 0


def test_lifecycle_keeps_the_model_while_inactive_and_frees_it_on_cleanup(node):
    peer, proc, log = node
    psutil = pytest.importorskip("psutil")
    loads = log.read_text().count("loading model")
    assert peer.lifecycle(Transition.TRANSITION_DEACTIVATE)
    assert peer.state() == State.PRIMARY_STATE_INACTIVE
    answer = peer.result_of(peer.send_goal(Ground.Goal(query="where is the mug?")))
    assert answer.status == GroundedAnswer.MODEL_ERROR and "not active (state: inactive)" in answer.error
    assert peer.ask("and on the topic?").status == GroundedAnswer.MODEL_ERROR
    t0 = time.monotonic()
    assert peer.lifecycle(Transition.TRANSITION_ACTIVATE)
    peer.publish_frame(settle_s=0.0)
    assert peer.spin_until(lambda: peer.node.count_publishers("/cam/image_raw") > 0, 5)
    answer = None
    while answer is None or answer.status == GroundedAnswer.NO_IMAGE:  # until the new subscription has a frame
        peer.publish_frame(settle_s=0.02)
        answer = peer.ask("where is the mug after reactivation?")
    reactivated_s = time.monotonic() - t0
    assert answer.status == GroundedAnswer.OK, answer.error
    assert reactivated_s < 1.0, reactivated_s
    assert log.read_text().count("loading model") == loads  # no reload
    rss_configured = psutil.Process(proc.pid).memory_info().rss
    assert peer.lifecycle(Transition.TRANSITION_DEACTIVATE)
    assert peer.lifecycle(Transition.TRANSITION_CLEANUP)
    assert peer.state() == State.PRIMARY_STATE_UNCONFIGURED
    answer = peer.ask("and now?")
    assert answer.status == GroundedAnswer.MODEL_ERROR and "state: unconfigured" in answer.error
    assert psutil.Process(proc.pid).memory_info().rss < rss_configured
    # unconfigured: read-only parameters may change, and configure loads the model again
    assert all(r.successful for r in peer.set_parameters({"queue_size": 1}))
    assert peer.lifecycle(Transition.TRANSITION_CONFIGURE)
    assert log.read_text().count("loading model") == loads + 1
    refused = peer.set_parameters({"queue_size": 3})[0]
    assert not refused.successful and "only change while the node is unconfigured" in refused.reason
    assert peer.lifecycle(Transition.TRANSITION_ACTIVATE)
    assert peer.wait_active()
    peer.publish_frame()
    assert peer.ask("where is the mug after reconfiguring?").status == GroundedAnswer.OK


def test_compressed_transport(endless_model_dir, ros_context, tmp_path):
    proc = start_node(endless_model_dir, tmp_path / "node.log", "-p", "image_transport:=compressed",
                      node_name="groma_compressed")
    peer = RobotPeer("test_compressed", node_name="groma_compressed")
    try:
        assert peer.spin_until(lambda: peer.node.count_subscribers("/cam/image_raw/compressed") > 0
                               and peer.node.count_subscribers("/groma_compressed/query") > 0, 60), \
            (tmp_path / "node.log").read_text()
        header = Header(stamp=peer.stamp_now(), frame_id="cam_optical_frame")
        peer.compressed.publish(cv2_to_compressed_imgmsg(scene_image()[:, :, ::-1].copy(), "jpeg", header=header))
        peer.spin_until(lambda: False, 0.3)
        answer = peer.ask("where is the red square?")
        assert answer.status == GroundedAnswer.OK, answer.error
        assert answer.header == header
        assert (answer.detections.image_width, answer.detections.image_height) == (W, H)
        # size bombs: refused from their declared size before any decode, at no memory cost to the node
        psutil = pytest.importorskip("psutil")
        node = psutil.Process(proc.pid)
        rss0 = node.memory_info().rss
        bombs = {"tiff": image_bombs.tiff_bomb(), "png": image_bombs.png_bomb(),
                 "jpeg": image_bombs.jpeg_with_size(image_bombs.small_jpeg(), 60000, 60000),
                 "jpeg_junk_sof": image_bombs.jpeg_with_size(image_bombs.small_jpeg(), 30000, 30000, b"\x00")}
        for name, data in bombs.items():
            for attempt in range(10):  # best-effort transport: resend until the node answers on this frame
                bomb = Header(stamp=peer.stamp_now(), frame_id="cam")
                peer.compressed.publish(CompressedImage(header=bomb, format="jpeg", data=data))
                peer.spin_until(lambda: False, 0.3)
                answer = peer.ask(f"where is the red square ({name} {attempt})?")
                if answer.header == bomb:
                    break
            assert answer.header == bomb, name
            assert answer.status == GroundedAnswer.NO_IMAGE and "could not be decoded" in answer.error, name
        growth_mb = (node.memory_info().rss - rss0) / 2**20
        assert growth_mb < 50, growth_mb
        assert proc.poll() is None
    finally:
        stop_node(proc)
        peer.node.destroy_node()


def test_out_of_range_parameter_fails_configure_with_a_clear_log(endless_model_dir, ros_context, tmp_path):
    log = tmp_path / "node.log"
    proc = start_node(endless_model_dir, log, "-p", "queue_size:=0", node_name="groma_bad")
    peer = RobotPeer("test_bad_params", node_name="groma_bad")
    try:
        assert peer.get_state.wait_for_service(timeout_sec=30), log.read_text()
        # the service comes up before the autostart configure attempt: wait for its log line
        assert peer.spin_until(lambda: "configure failed" in log.read_text(), 30), log.read_text()
        assert "queue_size" in log.read_text()
        assert peer.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert proc.poll() is None
    finally:
        stop_node(proc)
        peer.node.destroy_node()
