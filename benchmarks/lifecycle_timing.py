#!/usr/bin/env python3
"""How long each lifecycle transition takes, and how soon a reactivated node answers (not a test).

A lifecycle manager that pauses perception (deactivate) and resumes it (activate) must not pay a model load:
configure loads the model, activate only subscribes. The node starts with ``autostart:=false``; the script
drives configure, activate, a query, deactivate, activate, a query (timing the second activate up to its first
OK answer), deactivate, cleanup, through the standard lifecycle services.

    python benchmarks/lifecycle_timing.py                   # embedded model, 5 rounds
    python benchmarks/lifecycle_timing.py --model /models/groma-7b-finetune --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.node_harness import Peer, benchmark_model_dir, ros_env, start_node, stop_node


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="deactivate/activate rounds")
    ap.add_argument("--model", help="model directory (default: embedded model, else a tiny random one)")
    ap.add_argument("--domain", type=int, default=None)
    args = ap.parse_args(argv)
    ros_env(args.domain)
    import rclpy
    from lifecycle_msgs.msg import Transition

    with tempfile.TemporaryDirectory(prefix="groma_lifecycle_") as tmp:
        model, label = (Path(args.model), Path(args.model).name) if args.model else benchmark_model_dir(Path(tmp))
        rclpy.init()
        proc = start_node(model, Path(tmp) / "node.log", "-p", "autostart:=false", node_name="groma_lc")
        peer = Peer("lifecycle_manager", node_name="groma_lc")
        try:
            peer.spin_until(peer.matched, 60)

            def timed(transition: int) -> float:
                t0 = time.perf_counter()
                if not peer.lifecycle(transition, timeout=600):
                    raise RuntimeError(f"transition {transition} failed; see {tmp}/node.log")
                return (time.perf_counter() - t0) * 1000.0

            def first_answer_ms(t0: float) -> float:
                while True:
                    peer.publish_frame(settle_s=0.01)
                    if peer.ask("where is the red box?").status == 0:
                        return (time.perf_counter() - t0) * 1000.0

            configure = timed(Transition.TRANSITION_CONFIGURE)
            activate = timed(Transition.TRANSITION_ACTIVATE)
            peer.wait_active()
            first_answer_ms(time.perf_counter())
            deactivate, reactivate, answer = [], [], []
            for _ in range(args.rounds):
                deactivate.append(timed(Transition.TRANSITION_DEACTIVATE))
                t0 = time.perf_counter()
                reactivate.append(timed(Transition.TRANSITION_ACTIVATE))
                answer.append(first_answer_ms(t0))
            timed(Transition.TRANSITION_DEACTIVATE)
            cleanup = timed(Transition.TRANSITION_CLEANUP)
        finally:
            stop_node(proc)
            peer.close()
            rclpy.shutdown()
    med = statistics.median
    print(f"model: {label}; times through the lifecycle services, ms (median of {args.rounds} rounds)")
    print(f"configure (loads the model) {configure:9.1f}")
    print(f"activate (first)            {activate:9.1f}")
    print(f"deactivate                  {med(deactivate):9.1f}")
    print(f"activate again              {med(reactivate):9.1f}")
    print(f"activate -> first OK answer {med(answer):9.1f}   (a new subscription must first get a frame)")
    print(f"cleanup (frees the model)   {cleanup:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
