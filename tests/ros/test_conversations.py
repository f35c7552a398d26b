"""Referential dialogue through the node over real DDS: a conversation is pinned to its first frame, answers say
which conversation and turn they are, ended or unknown ids are refused, and ``~/query`` can hold a dialogue.
"""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from tests.support.models import make_tiny_model_dir  # noqa: E402
from tests.support.node_harness import Peer, escaped_exceptions, scene_image, start_node, stop_node  # noqa: E402

pytestmark = pytest.mark.ros
NAME = "groma_talk"


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    model = make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))
    log = tmp_path_factory.mktemp("node") / "node.log"
    rclpy.init()
    proc = start_node(model, log, "-p", "query_follows_conversation_s:=30.0", "-p", "max_image_age_s:=0.0",
                      "-p", "max_new_tokens:=6", node_name=NAME)
    peer = Peer("talking_robot", node_name=NAME)
    try:
        assert peer.wait_active(), log.read_text()
        yield peer, proc, log
    finally:
        stop_node(proc)
        peer.close()
        rclpy.shutdown()
    assert not escaped_exceptions(log.read_text()), log.read_text()


def _frame(peer: Peer, seed: int):
    return peer.publish_until_seen(scene_image(seed=seed))


def _turn(peer: Peer, query: str, conversation_id: str, **goal) -> GroundedAnswer:
    return peer.result_of(peer.send_goal(Ground.Goal(query=query, conversation_id=conversation_id, **goal)))


def test_three_turns_stay_on_the_pinned_frame(talk):
    peer, _, _ = talk
    first = _frame(peer, 1)
    answers = [_turn(peer, "where is the red box?", "kitchen")]
    newer = _frame(peer, 2)  # a newer frame arrives: the conversation stays on its own
    answers.append(_turn(peer, "and the other one?", "kitchen"))
    answers.append(_turn(peer, "what colour is it?", "kitchen", continue_conversation=True))
    for turn, answer in enumerate(answers, start=1):
        assert answer.status == GroundedAnswer.OK, (turn, answer.error)
        assert (answer.conversation_id, answer.turn) == ("kitchen", turn)
        assert answer.header == first and answer.detections.header == first
    single = peer.result_of(peer.send_goal(Ground.Goal(query="where is the red box?")))
    assert single.status == GroundedAnswer.OK and single.header == newer
    assert (single.conversation_id, single.turn) == ("", 0)


def test_interleaved_conversations_on_two_frames_do_not_mix(talk):
    peer, _, _ = talk
    a = _frame(peer, 3)
    _turn(peer, "where is the red box?", "left")
    b = _frame(peer, 4)
    _turn(peer, "where is the blue box?", "right")
    for query in ("and the other one?", "what colour is it?"):
        for conv, header in (("left", a), ("right", b)):
            answer = _turn(peer, query, conv)
            assert answer.status == GroundedAnswer.OK, answer.error
            assert answer.conversation_id == conv and answer.header == header
    assert _turn(peer, "and now?", "left").turn == 4 and _turn(peer, "and now?", "right").turn == 4


def test_unknown_ended_and_misdirected_ids_are_refused(talk):
    peer, _, _ = talk
    _frame(peer, 5)
    unknown = _turn(peer, "and the other one?", "never-started", continue_conversation=True)
    assert unknown.status == GroundedAnswer.NO_CONVERSATION and "never-started" in unknown.error
    assert unknown.conversation_id == "never-started"
    everywhere = _turn(peer, "where is the red box?", "roaming", camera="*")
    assert everywhere.status == GroundedAnswer.BAD_REQUEST and "'*'" in everywhere.error
    assert all(r.successful for r in peer.set_parameters({"conversation.idle_timeout_s": 1.0}))
    try:
        assert _turn(peer, "where is the red box?", "brief").status == GroundedAnswer.OK
        peer.pause(1.5)
        for goal in ({"continue_conversation": True}, {}):  # ended: never silently started again
            answer = _turn(peer, "and the other one?", "brief", **goal)
            assert answer.status == GroundedAnswer.NO_CONVERSATION, answer.error
            assert "expired" in answer.error
    finally:
        assert all(r.successful for r in peer.set_parameters({"conversation.idle_timeout_s": 300.0}))


def test_query_topic_holds_a_dialogue_without_ids(talk):
    peer, _, _ = talk
    first = _frame(peer, 6)
    texts = ["where is the red box?", "and the other one?", "what colour is it?"]
    answers = []
    for i, text in enumerate(texts):
        answers.append(peer.ask(text))
        if i == 0:
            _frame(peer, 7)  # newer frames do not move the dialogue
    conv = answers[0].conversation_id
    assert conv and all(a.conversation_id == conv for a in answers)
    assert [a.turn for a in answers] == [1, 2, 3]
    assert all(a.status == GroundedAnswer.OK and a.header == first for a in answers)
    # a pause longer than query_follows_conversation_s starts a new conversation on the newest frame
    assert all(r.successful for r in peer.set_parameters({"query_follows_conversation_s": 0.5}))
    peer.pause(1.0)
    newest = _frame(peer, 8)
    later = peer.ask("where is the red box?")
    assert later.status == GroundedAnswer.OK and later.conversation_id not in ("", conv)
    assert later.turn == 1 and later.header == newest
    peer.query.publish(String(data="and the other one?"))
    assert peer.spin_until(lambda: peer.answers[-1].query == "and the other one?", 30)
    assert peer.answers[-1].conversation_id == later.conversation_id and peer.answers[-1].turn == 2


def test_turns_are_answered_while_someone_watches_the_debug_image(talk):
    """A later turn has no pixels to draw on (only the pinned perception is kept): it is answered anyway."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    peer, _, _ = talk
    images: list = []
    sub = peer.node.create_subscription(Image, f"{peer.base}/debug_image", images.append,
                                        QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    try:
        header = _frame(peer, 9)
        assert peer.spin_until(lambda: sub.get_publisher_count() > 0, 10)
        first = _turn(peer, "where is the red box?", "watched")
        second = _turn(peer, "and the other one?", "watched")
        assert [first.status, second.status] == [GroundedAnswer.OK, GroundedAnswer.OK]
        assert second.turn == 2 and second.header == header
        assert peer.spin_until(lambda: images, 5) and images[0].header == header  # the first turn was drawn
    finally:
        peer.node.destroy_subscription(sub)
