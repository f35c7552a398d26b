"""The launch files under real `ros2 launch`: the node in its own process, real DDS on loopback in the test's domain.

`ros2 launch groma_ros ...` resolves the package through an ament prefix that links to this checkout
(``package_prefix``), so these are this checkout's launch files, config and node. Every launch answers a query.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ros_tools import (
    get_parameters,
    interrupt,
    package_prefix,
    ros_tool_env,
    skip_reason,
    start_in_shell_group,
)

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")
yaml = pytest.importorskip("yaml")

from groma_ros.msg import GroundedAnswer  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from tests.support.models import make_tiny_model_dir  # noqa: E402
from tests.support.node_harness import Peer, scene_image  # noqa: E402

REASON = skip_reason("ros2 launch")
pytestmark = [pytest.mark.ros, pytest.mark.skipif(bool(REASON), reason=REASON or "-")]
ROOT = Path(__file__).resolve().parents[2]
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
START_TIMEOUT = 120.0  # ros2 launch + node process + model load on a busy 2-core machine


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return ros_tool_env(package_prefix(tmp_path_factory.mktemp("prefix")))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny models whose directory names (= the answers' model_id) tell which one the node loaded."""
    base = tmp_path_factory.mktemp("models")
    return {name: make_tiny_model_dir(base / name) for name in ("tiny_from_file", "tiny_from_argument")}


@pytest.fixture
def params_file(tmp_path, models) -> Path:
    """A user's params file: values that differ from the package's config/groma.yaml."""
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "model.path": str(models["tiny_from_file"]), "model.num_threads": 1, "target_frame": "base_from_file",
        "score_threshold": 0.25, "max_image_age_s": 7.5}}}))
    return path


@contextlib.contextmanager
def launched(env: dict[str, str], log: Path, launch_file: str, *arguments: str) -> Iterator:
    """``ros2 launch groma_ros LAUNCH_FILE ARGS`` for the duration of the block; SIGINT to ros2 launch after it
    (launch passes it on to the node)."""
    # TMPDIR: launch_ros writes the parameter files it generates there and leaves them behind
    proc = start_in_shell_group(["ros2", "launch", "groma_ros", launch_file, *arguments], log,
                                dict(env, TMPDIR=str(log.parent)))
    try:
        yield proc
    finally:
        interrupt(proc)


@contextlib.contextmanager
def user_peer(node_name: str) -> Iterator[Peer]:
    peer = Peer("launch_test_user", node_name=node_name)
    try:
        yield peer
    finally:
        peer.close()


def answered_frame(peer: Peer, log: Path, text: str = "where is the red box?", **frame) -> tuple:
    """Publish a frame on /cam/image_raw until the node has it, ask, return (header, answer); the answer must be
    OK. (One frame alone can be lost: the camera subscription is best effort, as camera drivers publish.)"""
    assert peer.wait_active(START_TIMEOUT), log.read_text()[-4000:]
    header = peer.publish_until_seen(**frame)
    answer = peer.ask(text, timeout=60)
    assert answer.status == GroundedAnswer.OK, (answer.error, log.read_text()[-3000:])
    return header, answer


def test_without_params_file_in_a_namespace_with_a_remapped_camera(env, ros_context, tmp_path):
    """No params_file: the package's config/groma.yaml and the embedded model; namespace and image topic from the
    arguments (a frame on the default camera topic, which the remap replaces, is never used)."""
    log = tmp_path / "launch.log"
    with launched(env, log, "groma.launch.py", "namespace:=front", "image_topic:=/cam/image_raw"), \
            user_peer("front/groma") as peer:
        default_camera = peer.node.create_publisher(Image, "/camera/color/image_raw", RELIABLE)
        assert peer.wait_active(START_TIMEOUT), log.read_text()[-4000:]
        default_camera.publish(peer.image_msg(scene_image(seed=3), "default_topic_frame", peer.stamp_now(1.0)))
        header, answer = answered_frame(peer, log)
        assert answer.header == header and answer.header.frame_id == "cam_optical_frame"
        assert answer.model_id == "default_model"
        assert answer.query_id.startswith("groma-")
        package_config = yaml.safe_load((ROOT / "config" / "groma.yaml").read_text())["/**"]["ros__parameters"]
        names = sorted(package_config)
        assert get_parameters(peer, "/front/groma", names) == {n: package_config[n] for n in names}


