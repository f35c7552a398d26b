#!/usr/bin/env python3
"""Exactly-once under floods, the long version of tests/ros/test_exactly_once.py (not a test; exits 1 on a loss).

A hostile client floods one node process: ``--bursts`` bursts of ``--burst`` ``~/query`` Strings back to back,
``--goals`` Ground goals at once, as many goals canceled the moment they are accepted plus ten cancel requests
each, and a round of queries and goals while the node is inactive. Every query must get exactly one answer
(OK or BUSY while active, CANCELED for canceled goals, MODEL_ERROR while inactive). Prints the counts, the time
to drain each phase and the node's RSS before and after.

    python benchmarks/flood.py                      # 5,000 queries in bursts of 100, 300 goals, 100 canceled
    python benchmarks/flood.py --bursts 50 --burst 200 --goals 1000
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.node_harness import Peer, benchmark_model_dir, ros_env, start_node, stop_node


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=50)
    ap.add_argument("--burst", type=int, default=100, help="queries per burst")
    ap.add_argument("--goals", type=int, default=300, help="goals sent at once (and as many canceled on accept / 3)")
    ap.add_argument("--model", help="model directory (default: embedded model, else a tiny random one)")
    ap.add_argument("--domain", type=int, default=None)
    args = ap.parse_args(argv)
    ros_env(args.domain)
    import psutil
    import rclpy
    from groma_ros.action import Ground
    from lifecycle_msgs.msg import Transition
    from rclpy.action import ActionClient
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    deep = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="groma_flood_") as tmp:
        model, label = (Path(args.model), Path(args.model).name) if args.model else benchmark_model_dir(Path(tmp))
        rclpy.init()
        log = Path(tmp) / "node.log"
        proc = start_node(model, log, "-p", "queue_size:=4", "-p", "max_new_tokens:=4",
                          "-p", "max_image_age_s:=0.0", node_name="groma_flood")
        peer = Peer("flood_client", node_name="groma_flood", keep_all=True)
        action = ActionClient(peer.node, Ground, f"{peer.base}/ground", goal_service_qos_profile=deep,
                              result_service_qos_profile=deep, cancel_service_qos_profile=deep)
        try:
            if not (peer.wait_active() and peer.wait_answering()):
                raise RuntimeError(log.read_text())
            peer.publish_frame(settle_s=0.3)
            node = psutil.Process(proc.pid)
            rss0 = node.memory_info().rss

            def drain(texts: list[str], phase: str, timeout: float) -> collections.Counter:
                t0 = time.perf_counter()
                by_text: dict[str, list] = collections.defaultdict(list)
                done = lambda: all(t in by_text for t in texts)  # noqa: E731
                seen = 0

                def collect() -> bool:
                    nonlocal seen
                    for _, answer in peer.received[seen:]:
                        by_text[answer.query].append(answer)
                    seen = len(peer.received)
                    return done()

                peer.spin_until(collect, timeout)
                peer.pause(1.0)
                collect()
                lost = [t for t in texts if t not in by_text]
                dup = [t for t in texts if len(by_text.get(t, [])) > 1]
                statuses = collections.Counter(by_text[t][0].status for t in texts if t in by_text)
                print(f"{phase}: {len(texts)} sent, lost {len(lost)}, duplicated {len(dup)}, "
                      f"statuses {dict(statuses)}, drained in {time.perf_counter() - t0:.1f} s")
                if lost or dup:
                    problems.append(f"{phase}: lost {len(lost)}, duplicated {len(dup)}")
                return statuses

            texts = [f"b{b} q{i} where is the red box?" for b in range(args.bursts) for i in range(args.burst)]
            for b in range(args.bursts):
                for text in texts[b * args.burst:(b + 1) * args.burst]:
                    peer.query.publish(String(data=text))
                peer.spin_once(0.0)
            drain(texts, f"topic flood ({args.bursts} x {args.burst})", 600)

            assert action.wait_for_server(timeout_sec=20)
            goals = [Ground.Goal(query=f"goal {i}") for i in range(args.goals)]
            canceled = [Ground.Goal(query=f"canceled {i}", max_new_tokens=200) for i in range(args.goals // 3)]
            futures = [action.send_goal_async(g) for g in goals + canceled]
            cancels: list = []
            for f in futures[len(goals):]:
                f.add_done_callback(lambda f: cancels.extend(f.result().cancel_goal_async() for _ in range(10)))
            peer.spin_until(lambda: all(f.done() for f in futures), 300)
            results = [f.result().get_result_async() for f in futures if f.done()]
            peer.spin_until(lambda: all(r.done() for r in results) and all(c.done() for c in cancels), 600)
            answered = collections.Counter(r.result().result.answer.query for r in results if r.done())
            missing = len(goals) + len(canceled) - sum(1 for q in answered if answered[q] == 1)
            print(f"goals: {len(goals)} + {len(canceled)} canceled on accept, {len(cancels)} cancel requests "
                  f"({sum(c.done() for c in cancels)} answered); results missing or duplicated: {missing}")
            if missing or not all(c.done() for c in cancels):
                problems.append(f"goals: {missing} results missing/duplicated")
            drain([g.query for g in goals + canceled], "goal answers on ~/answer", 60)

            peer.lifecycle(Transition.TRANSITION_DEACTIVATE)
            inactive = [f"inactive {i}" for i in range(args.burst)]
            for text in inactive:
                peer.query.publish(String(data=text))
            statuses = drain(inactive, "while inactive", 60)
            if set(statuses) != {6}:
                problems.append(f"inactive: statuses {dict(statuses)} (expected MODEL_ERROR only)")
            print(f"node RSS {rss0 / 2**20:.0f} MB -> {node.memory_info().rss / 2**20:.0f} MB; model: {label}")
        finally:
            stop_node(proc)
            peer.close()
            rclpy.shutdown()
    print("PASS: every query answered exactly once" if not problems else "FAIL: " + "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
