"""A recorded camera sequence (rosbag2 MCAP written with `rosbags`) replayed into the node by scripts/replay_bag.py.

The recording's stamps lie in the past (2024), as on any bag. With use_sim_time and the replay's /clock the node's
clock follows the bag; without, the node runs on its own clock. Either way every frame is answered with exactly its
recorded header, looked up by stamp through the action and as the newest frame through ~/query.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")
pytest.importorskip("rosbags", reason="needs rosbags (requirements/dev.txt)")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from tests.support.node_harness import Peer, scene_image, start_node, stop_node  # noqa: E402
from tests.support.ros_tools import interrupt, ros_tool_env, start_in_shell_group  # noqa: E402

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[2]
REPLAY = ROOT / "scripts" / "replay_bag.py"
TOPIC = "/cam/image_raw"  # the harness node's remapped camera
FRAMES = 5
START = (1714564800, 250_000_000)  # 2024-05-01 12:00:00.25 UTC
PERIOD_NS = 100_000_000  # 10 Hz


def recorded_headers() -> list[tuple[int, int, str]]:
    first = START[0] * 10**9 + START[1]
    return [(*divmod(first + i * PERIOD_NS, 10**9), "bag_camera_optical_frame") for i in range(FRAMES)]


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """What `ros2 bag record /cam/image_raw` leaves behind: a rosbag2 folder, MCAP storage, five rgb8 frames."""
    store = get_typestore(Stores.ROS2_JAZZY)
    Image, Header, Stamp = (store.types[t] for t in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                     "builtin_interfaces/msg/Time"))
    path = tmp_path_factory.mktemp("recording") / "camera_bag"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(TOPIC, Image.__msgtype__, typestore=store)
        for i, (sec, nanosec, frame_id) in enumerate(recorded_headers()):
            rgb = scene_image(seed=i)
            msg = Image(header=Header(stamp=Stamp(sec=sec, nanosec=nanosec), frame_id=frame_id),
                        height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                        step=rgb.shape[1] * 3, data=np.ascontiguousarray(rgb).reshape(-1))
            writer.write(connection, sec * 10**9 + nanosec, store.serialize_cdr(msg, Image.__msgtype__))
    assert list(path.glob("*.mcap")) and (path / "metadata.yaml").is_file()
    return path


def header_of(answer: GroundedAnswer) -> tuple[int, int, str]:
    return answer.header.stamp.sec, answer.header.stamp.nanosec, answer.header.frame_id


def replay(bag: Path, tmp_path: Path, *options: str, name: str = "replay") -> subprocess.Popen:
    return start_in_shell_group([sys.executable, str(REPLAY), str(bag), *options], tmp_path / f"{name}.log",
                                ros_tool_env())


def assert_every_frame_answered_with_its_header(peer: Peer, newest_is_last: bool = True) -> None:
    """Each recorded frame by its stamp; then the newest frame (the last one, unless a loop was cut short)."""
    headers = recorded_headers()
    for sec, nanosec, frame_id in headers:
        goal = Ground.Goal(query="where is the red box?", image_stamp=Time(sec=sec, nanosec=nanosec))
        answer = peer.result_of(peer.send_goal(goal))
        assert answer.status == GroundedAnswer.OK, answer.error
        assert header_of(answer) == (sec, nanosec, frame_id)
    newest = peer.ask("where is the blue box?", timeout=60)
    assert newest.status == GroundedAnswer.OK, newest.error
    assert header_of(newest) == headers[-1] if newest_is_last else header_of(newest) in headers


def test_replay_with_sim_time_and_clock(bag, model_dir, ros_context, tmp_path):
    log = tmp_path / "node.log"
    node = start_node(model_dir, log, "-p", "use_sim_time:=true")
    peer = Peer("bag_user")
    try:
        assert peer.wait_active(90), log.read_text()
        proc = replay(bag, tmp_path, "--clock")
        assert proc.wait(60) == 0, (tmp_path / "replay.log").read_text()
        assert f"published {FRAMES} messages" in (tmp_path / "replay.log").read_text()
        assert_every_frame_answered_with_its_header(peer)
    finally:
        peer.close()
        stop_node(node)


def test_replay_on_the_node_clock_in_a_loop(bag, model_dir, ros_context, tmp_path):
    """No sim time, --loop at double speed: the node receives the recording again and again (diagnostics count the
    frames), and answers with recorded headers; Ctrl-C ends the replay."""
    log = tmp_path / "node.log"
    node = start_node(model_dir, log)  # recorded stamps are a year old: age counts from arrival
    peer = Peer("bag_user")
    received: list[int] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "frames_received" in values:
                received.append(int(values["frames_received"]))

    peer.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics,
                                  QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    proc = None
    try:
        assert peer.wait_active(90), log.read_text()
        proc = replay(bag, tmp_path, "--loop", "--rate", "2.0")
        assert peer.spin_until(lambda: received and received[-1] >= 3 * FRAMES, 30), (
            received, (tmp_path / "replay.log").read_text())
        assert interrupt(proc) == 130, (tmp_path / "replay.log").read_text()  # Ctrl-C
        peer.pause(0.5)
        assert_every_frame_answered_with_its_header(peer, newest_is_last=False)
    finally:
        if proc is not None:
            interrupt(proc)
        peer.close()
        stop_node(node)


def test_replay_names_the_recorded_topics_when_asked_for_another(bag, tmp_path):
    proc = replay(bag, tmp_path, "--topics", "/front/image", name="wrong_topic")
    assert proc.wait(30) == 2
    text = (tmp_path / "wrong_topic.log").read_text()
    assert "not in the recording: /front/image" in text
    assert f"{TOPIC} (sensor_msgs/msg/Image, {FRAMES} messages)" in text
