"""Queries racing the model in one node process: FIFO queue then BUSY, cancel within a token, deactivate.

A long action goal (endless tiny model, 1000 tokens) keeps the worker busy while topic queries arrive, so
what the queue does is observable; every query still gets exactly one answer.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from tests.support.models import make_tiny_model_dir  # noqa: E402
from tests.support.node_harness import Peer, escaped_exceptions, start_node, stop_node  # noqa: E402

pytestmark = pytest.mark.ros
QUEUE = 2
NAME = "groma_conc"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    model = make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"), endless=True)
    log: Path = tmp_path_factory.mktemp("node") / "node.log"
    rclpy.init()
    proc = start_node(model, log, "-p", f"queue_size:={QUEUE}", "-p", "max_new_tokens:=12",
                      "-p", "max_image_age_s:=0.0", node_name=NAME)
    peer = Peer("conc_robot", node_name=NAME)
    try:
        assert peer.wait_active(), log.read_text()
        peer.publish_frame(settle_s=0.3)
        yield peer, proc, log
    finally:
        stop_node(proc)
        peer.close()
        rclpy.shutdown()
    assert not escaped_exceptions(log.read_text()), log.read_text()


def _long_goal(peer: Peer, feedback: list) -> object:
    """A goal that generates until canceled; returns once it is generating."""
    handle = peer.send_goal(Ground.Goal(query="tell me a long story", task=GroundedAnswer.VQA, max_new_tokens=1000),
                            feedback)
    assert peer.spin_until(lambda: any(f.stage == Ground.Feedback.STAGE_GENERATING for f in feedback), 30)
    return handle


def _answers_for(peer: Peer, texts: list[str]) -> dict[str, list]:
    return {t: [(at, a) for at, a in peer.received if a.query == t] for t in texts}


def test_queries_queue_in_order_then_busy(node):
    peer, proc, _ = node
    feedback: list = []
    handle = _long_goal(peer, feedback)
    texts = [f"where is the red mug number {i}?" for i in range(QUEUE + 3)]
    for t in texts:
        peer.query.publish(String(data=t))
    # the overflow is answered BUSY at once, while the long goal still runs
    assert peer.spin_until(lambda: sum(a.status == GroundedAnswer.BUSY for a in peer.answers
                                       if a.query in texts) >= 3, 15)
    peer.wait_future(handle.cancel_goal_async(), 10)
    assert peer.result_of(handle).status == GroundedAnswer.CANCELED
    assert peer.spin_until(lambda: all(_answers_for(peer, texts)[t] for t in texts), 60)
    peer.pause(0.5)
    got = _answers_for(peer, texts)
    assert all(len(v) == 1 for v in got.values()), {t: len(v) for t, v in got.items()}
    first = {t: v[0] for t, v in got.items()}
    queued = [t for t in texts if first[t][1].status != GroundedAnswer.BUSY]
    busy = [t for t in texts if first[t][1].status == GroundedAnswer.BUSY]
    assert len(queued) == QUEUE and len(busy) == 3, [(t, first[t][1].status) for t in texts]
    assert all(first[t][1].status == GroundedAnswer.OK for t in queued)
    assert all(f"queue_size={QUEUE}" in first[t][1].error for t in busy)
    # FIFO: the queued ones finish in the order they were accepted (their query_id order) ...
    by_arrival = sorted(queued, key=lambda t: first[t][0])
    assert by_arrival == sorted(queued, key=lambda t: first[t][1].query_id)
    # ... which is the order they were published in: the first QUEUE queries got the places
    assert queued == texts[:QUEUE], [(t, first[t][1].query_id, first[t][1].status) for t in texts]
    assert proc.poll() is None


def test_action_cancel_stops_within_one_token(node):
    peer, _, _ = node
    feedback: list = []
    handle = _long_goal(peer, feedback)  # (the tiny model's 1024-token context ends it after ~600 tokens)
    assert peer.spin_until(lambda: sum(f.stage == Ground.Feedback.STAGE_GENERATING for f in feedback) >= 20, 30)
    cancel = handle.cancel_goal_async()
    assert peer.spin_until(cancel.done, 10)
    seen_at_cancel = sum(f.stage == Ground.Feedback.STAGE_GENERATING for f in feedback)
    answer = peer.result_of(handle)
    peer.pause(0.2)
    pieces = [f for f in feedback if f.stage == Ground.Feedback.STAGE_GENERATING]
    assert answer.status == GroundedAnswer.CANCELED, (answer.status, answer.error, answer.completion_tokens)
    # the node sets the cancel flag before it replies; decode polls it before every token, so at most the
    # token in flight follows (+1 for a feedback message still on the wire when the reply overtook it)
    after = len(pieces) - seen_at_cancel
    print(f"\ncancel: {seen_at_cancel} tokens streamed before the cancel reply, {after} after; "
          f"completion_tokens={answer.completion_tokens}")
    assert after <= 2, (seen_at_cancel, len(pieces), answer.completion_tokens)
    assert 0 < answer.completion_tokens < 1000
    assert len(pieces) <= answer.completion_tokens  # one feedback per decoded piece (byte tokens may merge)
    assert pieces[-1].partial_text == answer.text


def test_deactivate_answers_running_and_queued_queries_canceled(node):
    peer, proc, _ = node
    feedback: list = []
    handle = _long_goal(peer, feedback)
    texts = [f"find the blue box {i}" for i in range(QUEUE)]
    for t in texts:
        peer.query.publish(String(data=t))
    peer.pause(0.3)
    t0 = time.monotonic()
    assert peer.lifecycle(Transition.TRANSITION_DEACTIVATE)
    running = peer.result_of(handle)
    assert running.status == GroundedAnswer.CANCELED, running.error
    assert peer.spin_until(lambda: all(_answers_for(peer, texts)[t] for t in texts), 10)
    print(f"\ndeactivate with 1 running + {QUEUE} queued: answered in {time.monotonic() - t0:.2f} s")
    for t, items in _answers_for(peer, texts).items():
        assert len(items) == 1 and items[0][1].status == GroundedAnswer.CANCELED, (t, items[0][1].error)
    # reactivate: the node serves again
    assert peer.lifecycle(Transition.TRANSITION_ACTIVATE)
    assert peer.wait_active()
    peer.publish_frame(settle_s=0.3)
    assert peer.ask("where is the mug again?").status == GroundedAnswer.OK
    assert proc.poll() is None
