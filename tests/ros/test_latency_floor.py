"""The echo node behind ``benchmarks/ros_latency.py``'s rclpy floor answers every query, all three ways (callback,
thread, thread after computing), with a ``GroundedAnswer`` over real DDS from its own process."""

from __future__ import annotations

import sys

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from tests.support.node_harness import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import ros_latency  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("mode", list(ros_latency.ECHO_MODES))
def test_echo_floor_answers_every_query(ros_context, tmp_path, mode):
    name = f"echo_test{len(ros_latency.ECHO_MODES[mode])}"
    s = ros_latency.echo_series(5, ros_latency.ECHO_MODES[mode], name, tmp_path / "echo.log")
    assert len(s["rtt"]) == 5 and all(0 < r < 10_000 for r in s["rtt"])
    row = ros_latency.summarize(mode, s)
    assert row["n"] == 5 and row["overhead_p50_ms"] == row["rtt_p50_ms"]


def test_delayed_echo_reports_its_work_time(ros_context, tmp_path):
    s = ros_latency.echo_series(5, ["--work-ms", "20"], "echo_test_work", tmp_path / "echo.log")
    assert all(20.0 <= w < 2000.0 for w in s["node"])  # it computed at least as long as asked, and said so
    assert all(r > w for r, w in zip(s["rtt"], s["node"], strict=True))  # the round trip includes that time
    row = ros_latency.summarize("delayed", s)
    assert 0 < row["overhead_p50_ms"] < row["rtt_p50_ms"] - 20.0
