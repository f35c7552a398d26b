"""The README's colcon path: `colcon build` in a fresh workspace on the venv underlay, then the install space runs.

The checkout is copied into ws/src/groma_ros (as a user's clone), built with colcon (interfaces with rosidl, the
Python library and `lib/groma_ros/groma_node` by CMake), and after `source install/setup.bash` both
`ros2 run groma_ros groma_node` and `ros2 launch groma_ros groma.launch.py` answer a query, with the node's code
imported from the install space, not from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ros_tools import interrupt, skip_reason, start_in_shell_group, stop_daemon

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")
psutil = pytest.importorskip("psutil")

from groma_ros.msg import GroundedAnswer  # noqa: E402

from tests.support.node_harness import Peer  # noqa: E402

REASON = skip_reason("colcon", "ros2 run", "ros2 launch")
pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.skipif(bool(REASON), reason=REASON or "-")]
ROOT = Path(__file__).resolve().parents[2]
# what a clone does not have: git metadata, the venv, build outputs, caches
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv", "build", "install", "log", "out", "runs", "__pycache__",
                                        "*.pyc", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.egg-info")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A built workspace and the environment of a shell on the underlay (the venv, or a sourced ROS 2 install)."""
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(ROOT, ws / "src" / "groma_ros", ignore=NOT_IN_A_CLONE, symlinks=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(ws))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The checkout must not shadow the install space: only the underlay's own Python path stays.
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                        if p and Path(p).resolve() != ROOT)
    build = subprocess.run(
        ["colcon", "build", "--packages-select", "groma_ros",
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=ws, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1200)
    assert build.returncode == 0, build.stdout[-4000:] + "\n".join(
        p.read_text()[-3000:] for p in (ws / "log" / "latest_build" / "groma_ros").glob("stdout_stderr.log"))
    yield ws, env
    stop_daemon(env)


def in_install_space(command: str) -> list[str]:
    """``bash -c 'source install/setup.bash && COMMAND'`` (run it in the workspace)."""
    return ["bash", "-c", f"source install/setup.bash && {command}"]


def test_install_space_holds_the_package(workspace):
    ws, env = workspace
    install = ws / "install" / "groma_ros"
    probe = subprocess.run(in_install_space("python -c 'import groma_ros.ros.node as n, groma_ros.msg as m; "
                                                "print(n.__file__); print(m.__file__)' && ros2 pkg prefix groma_ros"),
                           cwd=ws, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    lines = probe.stdout.split()
    assert probe.returncode == 0 and len(lines) == 3, probe.stdout
    node_file, msg_file, prefix = map(Path, lines)
    assert node_file.is_relative_to(install) and msg_file.is_relative_to(install), probe.stdout
    assert prefix == install
    assert (install / "lib" / "groma_ros" / "groma_node").is_file()
    assert (install / "share" / "groma_ros" / "launch" / "groma.launch.py").is_file()
    # what a robot runs, nothing else: no training, synthetic world, test support or benchmarks
    package = node_file.parents[1]
    shipped = {p.name for p in package.iterdir()}
    assert {"model", "engine", "ros", "assets", "cli.py", "msg", "action"} <= shipped, shipped
    assert not shipped & {"training", "synthetic", "testing", "train.py", "evaluate.py", "tests", "benchmarks"}
    assert (package / "tools" / "convert.py").is_file() and not (package / "tools" / "parity.py").exists()


@pytest.mark.parametrize("start", [
    "ros2 run groma_ros groma_node --ros-args -p model.path:={model} -p model.num_threads:=1 -r image:=/cam/image_raw",
    "ros2 launch groma_ros groma.launch.py model_path:={model} image_topic:=/cam/image_raw",
], ids=["ros2_run", "ros2_launch"])
def test_installed_node_answers_a_query(workspace, model_dir, ros_context, tmp_path, start):
    ws, env = workspace
    log = tmp_path / "node.log"
    proc = start_in_shell_group(in_install_space("exec " + start.format(model=model_dir)), log, env, cwd=ws)
    peer = Peer("colcon_test_user")
    try:
        assert peer.wait_active(120), log.read_text()[-4000:]
        header = peer.publish_frame(settle_s=0.5)
        answer = peer.ask("where is the red box?", timeout=60)
        assert answer.status == GroundedAnswer.OK, (answer.error, log.read_text()[-3000:])
        assert answer.header == header and answer.model_id == model_dir.name
        executable = str(ws / "install" / "groma_ros" / "lib" / "groma_ros" / "groma_node")
        nodes = [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True) if "groma_node" in
                 " ".join(p.cmdline())]
        assert len(nodes) == 1 and executable in nodes[0], nodes
    finally:
        peer.close()
        # Ctrl-C: `ros2 run` leaves it to the terminal to signal the node too; `ros2 launch` passes it on
        interrupt(proc, whole_group="ros2 run" in start)
