"""Every query is answered exactly once, as a hostile client sees it: floods, goal bursts, cancel storms, every
lifecycle state, cameras that do not stamp. The node runs in its own process; everything crosses real DDS.

The client side uses histories as deep as its bursts (KEEP_ALL), as the README's guarantee asks of clients;
the node's intake and answers are KEEP_ALL, so nothing is dropped in between. ``benchmarks/flood.py`` runs the
long version of the same checks.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")

from builtin_interfaces.msg import Time  # noqa: E402
from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from tests.support.models import make_tiny_model_dir  # noqa: E402
from tests.support.node_harness import Peer, escaped_exceptions, scene_image, start_node, stop_node  # noqa: E402

pytestmark = pytest.mark.ros
DEEP = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
ANSWERED = {GroundedAnswer.OK, GroundedAnswer.BUSY}


class HostilePeer(Peer):
    """The harness peer plus an action client whose services keep every request and response."""

    def __init__(self, name: str, node_name: str) -> None:
        super().__init__(name, node_name)
        self.deep_action = ActionClient(self.node, Ground, f"{self.base}/ground", goal_service_qos_profile=DEEP,
                                        result_service_qos_profile=DEEP, cancel_service_qos_profile=DEEP)

    def handshake(self) -> None:
        """Until the node has matched this client's response readers, DDS drops its replies (discovery is not
        symmetric: ``wait_for_server`` only says the client sees the server). Probe until a reply comes back."""
        assert self.deep_action.wait_for_server(timeout_sec=20)
        for attempt in range(20):
            probe = self.deep_action.send_goal_async(Ground.Goal(query=f"handshake {attempt}", camera="no-such"))
            if self.spin_until(probe.done, 1.0):
                probe.result().get_result_async()
                return
        raise AssertionError("the action server never replied")

    def send_goals(self, goals: list[Ground.Goal], cancel_on_accept: bool = False) -> list:
        """Send all goals at once; returns their goal-response futures (cancels each as soon as accepted)."""
        if not getattr(self, "_shook_hands", False):
            self.handshake()
            self._shook_hands = True
        futures = [self.deep_action.send_goal_async(g) for g in goals]
        if cancel_on_accept:
            for f in futures:
                f.add_done_callback(lambda f: f.result().accepted and f.result().cancel_goal_async())
        return futures


@pytest.fixture(scope="module")
def node(model_dir, ros_context, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    proc = start_node(model_dir, log, "-p", "queue_size:=4", "-p", "max_new_tokens:=3",
                      "-p", "max_image_age_s:=0.0", node_name="groma_flood")
    peer = HostilePeer("flood_client", "groma_flood")
    try:
        assert peer.wait_active(), log.read_text()
        peer.publish_until_seen()
        yield peer, proc, log
    finally:
        stop_node(proc)
        peer.close()
    assert not escaped_exceptions(log.read_text()), log.read_text()


def test_query_flood_is_answered_exactly_once(node):
    peer, proc, _ = node
    texts = [f"burst {b} query {i}: where is the red box?" for b in range(10) for i in range(50)]
    for b in range(10):  # 10 bursts of 50, back to back
        for text in texts[b * 50:(b + 1) * 50]:
            peer.query.publish(String(data=text))
        peer.spin_once(0.0)
    assert peer.spin_until(lambda: all(peer.answers_to(texts).values()), 180)
    peer.pause(0.5)  # a duplicate would arrive by now
    got = peer.answers_to(texts)
    counts = collections.Counter(len(v) for v in got.values())
    assert counts == {1: len(texts)}, counts
    statuses = collections.Counter(v[0].status for v in got.values())
    assert set(statuses) <= ANSWERED and statuses[GroundedAnswer.OK] >= 4, statuses
    assert len({v[0].query_id for v in got.values()}) == len(texts)
    print(f"\n500 queries in bursts of 50: {dict(statuses)} (OK={GroundedAnswer.OK}, BUSY={GroundedAnswer.BUSY})")
    assert proc.poll() is None


def test_goal_burst_and_cancel_storm_each_get_one_result(node):
    peer, proc, _ = node
    goals = [Ground.Goal(query=f"goal {i}: where is the blue box?") for i in range(30)]
    storm = [Ground.Goal(query=f"canceled goal {i}", task=GroundedAnswer.VQA, max_new_tokens=200) for i in range(20)]
    responses = peer.send_goals(goals) + peer.send_goals(storm, cancel_on_accept=True)
    assert peer.spin_until(lambda: all(f.done() for f in responses), 60), sum(f.done() for f in responses)
    handles = [f.result() for f in responses]
    assert all(h.accepted for h in handles)
    # 280 more cancel requests back to back, for goals that run, wait or have finished
    cancels = [handles[30 + i % 20].cancel_goal_async() for i in range(280)]
    results = [h.get_result_async() for h in handles]
    assert peer.spin_until(lambda: all(f.done() for f in results + cancels), 120), \
        (sum(f.done() for f in results), sum(f.done() for f in cancels))
    answers = [f.result().result.answer for f in results]
    assert collections.Counter(a.query for a in answers) == {g.query: 1 for g in goals + storm}
    assert {a.status for a in answers[:30]} <= ANSWERED
    assert {a.status for a in answers[30:]} <= ANSWERED | {GroundedAnswer.CANCELED}
    print(f"\ngoal burst: {collections.Counter(a.status for a in answers[:30])}; cancel storm: "
          f"{collections.Counter(a.status for a in answers[30:])}; 300 cancel requests all answered")
    # each goal's answer is also on ~/answer, once
    texts = [g.query for g in goals + storm]
    assert peer.spin_until(lambda: all(peer.answers_to(texts).values()), 20)
    assert all(len(v) == 1 for v in peer.answers_to(texts).values())
    assert proc.poll() is None


def test_control_characters_and_odd_text_get_one_answer_each(node):
    peer, _, _ = node
    # (a NUL cannot travel: DDS strings end there, so the node would see another text than the sender)
    texts = ["\x85\x9f where is the red box?", "\x80\x81\x82", "\u200b\u200e", "\x1b[2J where?"]
    for text in texts:
        for _ in range(2):
            peer.query.publish(String(data=text))
    assert peer.spin_until(lambda: all(len(v) >= 2 for v in peer.answers_to(texts).values()), 30)
    peer.pause(0.5)
    got = peer.answers_to(texts)
    assert {t: len(v) for t, v in got.items()} == {t: 2 for t in texts}
    assert {a.status for a in got["\x80\x81\x82"]} == {GroundedAnswer.BAD_REQUEST}  # nothing visible to ask


def test_camera_without_stamps_is_answered_from_its_last_frame(node):
    peer, _, log = node
    zero = Time(sec=0, nanosec=0)
    for _ in range(8):  # a whole buffer (frame_buffer_size 8) from a camera that never stamps
        peer.publish_frame(scene_image(seed=3), stamp=zero, settle_s=0.02)
    peer.pause(0.2)
    first = peer.result_of(peer.send_goal(Ground.Goal(task=GroundedAnswer.DETECT)))
    peer.publish_frame(np.zeros((240, 320, 3), np.uint8), stamp=zero, settle_s=0.2)
    second = peer.result_of(peer.send_goal(Ground.Goal(task=GroundedAnswer.DETECT)))
    assert first.status == second.status == GroundedAnswer.OK
    assert first.header.stamp == second.header.stamp == zero
    centres = lambda a: [d.bbox.center.position.x for d in a.detections.detections]  # noqa: E731
    assert centres(first) != centres(second)  # not the first frame's cached perception
    assert log.read_text().count("does not stamp its frames") == 1


def test_every_lifecycle_state_answers(model_dir, ros_context, tmp_path):
    log = tmp_path / "node.log"
    proc = start_node(model_dir, log, "-p", "autostart:=false", "-p", "max_image_age_s:=0.0",
                      node_name="groma_states")
    peer = HostilePeer("states_client", "groma_states")
    try:
        assert peer.wait_answering(), log.read_text()
        expected: dict[str, str] = {}

        def ask_all(tag: str, status_text: str) -> None:
            texts = [f"{tag} query {i}" for i in range(5)]
            for text in texts:
                peer.query.publish(String(data=text))
                expected[text] = status_text
            goals = peer.send_goals([Ground.Goal(query=f"{tag} goal {i}") for i in range(3)])
            assert peer.spin_until(lambda: all(f.done() for f in goals), 60)
            for i, f in enumerate(goals):
                expected[f"{tag} goal {i}"] = status_text
                f.result().get_result_async()

        def all_answered(tag: str) -> bool:
            """Before the next transition: a query still in flight is judged in the state that takes it."""
            return peer.spin_until(lambda: all(v for t, v in peer.answers_to(list(expected)).items()
                                               if t.startswith(tag)), 30)

        ask_all("unconfigured", "state: unconfigured")
        assert all_answered("unconfigured")
        # queries sent while configure loads the model are answered after it (the executor is busy meanwhile)
        assert peer.change_state.wait_for_service(timeout_sec=10)
        configure = peer.change_state.call_async(
            ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
        ask_all("configuring", "")
        assert peer.spin_until(configure.done, 60) and configure.result().success
        assert peer.state() == State.PRIMARY_STATE_INACTIVE and all_answered("configuring")
        ask_all("inactive", "state: inactive")
        assert all_answered("inactive")
        assert peer.lifecycle(Transition.TRANSITION_ACTIVATE)
        assert peer.wait_active()
        peer.publish_until_seen()
        ask_all("active", "")
        assert all_answered("active")
        assert peer.lifecycle(Transition.TRANSITION_DEACTIVATE)
        assert peer.lifecycle(Transition.TRANSITION_CLEANUP)
        ask_all("cleaned", "state: unconfigured")
        assert all_answered("cleaned")
        assert peer.lifecycle(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        ask_all("finalized", "state: finalized")
        assert peer.spin_until(lambda: all(peer.answers_to(list(expected)).values()), 60), \
            [t for t, v in peer.answers_to(list(expected)).items() if not v]
        peer.pause(0.5)
        for text, answers in peer.answers_to(list(expected)).items():
            assert len(answers) == 1, (text, len(answers))
            answer = answers[0]
            if expected[text]:
                assert answer.status == GroundedAnswer.MODEL_ERROR and expected[text] in answer.error, \
                    (text, answer.status, answer.error)
            elif text.startswith("active"):
                assert answer.status in ANSWERED, (text, answer.status, answer.error)
            else:  # sent during configure: answered after it, in whatever state it left
                assert answer.status in {GroundedAnswer.MODEL_ERROR, GroundedAnswer.NO_IMAGE}, (text, answer.error)
        assert proc.poll() is None
    finally:
        stop_node(proc)
        peer.close()
    assert not escaped_exceptions(log.read_text()), log.read_text()


def test_ctrl_c_answers_running_and_waiting_queries_before_exit(ros_context, tmp_path):
    model = make_tiny_model_dir(tmp_path / "endless", endless=True)
    log = tmp_path / "node.log"
    proc = start_node(model, log, "-p", "queue_size:=8", "-p", "max_image_age_s:=0.0", node_name="groma_ctrl_c")
    peer = HostilePeer("ctrl_c_client", "groma_ctrl_c")
    try:
        assert peer.wait_active(), log.read_text()
        peer.publish_until_seen()
        [running] = peer.send_goals([Ground.Goal(query="a long story", task=GroundedAnswer.VQA, max_new_tokens=1000)])
        assert peer.spin_until(running.done, 20)
        result = running.result().get_result_async()
        texts = [f"waiting {i}" for i in range(5)]
        for text in texts:
            peer.query.publish(String(data=text))
        peer.pause(0.5)
        proc.send_signal(2)  # Ctrl-C
        assert peer.spin_until(lambda: result.done() and all(peer.answers_to(texts).values()), 20), \
            log.read_text()[-3000:]
        assert result.result().result.answer.status == GroundedAnswer.CANCELED
        assert all(len(v) == 1 and v[0].status == GroundedAnswer.CANCELED
                   for v in peer.answers_to(texts).values())
        assert proc.wait(15) == 0
    finally:
        stop_node(proc)
        peer.close()
    assert not escaped_exceptions(log.read_text()), log.read_text()
