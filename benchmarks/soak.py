#!/usr/bin/env python3
"""Soak: many queries interleaved with a fast camera stream into one node process (a check, not a test).

Catches what short tests cannot: answers lost or duplicated under load, memory that creeps per frame or
per query, latency that drifts as caches and pools fill. Frames go out at ``--fps``; a query is due every
``frames/queries`` frames and is sent once the previous one is answered (paced, so latency means latency).
Checks (exit code 1 if any fails): every query answered exactly once, RSS growth after warm-up < 5 %,
last-decile p50 latency <= ``--max-drift`` x first-decile p50.

    python benchmarks/soak.py                                   # 1,000 queries, 20,000 frames at 100 FPS (~200 s)
    python benchmarks/soak.py --queries 200 --frames 4000       # short variant
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.node_harness import Peer, benchmark_model_dir, ros_env, scene_image, start_node, stop_node


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def soak(peer: Peer, pid: int, args: argparse.Namespace) -> dict:
    import psutil
    from std_msgs.msg import Header, String

    from groma_ros.ros.image_codec import cv2_to_imgmsg

    width, height = (int(v) for v in args.size.lower().split("x"))
    frames = [cv2_to_imgmsg(scene_image(width, height, seed=i), "rgb8", Header(frame_id="cam_optical_frame"))
              for i in range(8)]
    node = psutil.Process(pid)
    every = max(1, args.frames // max(1, args.queries))
    sent_at: dict[str, float] = {}
    latency: dict[str, float] = {}
    rss: list[tuple[int, int]] = []  # (answered so far, rss)
    frames_sent = queries_sent = 0
    streaming_until = t_stream = time.perf_counter()
    in_flight: str | None = None
    seen = 0
    t0 = time.perf_counter()
    next_frame = next_sample = t0
    deadline = t0 + args.max_seconds
    while time.perf_counter() < deadline and (frames_sent < args.frames or queries_sent < args.queries
                                               or in_flight is not None):
        now = time.perf_counter()
        if frames_sent < args.frames and now >= next_frame:
            msg = frames[frames_sent % len(frames)]
            msg.header.stamp = peer.stamp_now()
            peer.camera.publish(msg)
            frames_sent += 1
            streaming_until = time.perf_counter()
            next_frame = max(next_frame + 1.0 / args.fps, now - 0.1)
        due = queries_sent < args.queries and (frames_sent >= (queries_sent + 1) * every or frames_sent >= args.frames)
        if in_flight is None and due and frames_sent > 0:
            text = f"where is the red mug? #{queries_sent}"
            sent_at[text] = time.perf_counter()
            peer.query.publish(String(data=text))
            in_flight, queries_sent = text, queries_sent + 1
        peer.spin_once(0.0)
        for at, answer in peer.received[seen:]:
            if answer.query in sent_at and answer.query not in latency and answer.status == 0:  # OK answers only
                latency[answer.query] = (at - sent_at[answer.query]) * 1000.0
            if answer.query == in_flight:
                in_flight = None
        seen = len(peer.received)
        if now >= next_sample:
            rss.append((len(latency), node.memory_info().rss))
            next_sample += 1.0
        wait = min(next_frame, next_sample) - time.perf_counter()
        if wait > 0 and in_flight is not None:
            peer.spin_once(min(wait, 0.005))
        elif wait > 0:
            time.sleep(min(wait, 0.005))
    peer.pause(2.0)  # stragglers and duplicates
    elapsed = time.perf_counter() - t0
    rss.append((len(latency), node.memory_info().rss))
    return {"sent_at": sent_at, "latency": latency, "rss": rss, "frames_sent": frames_sent,
            "queries_sent": queries_sent, "elapsed": elapsed, "answers": list(peer.answers),
            "streaming_until": streaming_until, "t_stream": t_stream}


def report(r: dict, args: argparse.Namespace) -> bool:
    counts = collections.Counter(a.query for a in r["answers"] if a.query in r["sent_at"])
    lost = [q for q in r["sent_at"] if counts[q] == 0]
    dup = [q for q, c in counts.items() if c > 1]
    stray = [a.query for a in r["answers"] if a.query not in r["sent_at"]]
    ids = [a.query_id for a in r["answers"]]
    statuses = collections.Counter(a.status for a in r["answers"])
    ordered = [r["latency"][q] for q in sorted(r["latency"], key=lambda q: r["sent_at"][q])]
    # drift is judged on queries sent while frames were streaming (the rest run on an unloaded node)
    during = [r["latency"][q] for q in sorted(r["latency"], key=lambda q: r["sent_at"][q])
              if r["sent_at"][q] <= r["streaming_until"]]
    decile = max(1, len(during) // 10)
    first, last = p50(during[:decile]), p50(during[-decile:])
    warm = next((m for n, m in r["rss"] if n >= max(1, len(ordered) // 10)), r["rss"][0][1])
    end = r["rss"][-1][1]
    growth = 100.0 * (end - warm) / warm
    checks = {
        "every query answered exactly once": not lost and not dup and not stray and len(set(ids)) == len(ids),
        f"RSS growth after warm-up < {args.max_rss_growth:g} %": growth < args.max_rss_growth,
        f"latency drift (last/first decile p50) <= {args.max_drift:g}": last <= args.max_drift * first,
        "all planned queries and frames sent": r["queries_sent"] == args.queries and r["frames_sent"] == args.frames,
    }
    print(f"sent {r['frames_sent']} frames and {r['queries_sent']} queries in {r['elapsed']:.1f} s "
          f"({r['frames_sent'] / r['elapsed']:.0f} FPS)")
    print(f"answers {len(r['answers'])}: lost {len(lost)}, duplicated {len(dup)}, stray {len(stray)}; "
          f"statuses {dict(sorted(statuses.items()))} (0=OK, 4=BUSY, 2=STALE)")
    p95 = sorted(ordered)[int(0.95 * (len(ordered) - 1))]
    print(f"latency of OK answers, ms: p50 {p50(ordered):.1f}, p95 {p95:.1f}, "
          f"max {max(ordered):.1f}")
    print(f"{len(during)} OK answers to queries sent while streaming: first-decile p50 {first:.1f} ms -> "
          f"last-decile p50 {last:.1f} ms ({last / first:.2f}x)")
    print(f"node RSS MB: start {r['rss'][0][1] / 2**20:.1f}, after warm-up {warm / 2**20:.1f}, "
          f"end {end / 2**20:.1f} (growth {growth:+.2f} %)")
    for name, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--fps", type=float, default=100.0)
    ap.add_argument("--size", default="320x240", help="camera frame WxH (rgb8)")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the run")
    ap.add_argument("--max-rss-growth", type=float, default=5.0, help="percent")
    ap.add_argument("--max-drift", type=float, default=1.5, help="allowed last/first decile p50 ratio")
    ap.add_argument("--model", help="model directory (default: embedded model, else a tiny random one)")
    ap.add_argument("--domain", type=int, default=None)
    args = ap.parse_args(argv)
    ros_env(args.domain)
    import rclpy

    with tempfile.TemporaryDirectory(prefix="groma_soak_") as tmp:
        model, label = (Path(args.model), Path(args.model).name) if args.model else benchmark_model_dir(Path(tmp))
        rclpy.init()
        log = Path(tmp) / "node.log"
        proc = start_node(model, log, "-p", f"max_new_tokens:={args.max_new_tokens}", "-p", "queue_size:=4")
        peer = Peer("soak_robot")
        try:
            if not peer.wait_active():
                print(log.read_text(), file=sys.stderr)
                return 1
            result = soak(peer, proc.pid, args)
            alive = proc.poll() is None
        finally:
            stop_node(proc)
            peer.close()
            rclpy.shutdown()
        print(f"model: {label}; frames {args.size} rgb8 at {args.fps:g} FPS; max_new_tokens={args.max_new_tokens}")
        ok = report(result, args) and alive
        print(f"  [{'PASS' if alive else 'FAIL'}] node process alive at the end")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
