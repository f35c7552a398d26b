"""Drive the node with the ROS 2 tools users type: ``ros2 launch``, ``ros2 run``, ``ros2 lifecycle``, ``ros2 topic`` ...

The tools come from a ROS 2 install or, in this project's venv, from the upstream wheels that scripts/setup.sh
installs from ``shared/ros_tools``. Tests ask :func:`missing_tools` first and skip, naming what is absent.

:func:`package_prefix` lays out the checkout as an installed ROS package (an ament prefix whose share/ and lib/
entries link to the checkout, like ``colcon build --symlink-install``), so that ``ros2 launch groma_ros ...`` runs
this checkout's launch files and config, and ``ros2 run groma_ros groma_node`` this checkout's node.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# What each tool needs: the command on PATH and the Python modules it imports.
TOOL_REQUIREMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ros2 launch": (("ros2",), ("ros2launch", "launch", "launch_ros")),
    "ros2 run": (("ros2",), ("ros2run",)),
    "ros2 lifecycle": (("ros2",), ("ros2lifecycle",)),
    "ros2 topic": (("ros2",), ("ros2topic",)),
    "ros2 action": (("ros2",), ("ros2action",)),
    "ros2 param": (("ros2",), ("ros2param",)),
    "ros2 interface": (("ros2",), ("ros2interface",)),
    "colcon": (("colcon", "cmake"), ("colcon_core", "colcon_ros", "colcon_cmake")),
}
ROS2_HINT = ("ros2 tools: `bash shared/ros_tools/install.sh .venv` (scripts/setup.sh runs it when shared/ lies in or "
             "beside the checkout), or source a ROS 2 Jazzy install")
COLCON_HINT = "colcon: `pip install -r requirements/dev.txt` (scripts/setup.sh does)"


def missing_tools(*tools: str) -> list[str]:
    """The commands and Python modules that ``tools`` (keys of TOOL_REQUIREMENTS) need and this machine lacks."""
    missing: list[str] = []
    for tool in tools:
        commands, modules = TOOL_REQUIREMENTS[tool]
        missing += [f"`{c}` on PATH" for c in commands if shutil.which(c) is None]
        missing += [f"Python module {m}" for m in modules if importlib.util.find_spec(m) is None]
    return list(dict.fromkeys(missing))


def skip_reason(*tools: str) -> str:
    """A pytest skip reason naming what is missing and how to get it, or "" when everything is there."""
    lacking = [tool for tool in tools if missing_tools(tool)]
    if not lacking:
        return ""
    hints = dict.fromkeys(COLCON_HINT if tool == "colcon" else ROS2_HINT for tool in lacking)
    return f"needs {', '.join(tools)}: missing {', '.join(missing_tools(*lacking))}; {'; '.join(hints)}"


def package_prefix(prefix: Path, python: str = sys.executable) -> Path:
    """Write an ament prefix that installs this checkout as package groma_ros; returns ``prefix``.

    share/groma_ros/{launch,config}/* and package.xml link to the checkout's files (files, not folders: ros2launch
    does not follow linked folders), share/groma_ros/{msg,action}/* to the interface definitions that the
    interfaces' build installed (``ros2 interface show`` reads them from the package's share folder), and
    lib/groma_ros/groma_node starts the checkout's node with ``python``.
    Put ``prefix`` first on AMENT_PREFIX_PATH (see :func:`ros_tool_env`).
    """
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True, exist_ok=True)
    (index / "groma_ros").write_text("")
    share = prefix / "share" / "groma_ros"
    for folder, pattern in (("launch", "*.launch.py"), ("config", "*.yaml")):
        (share / folder).mkdir(parents=True, exist_ok=True)
        for source in sorted((ROOT / folder).glob(pattern)):
            link = share / folder / source.name
            link.unlink(missing_ok=True)
            link.symlink_to(source)
    built = _installed_interfaces_share()
    for folder in ("msg", "action"):
        (share / folder).mkdir(parents=True, exist_ok=True)
        for source in sorted((built / folder).glob("*")) if built is not None else []:
            link = share / folder / source.name
            link.unlink(missing_ok=True)
            link.symlink_to(source)
    (share / "package.xml").unlink(missing_ok=True)
    (share / "package.xml").symlink_to(ROOT / "package.xml")
    executable = prefix / "lib" / "groma_ros" / "groma_node"
    executable.parent.mkdir(parents=True, exist_ok=True)
    executable.write_text(f"#!{python}\nimport sys\n\nfrom groma_ros.ros.node import main\n\nsys.exit(main())\n")
    executable.chmod(0o755)
    return prefix


def _installed_interfaces_share() -> Path | None:
    """share/groma_ros of the first prefix on AMENT_PREFIX_PATH that holds our built interface definitions."""
    for entry in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        share = Path(entry) / "share" / "groma_ros"
        if entry and (share / "msg" / "GroundedAnswer.idl").is_file():
            return share
    return None


def ros_tool_env(prefix: Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment (the test's private domain, loopback) with ``prefix`` first on the ament path."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    if prefix is not None:
        env["AMENT_PREFIX_PATH"] = os.pathsep.join(
            p for p in (str(prefix), os.environ.get("AMENT_PREFIX_PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def ros2(args: Sequence[str], env: dict[str, str], timeout: float = 60.0, cwd: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ros2 ARGS`` to completion; output (stdout + stderr) in ``.stdout``; raises on failure if ``check``."""
    done = subprocess.run(["ros2", *args], env=env, cwd=cwd, timeout=timeout, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"ros2 {' '.join(args)} exited {done.returncode}:\n{done.stdout}")
    return done


def start_in_shell_group(command: Sequence[str], log_path: Path, env: dict[str, str],
                         cwd: Path | None = None) -> subprocess.Popen:
    """Start ``command`` as a terminal would start it: in a process group of its own, output to ``log_path``.

    :func:`interrupt` then delivers Ctrl-C to the whole group, as a terminal does (``ros2 launch`` and the
    nodes it started all receive SIGINT).
    """
    log = open(log_path, "w")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def interrupt(proc: subprocess.Popen, whole_group: bool = False, timeout: float = 30.0) -> int:
    """SIGINT to ``proc`` (or, as Ctrl-C in a terminal, to its whole process group); kill the group if it hangs."""
    if proc.poll() is None:
        if whole_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def stop_daemon(env: dict[str, str]) -> None:
    """Stop the ``ros2`` daemon that CLI calls spawn in the test's domain (it would outlive the test)."""
    if shutil.which("ros2") is not None:
        subprocess.run(["ros2", "daemon", "stop"], env=env, timeout=30, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def get_parameters(peer: Any, target: str, names: Sequence[str], timeout: float = 10.0) -> dict[str, Any]:
    """Values of ``names`` on node ``target`` (fully qualified) through its rcl_interfaces/GetParameters service.

    ``peer`` is a :class:`tests.support.node_harness.Peer` (its executor spins the reply in).
    """
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    client = peer.node.create_client(GetParameters, f"{target}/get_parameters")
    try:
        assert client.wait_for_service(timeout_sec=timeout), f"no {target}/get_parameters service"
        future = client.call_async(GetParameters.Request(names=list(names)))
        assert peer.wait_future(future, timeout), f"no reply from {target}/get_parameters"
        return {name: parameter_value_to_python(v) for name, v in zip(names, future.result().values, strict=True)}
    finally:
        peer.node.destroy_client(client)
