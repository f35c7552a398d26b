"""The main job, end to end on this machine: `make demo`.

Starts the Groma node (its own process, embedded default model, the README's `--params-file` +
remapping form), a camera that publishes synthetic scenes at 10 FPS, and a speech front-end that
publishes spoken-style commands on `/groma/query`. Prints every grounded answer next to the
ground truth and saves the node's annotated `~/debug_image` for each query under `out/demo/`.
Then it holds a short referential dialogue about the same frame through the `~/ground` action
(one `conversation_id`: "the red circle" -> "the other one" -> "what colour is it?").
DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) in its own ROS_DOMAIN_ID.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# DDS never leaves this machine. The domain is the caller's (`make demo` passes its private GROMA_ROS_DOMAIN_ID,
# the tests their own claimed one), else 42.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", "42")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from groma_ros.action import Ground  # noqa: E402
from groma_ros.msg import GroundedAnswer  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402

from groma_ros.ros.image_codec import cv2_to_imgmsg, imgmsg_to_rgb8  # noqa: E402
from groma_ros.synthetic.dialogue import generate_dialogues  # noqa: E402
from groma_ros.synthetic.metrics import box_iou  # noqa: E402
from groma_ros.synthetic.scenes import SceneConfig, generate_scene, split_seeds  # noqa: E402
from groma_ros.synthetic.texts import generate_samples  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATUS = {v: k for k, v in vars(GroundedAnswer).items() if k.isupper() and k in
          ("OK", "NO_IMAGE", "STALE_IMAGE", "BAD_REQUEST", "BUSY", "CANCELED", "MODEL_ERROR", "NO_CONVERSATION")}
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def spoken_commands(scene) -> list[tuple[str, list[int], str]]:
    """What a person might say about this scene, with the objects a correct answer grounds and, for questions, the
    correct answer."""
    commands: list[tuple[str, list[int], str]] = []
    refers = [s for s in generate_samples(scene) if s.task == "refer" and s.kind == "attribute"]
    verbs = ["pick up", "where is", "grab", "point to"]
    for verb, sample in zip(verbs, refers[:3], strict=False):
        text = f"{verb} {sample.query}" + ("?" if verb == "where is" else "")
        commands.append((text, list(sample.answer_objects[0]), ""))
    commands.append(("describe what you see", list(range(len(scene.objects))), ""))
    exists = [s for s in generate_samples(scene) if s.task == "vqa" and s.kind == "exists"]
    for answer in ("yes", "no"):  # one object that is there, one near miss that is not
        commands += [(s.query, [], s.answer) for s in exists if s.answer == answer][:1]
    return commands


def dialogue_turns(scene) -> list[tuple[str, list[int], str]]:
    """The longest dialogue about this scene: (text, objects a correct answer grounds, correct answer word)."""
    dialogues = sorted(generate_dialogues(scene), key=lambda d: -len(d.turns))
    if not dialogues:
        return []
    turns = []
    for sample in dialogues[0].turns:
        objects = list(sample.answer_objects[0]) if sample.answer_objects else []
        turns.append((sample.query, objects, "" if objects else sample.answer))
    return turns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model directory (default: the embedded model)")
    parser.add_argument("--scenes", type=int, default=2, help="how many scenes to show")
    parser.add_argument("--size", type=int, default=384, help="camera image size in pixels")
    parser.add_argument("--out", default=str(ROOT / "out" / "demo"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    node_log = out / "node.log"
    node_cmd = [sys.executable, "-m", "groma_ros.ros.node", "--ros-args",
                "--params-file", str(ROOT / "config" / "groma.yaml"),
                "-r", "image:=/demo_camera/image_raw", "-r", "camera_info:=/demo_camera/camera_info"]
    if args.model:
        node_cmd += ["-p", f"model.path:={args.model}"]
    print(f"[demo] starting the node: groma_node --ros-args --params-file config/groma.yaml "
          f"-r image:=/demo_camera/image_raw   (log: {node_log})")
    node_proc = subprocess.Popen(node_cmd, stdout=open(node_log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115

    rclpy.init()
    peer = rclpy.create_node("demo_robot")
    camera = peer.create_publisher(Image, "/demo_camera/image_raw", RELIABLE)
    speech = peer.create_publisher(String, "/groma/query", RELIABLE)
    action = ActionClient(peer, Ground, "/groma/ground")
    answers: list[GroundedAnswer] = []
    debug_images: list[Image] = []
    peer.create_subscription(GroundedAnswer, "/groma/answer", answers.append, RELIABLE)
    peer.create_subscription(Image, "/groma/debug_image", debug_images.append, RELIABLE)
    executor = SingleThreadedExecutor()
    executor.add_node(peer)
    stop = threading.Event()
    current = {"scene": None}

    def camera_loop() -> None:
        while not stop.is_set():
            scene = current["scene"]
            if scene is not None:
                header = Header(stamp=peer.get_clock().now().to_msg(), frame_id="demo_camera_optical_frame")
                camera.publish(cv2_to_imgmsg(scene.image, "rgb8", header))
            time.sleep(0.1)

    def spin_for(seconds: float, until=lambda: False) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
            if until():
                return True
            if node_proc.poll() is not None:
                raise RuntimeError(f"the node exited (code {node_proc.returncode}); see {node_log}")
        return False

    threading.Thread(target=camera_loop, daemon=True).start()
    code = 0
    try:
        print("[demo] waiting for the node to load the model and activate ...")
        # the query topic exists from the node's start; the camera subscription appears once it is active
        if not spin_for(120, lambda: peer.count_subscribers("/demo_camera/image_raw") > 0
                        and peer.count_subscribers("/groma/query") > 0):
            raise RuntimeError(f"the node did not become active in 120 s; see {node_log}")
        config = SceneConfig(image_size=args.size, min_objects=3, max_objects=5)
        for n, seed in enumerate(split_seeds("test", args.scenes)):
            scene = generate_scene(seed, config)
            current["scene"] = scene
            spin_for(0.5)
            print(f"\n[demo] scene {n} (seed {seed}, {args.size}x{args.size} px): "
                  + ", ".join(f"{o.size} {o.color} {o.shape}" for o in scene.objects))
            for k, (text, truth, expected) in enumerate(spoken_commands(scene)):
                before, before_dbg = len(answers), len(debug_images)
                print(f'  speech  -> "{text}"' + (f"   (correct answer: {expected})" if expected else ""))
                speech.publish(String(data=text))
                if not spin_for(60, lambda before=before: len(answers) > before):
                    print("  (no answer within 60 s)")
                    code = 1
                    continue
                answer = answers[before]
                spin_for(1.0, lambda before_dbg=before_dbg: len(debug_images) > before_dbg)
                report(answer, scene, truth)
                if len(debug_images) > before_dbg:
                    path = out / f"scene{n}_query{k}.png"
                    cv2.imwrite(str(path), cv2.cvtColor(imgmsg_to_rgb8(debug_images[-1]), cv2.COLOR_RGB2BGR))
                    print(f"          annotated picture: {path}")
            turns = dialogue_turns(scene)
            if turns and action.wait_for_server(timeout_sec=10):
                conversation = f"demo-scene-{n}"
                print(f"  a conversation about this frame (conversation_id {conversation!r}):")
                for text, truth, expected in turns:
                    print(f'  user    -> "{text}"' + (f"   (correct answer: {expected})" if expected else ""))
                    sent = action.send_goal_async(Ground.Goal(query=text, conversation_id=conversation))
                    if not spin_for(30, sent.done) or not sent.result().accepted:
                        print("  (the goal was not accepted)")
                        code = 1
                        break
                    result = sent.result().get_result_async()
                    if not spin_for(60, result.done):
                        print("  (no answer within 60 s)")
                        code = 1
                        break
                    answer = result.result().result.answer
                    print(f"  turn {answer.turn} of {answer.conversation_id!r}:")
                    report(answer, scene, truth, arrow="reply   <-")
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"[demo] {exc}")
        code = 1
    finally:
        stop.set()
        node_proc.send_signal(2)
        try:
            node_proc.wait(15)
        except subprocess.TimeoutExpired:
            node_proc.kill()
        peer.destroy_node()
        rclpy.shutdown()
    return code


def report(answer: GroundedAnswer, scene, truth: list[int], arrow: str = "groma   <-") -> None:
    status = STATUS.get(answer.status, str(answer.status))
    print(f"  {arrow} [{status}] {answer.text!r}   (raw {answer.raw_text!r}, "
          f"{answer.encode_ms + answer.generate_ms + answer.preprocess_ms:.0f} ms)")
    if answer.error:
        print(f"          error: {answer.error}")
    gt = np.array([scene.objects[i].box_xyxy for i in truth], dtype=np.float32).reshape(-1, 4)
    for det in answer.detections.detections:
        cx, cy, w, h = det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.size_x, det.bbox.size_y
        box = np.array([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], dtype=np.float32)
        iou = float(box_iou(box, gt).max()) if len(gt) else float("nan")
        print(f"          {det.phrase or 'object'!r:28} box=({box[0, 0]:.0f},{box[0, 1]:.0f},{box[0, 2]:.0f},"
              f"{box[0, 3]:.0f}) score={det.proposal_score:.2f}  IoU with ground truth={iou:.2f}")


if __name__ == "__main__":
    sys.exit(main())
