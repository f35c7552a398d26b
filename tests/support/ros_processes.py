"""Run a Python snippet as a separate ROS 2 process (real DDS between processes, no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def start_python(code: str, tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    """Start ``code`` in a child Python with the test's ROS environment; output goes to a log file."""
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(code))
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed by the OS with the child
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(script), *args], stdout=log, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """Interrupt a child (SIGINT, as ``ros2 run`` does on Ctrl-C), then kill it if it hangs."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def log_of(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.log").read_text()
