"""The README's first ten minutes with the node, run line by line with the real `ros2` CLI against a running node.

The test reads the commands from the README (the block with `ros2 lifecycle get /groma`) and the node's start line
(`ros2 launch groma_ros groma.launch.py ...`), runs them as a user would in a shell, and checks each output against
what the node did (answer headers = frames our camera published, parameters read back over the parameter
services). A README command without a check here, or a check without its README command, fails the first test.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.ros_tools import (
    get_parameters,
    interrupt,
    package_prefix,
    ros2,
    ros_tool_env,
    skip_reason,
    start_in_shell_group,
    stop_daemon,
)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
QUERY = "where is the red box?"
START_TIMEOUT = 120.0


def readme_block(marker: str) -> list[str]:
    """The command lines (no blank lines) of the README's one bash block that contains ``marker``."""
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if marker in b]
    assert len(blocks) == 1, f"expected one README bash block with {marker!r}, found {len(blocks)}"
    return [line for line in blocks[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]


def command(line: str) -> str:
    """A README line without its trailing comment (comments start after two spaces)."""
    return line.split("  #", 1)[0].strip()


START_LINE = next(command(line) for line in readme_block("source .venv/bin/activate\nros2 launch groma_ros")
                  if line.startswith("ros2 launch groma_ros groma.launch.py"))
TOUR = [command(line) for line in readme_block("ros2 lifecycle get /groma")]

# The tour in README order: command -> name of the check (a method of Tour). A README edit needs a test edit.
CHECKS = {
    "ros2 lifecycle get /groma": "lifecycle_get",
    "ros2 topic echo --once /groma/answer &": "echo_answer",
    f"ros2 topic pub --once /groma/query std_msgs/msg/String \"{{data: '{QUERY}'}}\"": "pub_query",
    "wait": "wait",
    "ros2 action send_goal --feedback /groma/ground groma_ros/action/Ground "
    "\"{query: 'describe the image', task: 2}\"": "send_goal",
    "ros2 param get /groma score_threshold": "param_get",
    "ros2 param set /groma score_threshold 0.3": "param_set_valid",
    "ros2 param set /groma score_threshold 1.5": "param_set_refused",
    "ros2 param dump /groma > groma_params.yaml": "param_dump",
    "ros2 lifecycle set /groma deactivate": "deactivate",
    "ros2 lifecycle set /groma activate": "activate",
    "ros2 interface show groma_ros/msg/GroundedAnswer": "interface_show",
}


def test_readme_tour_is_what_the_cli_test_runs():
    assert TOUR == list(CHECKS)
    assert START_LINE == "ros2 launch groma_ros groma.launch.py image_topic:=/camera/color/image_raw"


# --- against a running node -----------------------------------------------------------------------------------------
REASON = skip_reason("ros2 launch", "ros2 lifecycle", "ros2 topic", "ros2 action", "ros2 param", "ros2 interface")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``ros2 param dump`` nests dotted names (model: {path: ...}); ROS names them model.path."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _yaml_after(label: str, text: str) -> list[Any]:
    """Every YAML document ros2 prints after ``label`` (``Feedback:``, ``Result:``), up to the next label."""
    import yaml

    chunks = re.findall(rf"^{label}\n(.*?)(?=^\S[^\n]*:\n|^Goal |\Z)", text, re.S | re.M)
    return [yaml.safe_load(chunk.lstrip()) for chunk in chunks]


class Camera(threading.Thread):
    """A camera driver at 5 Hz on /camera/color/image_raw; remembers every header it sent."""

    def __init__(self, peer: Any) -> None:
        super().__init__(daemon=True)
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.peer = peer
        self.publisher = peer.node.create_publisher(Image, "/camera/color/image_raw",
                                                    QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.sent: set[tuple[int, int, str]] = set()
        self.stopped = threading.Event()

    def run(self) -> None:
        from tests.support.node_harness import scene_image

        seed = 0
        while not self.stopped.wait(0.2):
            msg = self.peer.image_msg(scene_image(seed=seed), "camera_color_optical_frame")
            self.sent.add((msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id))
            self.publisher.publish(msg)
            seed += 1

    def sent_header(self, header: Any) -> bool:
        """Whether ``header`` (a message or the dict ros2 prints) is one this camera sent."""
        if isinstance(header, dict):
            key = (header["stamp"]["sec"], header["stamp"]["nanosec"], header["frame_id"])
        else:
            key = (header.stamp.sec, header.stamp.nanosec, header.frame_id)
        return key in self.sent


class Tour:
    """Runs the README lines in a shell's working directory and checks each one's output."""

    def __init__(self, env: dict[str, str], cwd: Path, peer: Any, camera: Camera) -> None:
        self.env, self.cwd, self.peer, self.camera = env, cwd, peer, camera
        self.background: list[tuple[subprocess.Popen, str]] = []

    def run(self, line: str) -> None:
        check = getattr(self, CHECKS[line])
        if line.endswith("&"):
            proc = subprocess.Popen(["bash", "-c", line[:-1]], cwd=self.cwd, env=self.env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.background.append((proc, line))
            check(proc)
        elif line == "wait":
            check()
        else:
            done = subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env, text=True, timeout=120,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert done.returncode == 0, (line, done.stdout)
            check(done.stdout)

    # --- one method per README command
    def lifecycle_get(self, out: str) -> None:
        assert out.strip() == "active [3]", out

    def echo_answer(self, proc: subprocess.Popen) -> None:
        # a user starts the echo before asking; here: wait until it listens (our peer is the other subscriber)
        assert self.peer.spin_until(lambda: self.peer.node.count_subscribers("/groma/answer") >= 2, 30)

    def pub_query(self, out: str) -> None:
        assert f"publishing #1: std_msgs.msg.String(data='{QUERY}')" in out, out

    def wait(self) -> None:
        import yaml

        for proc, line in self.background:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, (line, out)
            answer = yaml.safe_load(out.split("\n---")[0])
            assert answer["status"] == 0 and answer["query"] == QUERY, answer
            assert self.camera.sent_header(answer["header"]), answer["header"]
            assert answer["detections"]["header"] == answer["header"]
            assert answer["query_id"].startswith("groma-")
        self.background.clear()

    def send_goal(self, out: str) -> None:
        assert "Goal accepted with ID" in out and "Goal finished with status: SUCCEEDED" in out, out
        [result] = _yaml_after("Result:", out)
        answer = result["answer"]
        assert answer["status"] == 0 and answer["task"] == 2 and answer["query"] == "describe the image", answer
        assert self.camera.sent_header(answer["header"])
        partial = [f["partial_text"] for f in _yaml_after("Feedback:", out) if f["stage"] == 2]
        assert partial and all(b.startswith(a) for a, b in zip(partial, partial[1:], strict=False)), partial
        assert answer["raw_text"].startswith(partial[-1]), (partial, answer["raw_text"])

    def param_get(self, out: str) -> None:
        assert out.strip() == "Double value is: 0.0", out

    def param_set_valid(self, out: str) -> None:
        assert out.strip() == "Set parameter successful", out
        assert get_parameters(self.peer, "/groma", ["score_threshold"]) == {"score_threshold": 0.3}

    def param_set_refused(self, out: str) -> None:
        assert out.startswith("Setting parameter failed") and "1.5" in out, out
        assert get_parameters(self.peer, "/groma", ["score_threshold"]) == {"score_threshold": 0.3}

    def param_dump(self, out: str) -> None:
        import yaml

        dump = yaml.safe_load((self.cwd / "groma_params.yaml").read_text())
        assert list(dump) == ["/groma"], dump
        values = _flatten(dump["/groma"]["ros__parameters"])
        assert values["score_threshold"] == 0.3 and values["model.path"] == ""
        assert get_parameters(self.peer, "/groma", list(values)) == values

    def deactivate(self, out: str) -> None:
        from lifecycle_msgs.msg import State

        assert out.strip() == "Transitioning successful", out
        assert self.peer.state() == State.PRIMARY_STATE_INACTIVE

    def activate(self, out: str) -> None:
        from groma_ros.msg import GroundedAnswer
        from lifecycle_msgs.msg import State

        assert out.strip() == "Transitioning successful", out
        assert self.peer.state() == State.PRIMARY_STATE_ACTIVE
        assert self.peer.spin_until(self.peer.matched, 30)
        # activate subscribes anew: until the streaming camera's next frame arrives the answer is NO_IMAGE
        deadline = time.monotonic() + 30
        answer = self.peer.ask("where is the blue box?", timeout=60)
        while answer.status == GroundedAnswer.NO_IMAGE and time.monotonic() < deadline:
            self.peer.pause(0.2)
            answer = self.peer.ask("where is the blue box?", timeout=60)
        assert answer.status == GroundedAnswer.OK and self.camera.sent_header(answer.header), answer.error

    def interface_show(self, out: str) -> None:
        shown = [line for line in out.splitlines() if not line.startswith("\t")]
        assert shown == (ROOT / "msg" / "GroundedAnswer.msg").read_text().splitlines()
        assert "\tbuiltin_interfaces/Time stamp" in out  # nested types expanded


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.skipif(bool(REASON), reason=REASON or "-")
def test_readme_tour_against_a_running_node(tmp_path):
    import rclpy

    from tests.support.node_harness import Peer

    env = ros_tool_env(package_prefix(tmp_path / "prefix"), TMPDIR=str(tmp_path))
    shell = tmp_path / "shell"
    shell.mkdir()
    rclpy.init()
    peer = Peer("cli_test_user")
    camera = Camera(peer)
    launch = start_in_shell_group(shlex.split(START_LINE), tmp_path / "launch.log", env, cwd=shell)
    reloaded = None
    try:
        camera.start()
        assert peer.spin_until(lambda: peer.matched() and peer.node.count_subscribers("/camera/color/image_raw") > 0,
                               START_TIMEOUT), (tmp_path / "launch.log").read_text()[-4000:]
        # A user's shell has met the node before the first command: the ros2 daemon has discovered it.
        ros2(["daemon", "start"], env)
        listed = ""
        for _ in range(60):
            listed = ros2(["node", "list"], env, check=False).stdout
            if "/groma\n" in listed:
                break
            time.sleep(0.5)
        assert "/groma\n" in listed, f"the ros2 daemon does not list /groma: {listed!r}"
        tour = Tour(env, shell, peer, camera)
        for line in TOUR:
            tour.run(line)
        first_dump = (shell / "groma_params.yaml").read_text()

        # The dump is a params file: a node started from it has the same parameters (score_threshold 0.3 included).
        interrupt(launch)  # ros2 launch passes SIGINT on to the node
        reloaded = start_in_shell_group(["groma_node", "--ros-args", "--params-file", "groma_params.yaml"],
                                        tmp_path / "reloaded.log", env, cwd=shell)
        assert peer.spin_until(peer.get_state.service_is_ready, START_TIMEOUT), (tmp_path / "reloaded.log").read_text()
        for _ in range(10):  # the daemon may still list the stopped node for a moment
            again = ros2(["param", "dump", "/groma"], env, check=False)
            if again.returncode == 0:
                break
            time.sleep(1.0)
        import yaml

        assert yaml.safe_load(again.stdout) == yaml.safe_load(first_dump), again.stdout
    finally:
        camera.stopped.set()
        interrupt(launch)
        if reloaded is not None:
            interrupt(reloaded)
        stop_daemon(env)
        peer.close()
        rclpy.shutdown()
