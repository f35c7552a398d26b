#!/usr/bin/env python3
"""CPU and memory of an idle, active node while a camera streams into it (not a test).

An idle node must cost almost nothing per frame (callbacks only store the message; decoding waits for a
query), or it steals the robot's CPU. A peer publishes at ``--fps`` for ``--seconds``; the node process is
sampled once a second with psutil (CPU % of one core, RSS). Target: <= 3 % of one core at 30 FPS VGA rgb8.

    python benchmarks/camera_ingest.py                               # 640x480 rgb8, 1280x720 rgb8, VGA jpeg
    python benchmarks/camera_ingest.py --seconds 300 --cases vga     # the issue's 5-minute run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.node_harness import Peer, benchmark_model_dir, ros_env, scene_image, start_node, stop_node

CASES = {"vga": (640, 480, "raw"), "hd": (1280, 720, "raw"), "vga_jpeg": (640, 480, "compressed")}


def run_case(model: Path, workdir: Path, name: str, fps: float, seconds: float, verbose: bool = False) -> dict:
    import psutil
    from std_msgs.msg import Header

    from groma_ros.ros.image_codec import cv2_to_compressed_imgmsg, cv2_to_imgmsg

    width, height, transport = CASES[name]
    node_name = f"groma_ingest_{name}"
    proc = start_node(model, workdir / f"{name}.log", "-p", f"image_transport:={transport}", node_name=node_name)
    peer = Peer(f"ingest_{name}", node_name=node_name)
    try:
        if not peer.wait_active(compressed=transport == "compressed"):
            raise RuntimeError((workdir / f"{name}.log").read_text())
        image = scene_image(width, height)
        msg = (cv2_to_compressed_imgmsg(image[:, :, ::-1].copy(), "jpeg") if transport == "compressed"
               else cv2_to_imgmsg(image, "rgb8", Header()))
        msg.header.frame_id = "cam_optical_frame"
        pub = peer.compressed if transport == "compressed" else peer.camera
        node = psutil.Process(proc.pid)
        peer.pause(2.0)  # let the node settle after activation
        node.cpu_percent(None)
        cpu, rss, sent, late = [], [node.memory_info().rss], 0, 0
        period = 1.0 / fps if fps > 0 else float("inf")
        t0 = time.perf_counter()
        next_frame, next_sample = t0, t0 + 1.0
        next_frame = t0 if fps > 0 else float("inf")
        while (now := time.perf_counter()) - t0 < seconds:
            if now >= next_frame:
                msg.header.stamp = peer.stamp_now()
                pub.publish(msg)
                sent += 1
                next_frame += period
                if now - next_frame > period:  # the publisher itself fell behind (busy machine)
                    late += 1
                    next_frame = now
            if now >= next_sample:
                cpu.append(node.cpu_percent(None))
                rss.append(node.memory_info().rss)
                next_sample += 1.0
            time.sleep(max(0.0, min(next_frame, next_sample) - time.perf_counter()))
        elapsed = time.perf_counter() - t0
        # the node's own count of frames received (diagnostics) is not needed: CPU per frame is what matters
        steady = cpu[2:] if len(cpu) > 4 else cpu
        if verbose:
            print(f"  {name} cpu samples: {' '.join(f'{c:.0f}' for c in cpu)}", flush=True)
        return {"case": name, "size": f"{width}x{height}", "transport": transport, "seconds": elapsed,
                "fps_sent": sent / elapsed, "cpu_mean_pct": statistics.fmean(steady),
                "cpu_median_pct": statistics.median(steady),
                "cpu_p95_pct": sorted(steady)[int(0.95 * (len(steady) - 1))], "rss_start_mb": rss[0] / 2**20,
                "rss_end_mb": rss[-1] / 2**20, "rss_growth_pct": 100.0 * (rss[-1] - rss[1]) / rss[1],
                "publisher_fell_behind": late}
    finally:
        stop_node(proc)
        peer.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="per case (the issue asks 300)")
    ap.add_argument("--fps", type=float, default=30.0, help="0 = no frames (the idle node's own floor)")
    ap.add_argument("--cases", default="vga,hd,vga_jpeg", help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--model", help="model directory (default: embedded model, else a tiny random one)")
    ap.add_argument("--domain", type=int, default=None)
    ap.add_argument("--verbose", action="store_true", help="print the per-second CPU samples")
    args = ap.parse_args(argv)
    ros_env(args.domain)
    import rclpy

    rows = []
    with tempfile.TemporaryDirectory(prefix="groma_ingest_") as tmp:
        model, label = (Path(args.model), Path(args.model).name) if args.model else benchmark_model_dir(Path(tmp))
        rclpy.init()
        try:
            for name in args.cases.split(","):
                rows.append(run_case(model, Path(tmp), name.strip(), args.fps, args.seconds, args.verbose))
        finally:
            rclpy.shutdown()
    print(f"model: {label}; {args.fps:g} FPS for {args.seconds:g} s per case; node idle (no queries)")
    print(f"{'case':9} {'size':>9} {'transport':>10} {'fps':>6} {'cpu %':>6} {'median':>6} {'p95':>6} {'rss0 MB':>8} "
          f"{'rss1 MB':>8} {'growth %':>8}")
    for r in rows:
        print(f"{r['case']:9} {r['size']:>9} {r['transport']:>10} {r['fps_sent']:6.1f} {r['cpu_mean_pct']:6.2f} "
              f"{r['cpu_median_pct']:6.2f} {r['cpu_p95_pct']:6.2f} {r['rss_start_mb']:8.1f} {r['rss_end_mb']:8.1f} "
              f"{r['rss_growth_pct']:8.2f}")
    print("target: <= 3 % of one core at 30 FPS VGA rgb8 (cpu % = of one core, mean of 1-s samples after 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