def test_params_file_values_survive_when_the_arguments_are_not_given(env, ros_context, tmp_path, params_file):
    """params_file:=robot.yaml with model.path, target_frame and autostart: false in it, and none of the matching
    launch arguments: the node loads the file's model and waits unconfigured for a lifecycle manager (here: us)."""
    data = yaml.safe_load(params_file.read_text())
    data["/**"]["ros__parameters"]["autostart"] = False
    params_file.write_text(yaml.safe_dump(data))
    log = tmp_path / "launch.log"
    with launched(env, log, "groma.launch.py", f"params_file:={params_file}", "image_transport:=raw",
                  "image_topic:=/cam/image_raw"), user_peer("groma") as peer:
        assert peer.spin_until(peer.get_state.service_is_ready, START_TIMEOUT), log.read_text()[-3000:]
        assert peer.state() == State.PRIMARY_STATE_UNCONFIGURED, log.read_text()[-3000:]
        time.sleep(1.0)
        assert peer.state() == State.PRIMARY_STATE_UNCONFIGURED, "the node configured itself"
        assert peer.lifecycle(Transition.TRANSITION_CONFIGURE) and peer.lifecycle(Transition.TRANSITION_ACTIVATE)
        header, answer = answered_frame(peer, log)
        assert answer.header == header and answer.model_id == "tiny_from_file"
        assert get_parameters(peer, "/groma", ["model.path", "target_frame", "score_threshold", "max_image_age_s",
                                               "model.num_threads", "image_transport", "autostart"]) == {
            "model.path": data["/**"]["ros__parameters"]["model.path"], "target_frame": "base_from_file",
            "score_threshold": 0.25, "max_image_age_s": 7.5, "model.num_threads": 1, "image_transport": "raw",
            "autostart": False}


def test_given_launch_arguments_win_over_the_params_file(env, ros_context, tmp_path, params_file, models):
    log = tmp_path / "launch.log"
    with launched(env, log, "groma.launch.py", f"params_file:={params_file}",
                  f"model_path:={models['tiny_from_argument']}", "target_frame:=base_from_argument",
                  "device:=cpu", "image_topic:=/cam/image_raw"), user_peer("groma") as peer:
        header, answer = answered_frame(peer, log)
        assert answer.header == header and answer.model_id == "tiny_from_argument"
        assert get_parameters(peer, "/groma", ["model.path", "target_frame", "score_threshold", "model.device"]) == {
            "model.path": str(models["tiny_from_argument"]), "target_frame": "base_from_argument",
            "score_threshold": 0.25, "model.device": "cpu"}


def test_autostart_false_lets_the_launch_file_drive_configure_and_activate(env, ros_context, tmp_path, params_file):
    log = tmp_path / "launch.log"
    with launched(env, log, "groma.launch.py", f"params_file:={params_file}", "autostart:=false",
                  "image_topic:=/cam/image_raw"), user_peer("groma") as peer:
        header, answer = answered_frame(peer, log)  # nobody but the launch file configured and activated it
        assert answer.header == header and answer.model_id == "tiny_from_file"
        assert peer.state() == State.PRIMARY_STATE_ACTIVE
        assert get_parameters(peer, "/groma", ["autostart"]) == {"autostart": False}


# --- two cameras, one node ------------------------------------------------------------------------------------------
CAMERA_TOPICS = {"front": "/front_camera/color/image_raw", "wrist": "/wrist_camera/color/image_raw"}


class _ParamsFileLoader(yaml.SafeLoader):
    """launch_ros writes list parameters with a ``!!python/tuple`` tag, which rcl reads as a plain list."""


_ParamsFileLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                                  lambda loader, node: loader.construct_sequence(node))


def _ros_parameters(path: Path) -> list[dict]:
    """The ros__parameters blocks of a params file (whatever node name or wildcard they are under)."""
    return [block["ros__parameters"] for block in yaml.load(path.read_text(), Loader=_ParamsFileLoader).values()]


def _launch_children(proc) -> list:
    psutil = pytest.importorskip("psutil")
    return psutil.Process(proc.pid).children(recursive=True)


