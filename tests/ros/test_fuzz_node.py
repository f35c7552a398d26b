"""Hypothesis fuzzing of the running node over DDS: malformed frames, depth and requests never break it.

One node process per image transport (raw with depth, compressed) receives generated cases: a frame
(often malformed), maybe a depth frame with NaN/inf/zeros, then one query by topic or action with
arbitrary fields. Checked: every query gets exactly one ``GroundedAnswer`` with a valid status, no input
makes the model fail (MODEL_ERROR would mean an input slipped past validation), the node stays alive
and its log shows no exception escaping a callback. ``GROMA_FUZZ_EXAMPLES`` scales the run.
"""

from __future__ import annotations

import array
import collections
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")
hypothesis = pytest.importorskip("hypothesis")

from builtin_interfaces.msg import Time  # noqa: E402
from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402

from groma_ros.ros.image_codec import cv2_to_compressed_imgmsg, encoding_info  # noqa: E402
from groma_ros.ros.messages import box_to_msg  # noqa: E402
from tests.support.node_harness import Peer, escaped_exceptions, scene_image, start_node, stop_node  # noqa: E402

pytestmark = pytest.mark.ros
EXAMPLES = int(os.environ.get("GROMA_FUZZ_EXAMPLES", "50"))
STATUSES = set(range(7))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "8UC3", "bayer_rggb8",
             "yuv422", "", "RGB8", "nonsense\u263a", "64FC4"]
SIZES = [0, 1, 2, 7, 33, 64]
HUGE = [65_535, 100_000, 2**31 - 1]
FLOATS = st.one_of(st.sampled_from([0.0, -1.0, 1e9, -1e9, float("nan"), float("inf"), -float("inf")]),
                   st.floats(-500, 500))
