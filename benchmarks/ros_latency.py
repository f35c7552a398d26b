#!/usr/bin/env python3
"""``~/query`` published → ``~/answer`` received, through a node in its own process (not a test).

Two series: follow-up queries on one frame (its perception and prompt prefix are cached) and queries on
a fresh frame each time (perception runs for every query). The node reports the engine's own time per answer
(``total_ms``: the engine's wall time, its stages plus prompt building and parsing); round trip minus that is what
ROS and the node add (DDS both ways, callbacks, the queue hand-off, image decoding, message building).
Target: overhead <= 10 % of the round trip.

Three more series measure the floor any rclpy node pays for the same round trip: ``benchmarks.echo_node``
(no model; same topics, types, QoS and executor) answering in its subscription callback, from a second thread as
our worker does, and from that thread after computing as long as the node's engine did for a follow-up (its
median ``total_ms``). The last is the fair floor: on an idle machine the wake-ups that carry the answer back grow
with the wait, so an instant echo understates what a 7-ms answer must pay. Round trip minus that floor is what
the Groma node itself adds.

    python benchmarks/ros_latency.py                      # 200 same-frame + 200 fresh-frame queries
    python benchmarks/ros_latency.py -n 300 --plot ros_latency.png --model DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.node_harness import ROOT, Peer, benchmark_model_dir, ros_env, scene_image, start_node, stop_node

ECHO_MODES = {"rclpy floor: echo in callback": [], "rclpy floor: echo from a thread": ["--worker"]}
SAME, FRESH = "same frame (follow-ups, cached)", "fresh frame each query"
DELAYED_ECHO = {SAME: "rclpy floor: echo after follow-ups' time", FRESH: "rclpy floor: echo after fresh frames' time"}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def round_trip(peer: Peer, text: str, timeout: float) -> tuple[float, object]:
    """Publish ``text`` on the peer's query topic; (ms until its answer arrived, the answer)."""
    from std_msgs.msg import String

    before = len(peer.received)

    def answered() -> tuple[float, object] | None:  # by text: a late answer to an earlier probe is not this one
        return next(((at, a) for at, a in peer.received[before:] if a.query == text), None)

    t0 = time.perf_counter()
    peer.query.publish(String(data=text))
    if not peer.spin_until(lambda: answered() is not None, timeout):
        raise RuntimeError(f"no answer to {text!r}")
    t1, answer = answered()
    return (t1 - t0) * 1000.0, answer


def series(peer: Peer, n: int, fresh: bool, width: int, height: int) -> dict:
    """``n`` sequential queries; returns round trips, node-reported times and status counts."""
    rtt, node_ms, stages_ms, statuses, wrong_frame = [], [], [], {}, 0
    for attempt in range(5):  # a best-effort subscription may drop a big frame on a busy machine: re-send
        header = peer.publish_frame(scene_image(width, height, seed=1000 + attempt), settle_s=0.3)
        if fresh or peer.ask("probe: where is the mug?").header.stamp == header.stamp:
            break
    for i in range(n):
        if fresh:
            header = peer.publish_frame(scene_image(width, height, seed=i + 1), settle_s=0.03)
        ms, answer = round_trip(peer, f"where is the red mug? ({i})", 60)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        if answer.header.stamp != header.stamp:
            wrong_frame += 1
        if answer.status == 0:
            rtt.append(ms)
            node_ms.append(answer.total_ms)
            stages_ms.append(answer.preprocess_ms + answer.encode_ms + answer.generate_ms)
    return {"rtt": rtt, "node": node_ms, "stages": stages_ms, "statuses": statuses, "wrong_frame": wrong_frame}