def test_two_cameras_launch_starts_one_node_with_both_cameras(env, ros_context, tmp_path, params_file):
    """One process, node /groma, parameter cameras = [front, wrist], per-camera topics remapped to the drivers'."""
    log = tmp_path / "launch.log"
    with launched(env, log, "two_cameras.launch.py", f"params_file:={params_file}") as proc, \
            user_peer("groma") as peer:
        assert peer.spin_until(lambda: ("groma", "/") in peer.node.get_node_names_and_namespaces(),
                               START_TIMEOUT), log.read_text()[-3000:]
        nodes = peer.node.get_node_names_and_namespaces()
        assert not [(n, ns) for n, ns in nodes if n == "groma" and ns != "/"], nodes  # no node per camera
        [node_process] = [p for p in _launch_children(proc) if "groma_node" in " ".join(p.cmdline())]
        cmdline = node_process.cmdline()
        for camera, topic in CAMERA_TOPICS.items():
            assert f"{camera}/image:={topic}" in cmdline, cmdline
            assert f"{camera}/camera_info:={topic.rsplit('/', 1)[0]}/camera_info" in cmdline, cmdline
        files = [cmdline[i + 1] for i, arg in enumerate(cmdline) if arg == "--params-file"]
        assert files[0] == str(params_file), files
        cameras = [ros_parameters.get("cameras") for f in files[1:]
                   for ros_parameters in _ros_parameters(Path(f))]
        assert ["front", "wrist"] in cameras, (files, cameras)


def test_two_cameras_answer_from_each_camera(env, ros_context, tmp_path, params_file):
    """~/query answers on the default (first) camera, front/query and wrist/query on theirs; each answer's header
    is the header of the frame from that camera."""
    log = tmp_path / "launch.log"
    with launched(env, log, "two_cameras.launch.py", f"params_file:={params_file}"), user_peer("groma") as peer:
        cameras = {name: peer.node.create_publisher(Image, topic, RELIABLE) for name, topic in CAMERA_TOPICS.items()}
        assert peer.spin_until(lambda: peer.matched() and all(
            peer.node.count_subscribers(t) > 0 for t in CAMERA_TOPICS.values()), START_TIMEOUT), \
            log.read_text()[-4000:]
        subscriptions = [name for name, _ in peer.node.get_subscriber_names_and_types_by_node("groma", "/")]
        headers = {}
        for seed, (name, publisher) in enumerate(cameras.items()):
            msg = peer.image_msg(scene_image(seed=seed), f"{name}_optical_frame", peer.stamp_now(-0.1 * seed))
            publisher.publish(msg)
            headers[name] = msg.header
        peer.pause(0.5)
        answer = peer.ask("where is the red box?", timeout=60)
        assert answer.status == GroundedAnswer.OK, answer.error
        assert answer.header == headers["front"] and answer.camera == "front"
        for name in CAMERA_TOPICS:
            [topic] = [t for t in subscriptions if t.endswith(f"{name}/query")]
            query = peer.node.create_publisher(String, topic, RELIABLE)
            assert peer.spin_until(lambda q=query: q.get_subscription_count() > 0, 10)
            before = len(peer.received)
            query.publish(String(data=f"where is the blue box on {name}?"))
            assert peer.spin_until(lambda b=before: len(peer.received) > b, 60)
            answer = peer.received[before][1]
            assert answer.status == GroundedAnswer.OK, answer.error
            assert answer.header == headers[name] and answer.camera == name


# --- last: a node that dies on Ctrl-C stays in the DDS graph for a while ---------------------------------------------
def test_ctrl_c_stops_launch_and_node_cleanly(env, ros_context, tmp_path, params_file):
    """Ctrl-C in the terminal of `ros2 launch` (SIGINT to launch and node, then launch's own SIGINT to the node):
    the node shuts down with exit code 0 and no traceback."""
    log = tmp_path / "launch.log"
    with launched(env, log, "groma.launch.py", f"params_file:={params_file}",
                  "image_topic:=/cam/image_raw") as proc, user_peer("groma") as peer:
        try:
            answered_frame(peer, log)
            code = interrupt(proc, whole_group=True)
        finally:  # a node that did not leave cleanly stays in the graph until its DDS lease ends
            peer.spin_until(lambda: "groma" not in peer.node.get_node_names(), 30)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text and "process has died" not in text, text[-3000:]
    assert "process has finished cleanly" in text, text[-3000:]
