#!/usr/bin/env python3
"""One node for two cameras vs one node for one camera: idle CPU, memory and query latency (not a test).

Each case starts one node process (the embedded model, else a tiny random one) and streams VGA rgb8 at
``--fps`` into each of its cameras for ``--seconds``, sampling the node once a second with psutil (CPU % of
one core, RSS); then it asks ``--queries`` REC questions on ``~/query`` while the cameras keep streaming and
reports the round-trip percentiles. Goal: two idle cameras <= 4 % of one core (<= 2 % per camera), memory of
the two-camera node within a few % of the one-camera node (one model), latency unchanged by the second stream.

    python benchmarks/multi_camera.py                       # 60 s idle + 50 queries per case
    python benchmarks/multi_camera.py --seconds 300 --queries 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.node_harness import Peer, benchmark_model_dir, ros_env, scene_image, start_node, stop_node

CASES = {
    "one camera": ((), ["/cam/image_raw"]),
    "two cameras": (("-p", "cameras:=[front, wrist]", "-r", "front/image:=/robot/front/image_raw",
                     "-r", "wrist/image:=/robot/wrist/image_raw"),
                    ["/robot/front/image_raw", "/robot/wrist/image_raw"]),
}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


def run_case(model: Path, workdir: Path, name: str, fps: float, seconds: float, queries: int) -> dict:
    import psutil
    from std_msgs.msg import Header

    from groma_ros.ros.image_codec import cv2_to_imgmsg

    extra, topics = CASES[name]
    node_name = "groma_" + name.replace(" ", "_")
    log = workdir / f"{node_name}.log"
    proc = start_node(model, log, "-p", "max_image_age_s:=0.0", *extra, node_name=node_name)
    peer = Peer(node_name + "_robot", node_name=node_name)
    cameras = [peer.image_publisher(t) for t in topics]
    stop = threading.Event()
    sent = [0]

    def stream() -> None:  # every camera at ``fps``, from its own thread as drivers do
        msg = cv2_to_imgmsg(scene_image(640, 480), "rgb8", Header(frame_id="cam_optical_frame"))
        period, next_frame = 1.0 / fps, time.perf_counter()
        while not stop.is_set():
            msg.header.stamp = peer.stamp_now()
            for pub in cameras:
                pub.publish(msg)
                sent[0] += 1
            next_frame += period
            time.sleep(max(0.0, next_frame - time.perf_counter()))

    try:
        ready = lambda: peer.matched() and all(peer.node.count_subscribers(t) > 0 for t in topics)  # noqa: E731
        if not peer.spin_until(ready, 90):
            raise RuntimeError(log.read_text())
        node = psutil.Process(proc.pid)
        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        peer.pause(2.0)
        node.cpu_percent(None)
        cpu, t0 = [], time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            peer.pause(1.0)
            cpu.append(node.cpu_percent(None))
        rss_idle = node.memory_info().rss
        fps_sent = sent[0] / len(cameras) / (time.perf_counter() - t0 + 2.0)
        rtts = []
        for i in range(queries):
            before, start = len(peer.received), time.perf_counter()
            answer = peer.ask(f"where is the red box? ({i})")
            rtts.append((peer.received[before][0] - start) * 1000.0)
            if answer.status != 0:
                raise RuntimeError(f"query {i}: status {answer.status}: {answer.error}")
        stop.set()
        streamer.join(2.0)
        return {"case": name, "cameras": len(cameras), "fps_per_camera": fps_sent,
                "cpu_mean_pct": statistics.fmean(cpu), "cpu_p95_pct": _percentile(cpu, 0.95),
                "rss_idle_mb": rss_idle / 2**20, "rss_after_mb": node.memory_info().rss / 2**20,
                "rtt_p50_ms": statistics.median(rtts), "rtt_p90_ms": _percentile(rtts, 0.9)}
    finally:
        stop.set()
        stop_node(proc)
        peer.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="idle streaming per case")
    ap.add_argument("--fps", type=float, default=30.0, help="frames per second per camera")
    ap.add_argument("--queries", type=int, default=50, help="REC queries per case while streaming")
    ap.add_argument("--model", help="model directory (default: embedded model, else a tiny random one)")
    ap.add_argument("--domain", type=int, default=None)
    args = ap.parse_args(argv)
    ros_env(args.domain)
    import rclpy

    rows = []
    with tempfile.TemporaryDirectory(prefix="groma_cams_") as tmp:
        model, label = (Path(args.model), Path(args.model).name) if args.model else benchmark_model_dir(Path(tmp))
        rclpy.init()
        try:
            for name in CASES:
                rows.append(run_case(model, Path(tmp), name, args.fps, args.seconds, args.queries))
        finally:
            rclpy.shutdown()
    print(f"model: {label}; VGA rgb8 at {args.fps:g} FPS per camera; {args.seconds:g} s idle, {args.queries} "
          "REC queries while streaming")
    print(f"{'case':12} {'fps/cam':>7} {'cpu %':>6} {'p95':>6} {'rss MB':>7} {'rtt p50':>8} {'rtt p90':>8}")
    for r in rows:
        print(f"{r['case']:12} {r['fps_per_camera']:7.1f} {r['cpu_mean_pct']:6.2f} {r['cpu_p95_pct']:6.2f} "
              f"{r['rss_idle_mb']:7.1f} {r['rtt_p50_ms']:8.1f} {r['rtt_p90_ms']:8.1f}")
    one, two = rows
    print(f"two cameras / one camera: cpu x{two['cpu_mean_pct'] / max(one['cpu_mean_pct'], 1e-9):.2f}, "
          f"rss {100 * (two['rss_idle_mb'] / one['rss_idle_mb'] - 1):+.1f} %, "
          f"rtt p50 x{two['rtt_p50_ms'] / one['rtt_p50_ms']:.2f}")
    print("goal: two idle cameras <= 4 % of one core; one model in memory; latency unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