def echo_series(n: int, mode_args: list[str], name: str, log: Path) -> dict:
    """``n`` sequential queries to an echo node (no model) in its own process; node time = its ``total_ms``."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.echo_node", *mode_args, "--ros-args",
                             "-r", f"__node:={name}"], cwd=ROOT, stdout=open(log, "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    peer = Peer(f"latency_{name}", node_name=name)
    try:
        if not peer.wait_answering(30):  # a round trip: both sides of both matches are up
            raise RuntimeError(f"echo node did not start: {log.read_text()}")
        for i in range(10):  # warm-up, as for the node
            try:
                round_trip(peer, f"warm-up ({i})", 10)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}; echo node log:\n{log.read_text()}") from None
        rtt, work = [], []
        for i in range(n):
            ms, answer = round_trip(peer, f"where is the red mug? ({i})", 10)
            rtt.append(ms)
            work.append(answer.total_ms)  # 0 unless --work-ms
    finally:
        stop_node(proc)
        peer.close()
    return {"rtt": rtt, "node": work, "stages": work, "statuses": {0: len(rtt)}, "wrong_frame": 0}


def summarize(name: str, s: dict) -> dict:
    rtt, node = s["rtt"], s["node"]
    over = [r - e for r, e in zip(rtt, node, strict=True)]
    return {"series": name, "n": len(rtt), "rtt_p50_ms": percentile(rtt, 50), "rtt_p95_ms": percentile(rtt, 95),
            "rtt_max_ms": max(rtt), "node_p50_ms": percentile(node, 50), "stages_p50_ms": percentile(s["stages"], 50),
            "overhead_p50_ms": percentile(over, 50),
            "overhead_pct": 100.0 * (statistics.fmean(rtt) - statistics.fmean(node)) / statistics.fmean(rtt),
            "statuses": s["statuses"], "answered_on_other_frame": s["wrong_frame"]}


def plot(results: dict[str, dict], path: str) -> None:
    """One histogram per series (round trip vs reported time) and one box plot of every series' overhead."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = math.ceil((len(results) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, (name, s) in zip(flat, results.items(), strict=False):
        ax.hist(s["rtt"], bins=40, alpha=0.7, label="round trip")
        if any(s["node"]):
            ax.hist(s["node"], bins=40, alpha=0.7, label="reported total_ms")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("ms")
        ax.legend(fontsize=8)
    ax = flat[len(results)]
    overheads = [[r - e for r, e in zip(s["rtt"], s["node"], strict=True)] for s in results.values()]
    ax.boxplot(overheads, orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(results) + 1), [n.replace("rclpy floor: ", "floor: ") for n in results], fontsize=7)
    ax.set_title("overhead = round trip - reported time", fontsize=10)
    ax.set_xlabel("ms")
    for ax in flat[len(results) + 1:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="queries per series (>= 200 for the issue's figure)")
    ap.add_argument("--model", help="model directory (default: embedded model, else a tiny random one)")
    ap.add_argument("--max-new-tokens", type=int, default=8, help="node max_new_tokens (REC answers are ~4-8)")
    ap.add_argument("--size", default="640x480", help="camera frame WxH")
    ap.add_argument("--threads", type=int, default=1, help="node model.num_threads")
    ap.add_argument("--domain", type=int, default=None)
    ap.add_argument("--plot", help="save a histogram PNG here")
    ap.add_argument("--json", help="write the summary JSON here")
    ap.add_argument("--no-floor", action="store_true", help="skip the echo-node (rclpy floor) series")
    args = ap.parse_args(argv)
    ros_env(args.domain)
    import rclpy

    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="groma_ros_latency_") as tmp:
        if args.model:
            model, label = Path(args.model), Path(args.model).name
        else:
            model, label = benchmark_model_dir(Path(tmp))
        rclpy.init()
        proc = start_node(model, Path(tmp) / "node.log", "-p", f"max_new_tokens:={args.max_new_tokens}",
                          "-p", "max_image_age_s:=0.0", "-p", f"model.num_threads:={args.threads}",
                          "-p", "queue_size:=4")
        peer = Peer("latency_bench")
        try:
            if not peer.wait_active():
                print((Path(tmp) / "node.log").read_text(), file=sys.stderr)
                return 1
            series(peer, 10, fresh=False, width=width, height=height)  # warm-up
            raw = {SAME: series(peer, args.n, False, width, height), FRESH: series(peer, args.n, True, width, height)}
        finally:
            stop_node(proc)
            peer.close()
        try:
            modes = {} if args.no_floor else dict(ECHO_MODES)
            for k, floor_name in ({} if args.no_floor else DELAYED_ECHO).items():
                if raw[k]["node"]:  # answer as late as the engine did (its median), from a thread
                    modes[floor_name] = ["--work-ms", f"{percentile(raw[k]['node'], 50):.2f}"]
            for i, (k, mode_args) in enumerate(modes.items()):
                raw[k] = echo_series(args.n, mode_args, f"echo{i}", Path(tmp) / f"echo{i}.log")
        finally:
            rclpy.shutdown()
    for k, v in raw.items():
        if not v["rtt"]:
            print(f"{k}: no OK answer; statuses {v['statuses']}", file=sys.stderr)
            return 1
    rows = [summarize(k, v) for k, v in raw.items()]
    print(f"model: {label}; frames {width}x{height} rgb8; max_new_tokens={args.max_new_tokens}; "
          f"node threads={args.threads}")
    head = (f"{'series':42} {'n':>4} {'rtt p50':>8} {'p95':>8} {'max':>8} {'engine p50':>10} {'stages p50':>10} "
            f"{'ovh p50':>8} {'ovh %':>6} {'other frame':>11}")
    print(head)
    for r in rows:
        print(f"{r['series']:42} {r['n']:4d} {r['rtt_p50_ms']:8.2f} {r['rtt_p95_ms']:8.2f} {r['rtt_max_ms']:8.1f} "
              f"{r['node_p50_ms']:10.2f} {r['stages_p50_ms']:10.2f} {r['overhead_p50_ms']:8.2f} "
              f"{r['overhead_pct']:6.1f} {r['answered_on_other_frame']:11d}")
    ratio = rows[1]["rtt_p50_ms"] / rows[0]["rtt_p50_ms"]
    print(f"fresh / follow-up round trip p50: {ratio:.2f}x; target ROS overhead <= 10 %")
    by_name = {r["series"]: r for r in rows}
    for k, floor_name in DELAYED_ECHO.items():
        if floor_name in by_name:
            r, f = by_name[k], by_name[floor_name]
            print(f"{k}: overhead p50 {r['overhead_p50_ms']:.2f} ms ({r['overhead_pct']:.1f} %) = "
                  f"{f['overhead_p50_ms']:.2f} ms that an rclpy echo answering {f['node_p50_ms']:.2f} ms later pays "
                  f"({f['overhead_pct']:.1f} %) + {r['overhead_p50_ms'] - f['overhead_p50_ms']:.2f} ms the node's own")
    if args.plot:
        plot(raw, args.plot)
        print(f"histogram: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
