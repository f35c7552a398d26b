"""The echo node behind ``benchmarks/ros_latency.py``'s rclpy floor answers every query, both ways (callback,
thread), with a ``GroundedAnswer`` over real DDS from its own process."""

from __future__ import annotations

import sys

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from groma_ros.testing.node_harness import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import ros_latency  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture
def ros_context():
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.mark.parametrize("mode", list(ros_latency.ECHO_MODES))
def test_echo_floor_answers_every_query(ros_context, tmp_path, mode):
    name = f"echo_test{len(ros_latency.ECHO_MODES[mode])}"
    s = ros_latency.echo_series(5, ros_latency.ECHO_MODES[mode], name, tmp_path / "echo.log")
    assert len(s["rtt"]) == 5 and all(0 < r < 10_000 for r in s["rtt"])
    row = ros_latency.summarize(mode, s)
    assert row["n"] == 5 and row["overhead_p50_ms"] == row["rtt_p50_ms"]
