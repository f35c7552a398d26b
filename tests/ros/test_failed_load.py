"""A model that cannot load: configure fails, the node stays up, says why on /diagnostics and answers every query
with the reason. The node runs in its own process; everything crosses real DDS."""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer  # noqa: E402
from lifecycle_msgs.msg import State  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from tests.support.node_harness import Peer, escaped_exceptions, start_node, stop_node  # noqa: E402

pytestmark = pytest.mark.ros


def test_a_model_that_does_not_load_is_reported_and_every_query_answered(ros_context, tmp_path):
    missing = tmp_path / "no-such-model"
    log = tmp_path / "node.log"
    proc = start_node(missing, log, "-p", "diagnostics_period_s:=0.2", node_name="groma_no_model")
    peer = Peer("no_model_client", "groma_no_model")
    diagnostics: list[DiagnosticArray] = []
    peer.node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append,
                                  QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    try:
        def reported() -> list[DiagnosticStatus]:
            return [s for d in diagnostics for s in d.status
                    if s.name.startswith("/groma_no_model") and s.level == DiagnosticStatus.ERROR]

        assert peer.spin_until(lambda: bool(reported()), 60), log.read_text()
        status = reported()[-1]
        assert "model failed to load" in status.message and str(missing) in status.message, status.message
        assert {kv.key: kv.value for kv in status.values}["state"] == "unconfigured"
        assert peer.state() == State.PRIMARY_STATE_UNCONFIGURED
        assert proc.poll() is None  # a failed configure leaves the node serving answers, not dead
        answer = peer.result_of(peer.send_goal(Ground.Goal(query="where is the mug?")))
        assert answer.status == GroundedAnswer.MODEL_ERROR and "unconfigured" in answer.error, answer.error
        assert peer.wait_answering(), log.read_text()
        everything = peer.answers + peer.probe_answers
        assert peer.probe_answers and all(a.status == GroundedAnswer.MODEL_ERROR for a in everything)
    finally:
        stop_node(proc)
        peer.close()
    text = log.read_text()
    assert "could not load the model" in text and not escaped_exceptions(text), text