TEXTS = st.one_of(
    st.sampled_from(["", "   ", "where is the red mug?", "x" * 2500, "\u202eevil\u202c", "<image> <region> <r0>",
                     "<refer_box> what is this?", "<p>mug</p> <roi><r99></roi>", "\u0301\u0301\u0301",
                     "\U0001f916 where is the \U0001f964?", "a\tb\nc\rd", "\ufeff\ufffe\uffff"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
)


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``x``height`` but carries almost no data (decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(  # noqa: E731
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@st.composite
def raw_images(draw) -> tuple[dict, str, bool]:
    if draw(st.integers(0, 9)) < 3:  # well-formed frames too, so sane queries can be checked to succeed
        enc = draw(st.sampled_from(["rgb8", "bgr8", "rgba8", "mono8", "mono16"]))
        bpp = encoding_info(enc).bytes_per_pixel
        data = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 256, 48 * 40 * bpp, np.uint8).tobytes()
        fields = dict(width=48, height=40, encoding=enc, step=48 * bpp, is_bigendian=draw(st.sampled_from([0, 1])),
                      data=data)
        return fields, f"raw {enc!r} 48x40 well-formed", True
    enc = draw(st.sampled_from(ENCODINGS))
    try:
        bpp = encoding_info(enc).bytes_per_pixel
    except Exception:  # noqa: BLE001 - unknown encodings: any byte count
        bpp = 3
    w = draw(st.sampled_from(SIZES + HUGE)) if draw(st.booleans()) else 48
    h = draw(st.sampled_from(SIZES + HUGE)) if draw(st.booleans()) else 40
    step_mode = draw(st.sampled_from(["ok", "ok", "ok", "zero", "short", "long", "huge"]))
    step = {"ok": w * bpp, "zero": 0, "short": max(0, w * bpp - 1), "long": w * bpp + 5, "huge": 2**32 - 1}[step_mode]
    step = min(step, 2**32 - 1)
    data_mode = draw(st.sampled_from(["exact", "exact", "short", "long", "empty"]))
    need = min(step * h, 1 << 20)
    n = {"exact": need, "short": need // 2, "long": need + 17, "empty": 0}[data_mode]
    fields = dict(width=w, height=h, encoding=enc, step=step, is_bigendian=draw(st.sampled_from([0, 1, 255])),
                  data=np.random.default_rng(draw(st.integers(0, 99))).integers(0, 256, n, np.uint8).tobytes())
    valid = (enc in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16") and step_mode == "ok"
             and data_mode in ("exact", "long") and 33 <= w <= 64 and 33 <= h <= 64)
    return fields, f"raw {enc!r} {w}x{h} step={step_mode} data={data_mode} be={fields['is_bigendian']}", valid


@st.composite
def compressed_images(draw) -> tuple[dict, str, bool]:
    fmt = draw(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; png compressed bgr8", "",
                                "tiff", "16UC1; compressedDepth png"]))
    kind = draw(st.sampled_from(["jpeg", "png", "jpeg", "png", "truncated", "random", "empty", "bomb", "mono_png"]))
    size = (64, 48) if draw(st.booleans()) else (draw(st.sampled_from([1, 9, 64])), draw(st.sampled_from([1, 9, 48])))
    img = scene_image(*size)
    if kind in ("jpeg", "truncated"):
        data = bytes(cv2_to_compressed_imgmsg(img, "jpeg").data)
        data = data[: len(data) // 3] if kind == "truncated" else data
    elif kind == "png":
        data = bytes(cv2_to_compressed_imgmsg(img, "png").data)
    elif kind == "mono_png":
        data = bytes(cv2_to_compressed_imgmsg(img[:, :, 0].copy(), "png", "mono8").data)
    elif kind == "random":
        data = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 256, 500, np.uint8).tobytes()
    elif kind == "bomb":
        data = _png_bomb(draw(st.sampled_from([60_000, 2**31 - 1])), 60_000)
    else:
        data = b""
    valid = kind in ("jpeg", "png", "mono_png") and fmt in ("jpeg", "png", "") and min(size) >= 48
    return dict(format=fmt, data=data), f"compressed {fmt!r} {kind} {size}", valid


@st.composite
def depths(draw) -> dict | None:
    if not draw(st.booleans()):
        return None
    w, h = draw(st.sampled_from([(24, 20), (48, 40), (1, 1), (0, 0)]))
    fill = draw(st.sampled_from(["nan", "inf", "zeros", "negative", "mixed"]))
    enc = draw(st.sampled_from(["32FC1", "16UC1"]))
    z = np.full((h, w), 1.5, np.float32)
    if fill == "nan":
        z[:] = np.nan
    elif fill == "inf":
        z[:] = np.inf
    elif fill == "zeros":
        z[:] = 0
    elif fill == "negative":
        z[:] = -2
    else:
        z.flat[::3] = np.nan
        z.flat[1::3] = np.inf
    if enc == "16UC1":
        z = np.nan_to_num(z * 1000, nan=0, posinf=65535, neginf=0).clip(0, 65535).astype(np.uint16)
    k = draw(st.sampled_from([[300.0, 0, 12, 0, 300.0, 10, 0, 0, 1], [0.0] * 9, [float("nan")] * 9]))
    return dict(encoding=enc, array=z, k=k, info_size=draw(st.sampled_from([(w, h), (0, 0), (640, 480)])))


@st.composite
def queries(draw) -> dict:
    """Half sane queries (so malformed frames reach decoding and the model), half arbitrary fields."""
    mode = draw(st.sampled_from(["topic", "topic_sane", "action_sane", "action"]))
    if mode.startswith("topic"):
        text = "where is the red mug?" if mode == "topic_sane" else draw(TEXTS)
        return dict(kind="topic", text=text, sane=mode == "topic_sane")
    if mode == "action_sane":
        task = draw(st.sampled_from([0, 1, 3, 4]))
        regions = [box_to_msg((4.0, 4.0, 30.0, 20.0))] if task == 3 else []
        return dict(kind="action", text="what is this?", task=task, regions=regions, stamp="frame", score=0.0,
                    max_new_tokens=draw(st.sampled_from([0, 3])), lift_3d=draw(st.booleans()), sane=True)
    boxes = []
    for _ in range(draw(st.integers(0, 3))):
        box = box_to_msg((0.0, 0.0, 1.0, 1.0))
        box.center.position.x, box.center.position.y = draw(FLOATS), draw(FLOATS)
        box.size_x, box.size_y = draw(FLOATS), draw(FLOATS)
        boxes.append(box)
    return dict(kind="action", text=draw(TEXTS), task=draw(st.one_of(st.integers(0, 6), st.integers(0, 255))),
                regions=boxes, stamp=draw(st.sampled_from(["newest", "frame", "bogus"])),
                score=draw(st.sampled_from([0.0, 0.3, 1.0, -0.5, 2.0, float("nan"), float("inf")])),
                max_new_tokens=draw(st.sampled_from([0, 1, 4, 4096, 2**32 - 1])), lift_3d=draw(st.booleans()))


class Fuzzer:
    """Sends one case to a node and checks its single answer; counts what it tried."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.sent = 0
        self.action_ids: list[str] = []
        self.statuses: collections.Counter = collections.Counter()
        self.model_errors: list[str] = []
        self.checked_ok = 0

    def run(self, image: tuple[dict, str, bool], depth: dict | None, query: dict, compressed: bool) -> None:
        """Publish the case; a sane query on a well-formed frame must be answered OK whatever else came."""
        image_fields, label, valid = image
        peer = self.peer
        stamp = peer.stamp_now()
        header = Header(stamp=stamp, frame_id=f"case{self.sent}")  # tells which frame an answer used
        if depth is not None:
            info = CameraInfo(header=header, width=depth["info_size"][0], height=depth["info_size"][1])
            info.k = depth["k"]
            peer.depth_info.publish(info)
            d = depth["array"]
            msg = Image(header=header, height=d.shape[0], width=d.shape[1], encoding=depth["encoding"],
                        step=d.shape[1] * d.itemsize, data=d.tobytes())
            peer.depth.publish(msg)
        if compressed:
            peer.compressed.publish(CompressedImage(header=header, **image_fields))
        else:
            msg = Image(header=header)
            for key, value in image_fields.items():
                setattr(msg, key, array.array("B", value) if key == "data" else value)
            peer.camera.publish(msg)
        peer.pause(0.05)
        before = len(peer.received)
        self.sent += 1
        if query["kind"] == "topic":
            peer.query.publish(String(data=query["text"]))
            assert peer.spin_until(lambda: len(peer.received) > before, 60), f"no answer: {label} {query}"
            answer = peer.received[before][1]
        else:
            image_stamp = {"newest": Time(), "frame": stamp, "bogus": Time(sec=7, nanosec=3)}[query["stamp"]]
            goal = Ground.Goal(query=query["text"], task=query["task"], regions=query["regions"],
                               image_stamp=image_stamp, score_threshold=query["score"],
                               max_new_tokens=query["max_new_tokens"], lift_3d=query["lift_3d"])
            answer = peer.result_of(peer.send_goal(goal), timeout=120)
            self.action_ids.append(answer.query_id)
            assert peer.spin_until(lambda: len(peer.received) > before, 10), f"no topic answer: {label}"
        assert answer.status in STATUSES and answer.query_id
        if answer.status != GroundedAnswer.OK:
            assert answer.error, (label, query, answer.status)
        if answer.status == GroundedAnswer.MODEL_ERROR:
            self.model_errors.append(f"{label} {query}: {answer.error}")
        self.statuses[answer.status] += 1
        if valid and query.get("sane") and answer.header.stamp == stamp:  # (best-effort frames may lag a query)
            self.checked_ok += 1
            assert answer.status == GroundedAnswer.OK, (label, depth and depth["encoding"], query, answer.error,
                                                        answer.header.frame_id, self.sent)
        if os.environ.get("GROMA_FUZZ_VERBOSE"):
            print(f"  {self.sent} {answer.header.frame_id} {label} | {query['kind']} {query['text'][:30]!r} "
                  f"-> {answer.status} {answer.error[:90]}")

    def check_exactly_once(self, proc, log: Path) -> None:
        peer = self.peer
        peer.pause(1.0)
        ids = [a.query_id for a in peer.answers]
        assert len(ids) == self.sent, (len(ids), self.sent)
        assert len(set(ids)) == len(ids), "duplicated answers"
        assert set(self.action_ids) <= set(ids)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert not self.model_errors, self.model_errors
        assert not escaped_exceptions(log.read_text()), log.read_text()[-5000:]
        names = {v: k for k, v in vars(GroundedAnswer).items() if k.isupper() and k in
                 ("OK", "NO_IMAGE", "STALE_IMAGE", "BAD_REQUEST", "BUSY", "CANCELED", "MODEL_ERROR")}
        print(f"\nfuzz: {self.sent} cases tried ({self.checked_ok} sane queries on well-formed frames), statuses "
              + ", ".join(f"{names.get(k, k)}={v}" for k, v in sorted(self.statuses.items())))


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def _node(model: Path, tmp: Path, name: str, *extra: str):
    log = tmp / f"{name}.log"
    proc = start_node(model, log, "-p", "queue_size:=1", "-p", "max_image_age_s:=5.0", *extra, node_name=name)
    peer = Peer(f"{name}_robot", node_name=name)
    return proc, peer, log


def test_fuzz_raw_images_depth_and_requests(endless_model_dir, ros, tmp_path_factory):
    proc, peer, log = _node(endless_model_dir, tmp_path_factory.mktemp("raw"), "groma_fuzz", "-p", "use_depth:=true")
    fuzzer = Fuzzer(peer)
    try:
        assert peer.wait_active(), log.read_text()

        @FUZZ
        @given(image=raw_images(), depth=depths(), query=queries())
        def case(image, depth, query):
            fuzzer.run(image, depth, query, compressed=False)

        case()
        fuzzer.check_exactly_once(proc, log)
    finally:
        stop_node(proc)
        peer.close()


def test_fuzz_compressed_images_and_requests(endless_model_dir, ros, tmp_path_factory):
    proc, peer, log = _node(endless_model_dir, tmp_path_factory.mktemp("compressed"), "groma_fuzz_c",
                            "-p", "image_transport:=compressed")
    fuzzer = Fuzzer(peer)
    try:
        assert peer.wait_active(compressed=True), log.read_text()

        @settings(FUZZ, max_examples=max(10, EXAMPLES // 2))
        @given(image=compressed_images(), query=queries())
        def case(image, query):
            fuzzer.run(image, None, query, compressed=True)

        case()
        fuzzer.check_exactly_once(proc, log)
    finally:
        stop_node(proc)
        peer.close()


def test_bad_depth_never_costs_the_2d_answer(endless_model_dir, ros, tmp_path):
    """Regression (found by the fuzzer): a 0x0 depth frame or NaN intrinsics made a valid query fail."""
    proc, peer, log = _node(endless_model_dir, tmp_path, "groma_fuzz_d", "-p", "use_depth:=true")
    try:
        assert peer.wait_active(), log.read_text()
        for depth, k in (((0, 0), [300.0, 0, 12, 0, 300.0, 10, 0, 0, 1]), ((24, 20), [float("nan")] * 9)):
            stamp = peer.stamp_now()
            header = Header(stamp=stamp, frame_id="cam_optical_frame")
            info = CameraInfo(header=header, width=depth[0], height=depth[1])
            info.k = k
            peer.depth_info.publish(info)
            z = np.full((depth[1], depth[0]), 1.5, np.float32)
            peer.depth.publish(Image(header=header, height=depth[1], width=depth[0], encoding="32FC1",
                                     step=depth[0] * 4, data=z.tobytes()))
            image = scene_image(64, 48)
            peer.camera.publish(Image(header=header, height=48, width=64, encoding="rgb8", step=64 * 3,
                                      data=image.tobytes()))
            peer.pause(0.3)
            answer = peer.ask("where is the red mug?")
            assert answer.header.stamp == stamp
            assert answer.status == GroundedAnswer.OK, answer.error
        assert "3-D lifting skipped" in log.read_text()
        assert not escaped_exceptions(log.read_text())
    finally:
        stop_node(proc)
        peer.close()
