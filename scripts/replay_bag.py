#!/usr/bin/env python3
"""Replay the camera topics of a rosbag2 recording into a running Groma node, with their original stamps.

For debugging perception on recorded data where no rosbag2 is installed (rosbag2 is not on PyPI): the recording
is read with the pure-Python `rosbags` library (MCAP or SQLite3 storage) and every message's recorded bytes are
published unchanged, so header stamps and frame ids are exactly those of the recording. Messages keep the
recording's timing (scaled by --rate).

    python scripts/replay_bag.py BAG_DIR                      # camera topics (Image, CompressedImage, CameraInfo)
    python scripts/replay_bag.py BAG_DIR --topics /camera/color/image_raw --rate 0.5 --loop
    python scripts/replay_bag.py BAG_DIR --clock              # also /clock: start the node with use_sim_time:=true

BAG_DIR is the folder `ros2 bag record` writes (metadata.yaml + .mcap/.db3 files). With --clock, /clock carries the
recording's time (as `ros2 bag play --clock`): a node with use_sim_time:=true then sees each frame as fresh. Without
it the node uses its own clock, and a recording's stamps from the past are older than its max_image_age_s.
DDS settings (ROS_DOMAIN_ID, discovery range) are taken from the environment, as for any ROS 2 process.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

CAMERA_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", type=Path, help="rosbag2 folder (metadata.yaml + storage files)")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC",
                        help="topics to play (default: every Image, CompressedImage and CameraInfo topic)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    parser.add_argument("--clock", type=float, nargs="?", const=40.0, default=None, metavar="HZ",
                        help="publish /clock with the recording's time at HZ (default 40) for use_sim_time nodes")
    parser.add_argument("--loop", action="store_true", help="start again at the end, until Ctrl-C")
    parser.add_argument("--wait", type=float, default=10.0, metavar="S",
                        help="wait up to S seconds for a subscriber on every played topic before playing (default 10)")
    args = parser.parse_args(argv)
    if not args.rate > 0:
        parser.error(f"--rate must be positive, got {args.rate}")
    if args.clock is not None and not args.clock > 0:
        parser.error(f"--clock must be a positive rate in Hz, got {args.clock}")
    return args


def message_class(msgtype: str) -> Any:
    """The rclpy message class of a ROS type name (``sensor_msgs/msg/Image``)."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"replay_bag: message type {msgtype} is not installed here ({exc})") from exc


class Player:
    """Publishes recorded messages on wall-clock time, and the recording's time on /clock if asked."""

    def __init__(self, node: Any, connections: list, rate: float, clock_hz: float | None) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.node, self.rate = node, rate
        self.publishers = {c.topic: node.create_publisher(message_class(c.msgtype), c.topic, qos) for c in connections}
        self.clock = None
        if clock_hz is not None:
            from rosgraph_msgs.msg import Clock

            self.clock = node.create_publisher(Clock, "/clock", qos)
            self.clock_period = 1.0 / clock_hz

    def wait_for_subscribers(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        missing = list(self.publishers)
        while missing and time.monotonic() < end:
            time.sleep(0.05)
            missing = [t for t, p in self.publishers.items() if p.get_subscription_count() == 0]
        if missing:
            print(f"replay_bag: no subscriber yet on {', '.join(missing)}; playing anyway", flush=True)

    def publish_clock(self, bag_ns: int) -> None:
        if self.clock is not None:
            from rosgraph_msgs.msg import Clock

            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(bag_ns, 10**9)
            self.clock.publish(msg)

    def play(self, messages: Any, start_ns: int) -> int:
        """One pass over ``messages`` ((connection, receive time ns, bytes)); returns how many were published."""
        wall0 = time.monotonic()
        next_clock = wall0
        count = 0
        for connection, stamp_ns, data in messages:
            due = wall0 + (stamp_ns - start_ns) / 1e9 / self.rate
            while True:  # sleep until the message is due, keeping /clock running meanwhile
                now = time.monotonic()
                if self.clock is not None and now >= next_clock:
                    self.publish_clock(start_ns + int((now - wall0) * self.rate * 1e9))
                    next_clock = now + self.clock_period
                if now >= due:
                    break
                wake = min(due, next_clock) if self.clock is not None else due
                time.sleep(max(0.0, wake - now))
            self.publish_clock(stamp_ns)  # the node's clock reaches the frame's time before the frame
            self.publishers[connection.topic].publish(bytes(data))  # recorded CDR bytes, unchanged
            count += 1
        return count

    def finish(self, linger_s: float = 0.5) -> None:
        """Let the last messages reach their subscribers before the publishers go away."""
        from rclpy.duration import Duration

        for publisher in self.publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=2))
        time.sleep(linger_s)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from rosbags.highlevel import AnyReader
    except ImportError:
        print("replay_bag: needs the rosbags library: pip install rosbags (requirements/dev.txt)", file=sys.stderr)
        return 2
    if not (args.bag / "metadata.yaml").is_file():
        print(f"replay_bag: {args.bag} is not a rosbag2 folder (no metadata.yaml)", file=sys.stderr)
        return 2
    import rclpy

    with AnyReader([args.bag]) as reader:
        available = {c.topic: c for c in reader.connections}
        if args.topics:
            unknown = [t for t in args.topics if t not in available]
            if unknown:
                listing = "\n".join(f"  {t} ({c.msgtype}, {c.msgcount} messages)" for t, c in sorted(available.items()))
                print(f"replay_bag: not in the recording: {', '.join(unknown)}; it has:\n{listing}", file=sys.stderr)
                return 2
            connections = [available[t] for t in args.topics]
        else:
            connections = [c for c in reader.connections if c.msgtype in CAMERA_TYPES]
            if not connections:
                print("replay_bag: no camera topics in the recording (use --topics)", file=sys.stderr)
                return 2
        for c in connections:
            print(f"replay_bag: {c.topic} ({c.msgtype}, {c.msgcount} messages)", flush=True)

        rclpy.init()
        node = rclpy.create_node("replay_bag")
        try:
            player = Player(node, connections, args.rate, args.clock)
            player.wait_for_subscribers(args.wait)
            total = 0
            while True:
                total += player.play(reader.messages(connections=connections), reader.start_time)
                if not args.loop:
                    break
            player.finish()
            print(f"replay_bag: published {total} messages", flush=True)
        except KeyboardInterrupt:
            return 130
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
