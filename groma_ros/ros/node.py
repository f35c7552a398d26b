"""The Groma lifecycle node: camera frames and spoken queries in, grounded answers out.

configure = validate parameters, create publishers and the action server; activate = load the model
and subscribe; deactivate = unsubscribe, answer pending queries CANCELED and free the model;
cleanup/shutdown = release everything. Camera callbacks only store messages; a worker thread runs
the model, so callbacks never block. Every query gets exactly one ``GroundedAnswer``.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from groma_ros.action import Ground
from groma_ros.drawing import draw_grounding
from groma_ros.engine.types import Answer, BoxXYXY, Status, Task
from groma_ros.msg import GroundedAnswer, GroundedDetection3DArray, GroundedDetectionArray
from groma_ros.ros import messages
from groma_ros.ros.frame_buffer import StampedBuffer, stamp_to_ns
from groma_ros.ros.image_codec import ImageConversionError, compressed_to_rgb8, cv2_to_imgmsg, imgmsg_to_rgb8
from groma_ros.ros.lifting import DepthLifter, Lifted
from groma_ros.ros.markers import detections_to_marker_array
from groma_ros.ros.params import SPECS, NodeParams, ParamSpec, validate_one
from groma_ros.ros.worker import Job, QueryWorker

MAX_QUERY_CHARS = 2000
RESULTS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class Request:
    """A query as the node handles it, whichever interface it came from."""

    query_id: str
    query: str
    task: int
    boxes: list[BoxXYXY] = field(default_factory=list)
    image_stamp_ns: int = 0  # 0 = newest frame
    score_threshold: float = 0.0
    max_new_tokens: int = 0
    lift_3d: bool = False
    on_progress: Callable[[int, str], None] | None = None  # (stage, partial text) → action feedback
    cancel_requested: Callable[[], bool] = lambda: False


@dataclass
class Outcome:
    """What a finished job hands back: the engine answer and the frame it was computed on."""

    answer: Answer | None
    header: Header
    rgb: Any = None
    lifted: Lifted | None = None
    aborted_before_start: bool = False


class GromaNode(LifecycleNode):
    """Lifecycle node ``groma``: ``~/query`` + ``~/ground`` in; answers, detections, 3-D, debug out."""

    def __init__(self, node_name: str = "groma", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._param_problems: list[str] = []
        for spec in SPECS:
            try:
                self.declare_parameter(spec.name, spec.default, _descriptor(spec))
            except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
                # An out-of-range override must fail configure with a clear log, not crash the process.
                self._param_problems.append(f"{spec.name}: {exc}")
                self.declare_parameter(spec.name, spec.default, _descriptor(spec), ignore_override=True)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.params: NodeParams | None = None
        self.engine: Any = None
        self.worker: QueryWorker | None = None
        self._active = False
        self._ids = itertools.count(1)
        self._camera_group = MutuallyExclusiveCallbackGroup()
        self._query_group = ReentrantCallbackGroup()
        self._subscriptions_: list[Any] = []
        self._publishers_: dict[str, Any] = {}
        self._action_server: ActionServer | None = None
        self._diag_timer = None
        self.lifter: DepthLifter | None = None
        self._warned: set[str] = set()
        self.images: StampedBuffer[Any] = StampedBuffer(8)
        self._stats = {"answered": 0, "busy": 0, "errors": 0, "last_total_ms": 0.0, "last_encode_ms": 0.0,
                       "last_generate_ms": 0.0}
        self._stats_lock = threading.Lock()
        self._model_error = ""
        self._last_decoded: tuple[tuple, Any] | None = None  # (frame key, rgb): follow-ups skip the decode
        # Action goals await their answer: the worker queues it and triggers this guard condition, whose callback
        # runs on the executor thread (rclpy futures are not meant to be completed from other threads).
        self._completions: queue.SimpleQueue[tuple[Future, GroundedAnswer]] = queue.SimpleQueue()
        self._completion_guard = self.create_guard_condition(self._complete_goals)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        values = {spec.name: self.get_parameter(spec.name).value for spec in SPECS}
        try:
            if self._param_problems:
                raise ValueError("invalid parameters: " + "; ".join(self._param_problems))
            self.params = NodeParams.from_values(values)
        except ValueError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        p = self.params
        self.images = StampedBuffer(p.frame_buffer_size)
        self.worker = QueryWorker(p.queue_size)
        pubs = self._publishers_
        pubs["answer"] = self.create_publisher(GroundedAnswer, "~/answer", RESULTS_QOS)
        pubs["detections"] = self.create_publisher(GroundedDetectionArray, "~/detections", RESULTS_QOS)
        pubs["detections_3d"] = self.create_publisher(GroundedDetection3DArray, "~/detections_3d", RESULTS_QOS)
        pubs["debug_image"] = self.create_publisher(Image, "~/debug_image", RESULTS_QOS)
        pubs["markers"] = self.create_publisher(MarkerArray, "~/markers", RESULTS_QOS)
        pubs["diagnostics"] = self.create_publisher(DiagnosticArray, "/diagnostics", RESULTS_QOS)
        vision = _optional_vision_msgs()
        if vision is not None:
            pubs["vision"] = self.create_publisher(vision.Detection2DArray, "~/vision/detections", RESULTS_QOS)
        self._action_server = ActionServer(
            self, Ground, "~/ground", execute_callback=self._execute_goal, callback_group=self._query_group,
            goal_callback=lambda goal: GoalResponse.ACCEPT, cancel_callback=lambda goal: CancelResponse.ACCEPT)
        if p.use_depth:
            self.lifter = DepthLifter(self, p.frame_buffer_size, p.depth_max_stamp_diff_s, p.target_frame,
                                      p.tf_timeout_s, self._warn_once)
        self.get_logger().info(
            f"configured: model={p.model_path or '<embedded default>'} device={p.model_device} "
            f"dtype={p.model_dtype} transport={p.image_transport} depth={p.use_depth} queue={p.queue_size}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        assert p is not None
        try:
            self.engine = self._load_engine(p)
        except Exception as exc:  # noqa: BLE001 - a failed load must fail the transition, not the node
            self._model_error = str(exc)
            self.get_logger().error(f"activate failed: could not load the model: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._model_error = ""
        self._subscribe(p)
        self._diag_timer = self.create_timer(p.diagnostics_period_s, self._publish_diagnostics,
                                             callback_group=self._camera_group)
        self._active = True
        self.get_logger().info(f"active: model {self.engine.model_id} on {self.engine.device}; "
                               f"listening on {self.resolve_topic_name('~/query')}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate("node deactivated")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._deactivate("node shutting down")
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate("node error")
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def _load_engine(self, p: NodeParams) -> Any:
        from groma_ros.engine import GromaEngine  # torch import only when a model is needed

        self.get_logger().info(f"loading model {p.model_path or '<embedded default>'} ...")
        t0 = time.monotonic()
        engine = GromaEngine.from_pretrained(
            p.model_path or None, device=p.model_device, dtype=p.model_dtype,
            num_threads=p.model_num_threads or None, cache_frames=p.model_cache_frames, progress=False,
            decode=p.model_decode)
        self.get_logger().info(f"model {engine.model_id} loaded in {time.monotonic() - t0:.1f} s")
        if p.model_decode == "compiled":  # pay the compilation now, not on the first spoken command
            t0 = time.monotonic()
            engine.warm_up()
            self.get_logger().info(f"decode step compiled in {time.monotonic() - t0:.1f} s")
        return engine

    def _subscribe(self, p: NodeParams) -> None:
        subs = self._subscriptions_
        if p.image_transport == "compressed":
            subs.append(self.create_subscription(CompressedImage, "image/compressed", self._on_image,
                                                 qos_profile_sensor_data, callback_group=self._camera_group))
        else:
            subs.append(self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data,
                                                 callback_group=self._camera_group))
        if self.lifter is not None:
            lifter = self.lifter
            for msg_type, topic, callback in ((CameraInfo, "camera_info", lifter.on_camera_info),
                                              (Image, "depth/image", lifter.on_depth),
                                              (CameraInfo, "depth/camera_info", lifter.on_depth_info)):
                subs.append(self.create_subscription(msg_type, topic, callback, qos_profile_sensor_data,
                                                     callback_group=self._camera_group))
        subs.append(self.create_subscription(String, "~/query", self._on_query, RESULTS_QOS,
                                             callback_group=self._query_group))

    def _deactivate(self, reason: str) -> None:
        self._active = False
        for sub in self._subscriptions_:
            self.destroy_subscription(sub)
        self._subscriptions_.clear()
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self.worker is not None:
            for job in self.worker.abort_all():
                job.finish(job, None, _Aborted(reason))
            if not self.worker.wait_idle(30.0):
                self.get_logger().warning("the running query did not stop within 30 s")
        if self.engine is not None:
            try:
                self.engine.release()
            finally:
                self.engine = None
                gc.collect()
                _empty_device_cache()
            self.get_logger().info("model released")
        self.images.clear()
        if self.lifter is not None:
            self.lifter.clear()

    def _release_all(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        for pub in self._publishers_.values():
            self.destroy_publisher(pub)
        self._publishers_.clear()
        self.lifter = None
        self._last_decoded = None

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        problems = []
        for param in params:
            spec = next((s for s in SPECS if s.name == param.name), None)
            if spec is None:
                continue
            problem = validate_one(spec, param.value)
            if problem:
                problems.append(problem)
            elif spec.read_only and self.params is not None:
                problems.append(f"{spec.name} can only change before configure (cleanup, set, configure)")
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        if self.params is not None:
            values = self.params.as_ros_dict()
            for param in params:
                key = param.name.replace(".", "_")
                if key in values:
                    values[key] = param.value
            self.params = NodeParams(**values)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ camera input
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.images.put(stamp_to_ns(msg.header.stamp), msg)

    # ------------------------------------------------------------------ query input
    def _next_query_id(self) -> str:
        return f"{self.get_name()}-{next(self._ids):06d}"

    def _on_query(self, msg: String) -> None:
        p = self.params
        request = Request(self._next_query_id(), msg.data, int(Task.AUTO), lift_3d=bool(p and p.use_depth))
        self.submit_request(request, lambda answer: None)

    def _complete_goals(self) -> None:
        """Guard-condition callback (executor thread): hand answers from the worker to their goal coroutines."""
        while True:
            try:
                future, answer = self._completions.get_nowait()
            except queue.Empty:
                return
            if not future.done():
                future.set_result(answer)

    async def _execute_goal(self, goal_handle: Any) -> Ground.Result:
        goal = goal_handle.request
        started = time.monotonic()

        def progress(stage: int, text: str) -> None:
            goal_handle.publish_feedback(Ground.Feedback(stage=stage, partial_text=text,
                                                         elapsed_s=float(time.monotonic() - started)))

        boxes, problem = _goal_boxes(goal.regions)
        request = Request(self._next_query_id(), goal.query, int(goal.task), boxes=boxes,
                          image_stamp_ns=stamp_to_ns(goal.image_stamp),
                          score_threshold=float(goal.score_threshold), max_new_tokens=int(goal.max_new_tokens),
                          lift_3d=bool(goal.lift_3d), on_progress=progress,
                          cancel_requested=lambda: goal_handle.is_cancel_requested)
        future = Future()

        def on_answer(answer: GroundedAnswer) -> None:  # worker thread (or here, for a rejection)
            self._completions.put((future, answer))
            self._completion_guard.trigger()

        self.submit_request(request, on_answer, precheck_error=problem)
        answer = await future  # the executor thread stays free for frames and other queries meanwhile
        if answer.status == Status.CANCELED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif answer.status == Status.OK:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return Ground.Result(answer=answer)

    def submit_request(self, request: Request, on_answer: Callable[[GroundedAnswer], None],
               precheck_error: str = "") -> None:
        """Validate, pick the frame, queue the job; ``on_answer`` is called exactly once (maybe right away)."""
        model_id = self.engine.model_id if self.engine is not None else ""

        def reject(status: Status, error: str, header: Header | None = None) -> None:
            answer = messages.error_answer_msg(request.query_id, request.query, request.task, status, error,
                                               model_id, header)
            self._publish_answer(answer)
            on_answer(answer)

        problem = precheck_error or _request_problem(request)
        if problem:
            return reject(Status.BAD_REQUEST, problem)
        if not self._active or self.engine is None or self.worker is None or self.params is None:
            reason = f": {self._model_error}" if self._model_error else ""
            return reject(Status.MODEL_ERROR, f"node is not active{reason}")
        if request.image_stamp_ns:
            item = self.images.exact(request.image_stamp_ns)
            frame = (request.image_stamp_ns, item) if item is not None else None
            if frame is None:
                return reject(Status.NO_IMAGE, f"no buffered frame with stamp {request.image_stamp_ns} ns "
                                               f"(the newest {len(self.images)} frames are kept)")
        else:
            frame = self.images.newest()
            if frame is None:
                return reject(Status.NO_IMAGE, f"no image received yet on {self._image_topic()}")
        stamp_ns, image_msg = frame
        header = image_msg.header
        max_age = self.params.max_image_age_s
        if max_age > 0:
            age = (self.get_clock().now().nanoseconds - stamp_ns) / 1e9
            if age > max_age:
                return reject(Status.STALE_IMAGE, f"newest usable frame is {age:.2f} s old "
                                                  f"(max_image_age_s={max_age})", header)

        def finish(job: Job, outcome: Outcome | None, error: BaseException | None) -> None:
            answer = self._answer_from(request, header, outcome, error)
            self._publish_answer(answer)
            if outcome is not None and answer.status == Status.OK:
                self._publish_extras(request, answer, outcome)
            on_answer(answer)

        job = Job(request.query_id, run=lambda job: self._run(job, request, image_msg),
                  finish=finish, cancel_requested=request.cancel_requested)
        if request.on_progress:
            request.on_progress(Ground.Feedback.STAGE_QUEUED, "")
        if not self.worker.submit(job):
            with self._stats_lock:
                self._stats["busy"] += 1
            return reject(Status.BUSY, f"{self.worker.depth} queries are waiting (queue_size="
                                       f"{self.worker.capacity}); try again later", header)
        return None

    # ------------------------------------------------------------------ the worker's part
    def _run(self, job: Job, request: Request, image_msg: Any) -> Outcome:
        header = image_msg.header
        if job.should_stop():
            return Outcome(None, header, aborted_before_start=True)
        p = self.params
        engine = self.engine
        if engine is None or p is None:
            raise _Aborted("model released")
        if request.on_progress:
            request.on_progress(Ground.Feedback.STAGE_PERCEIVING, "")
        rgb = self._decoded_frame(image_msg)
        partial: list[str] = []

        def on_token(piece: str) -> None:
            partial.append(piece)
            if request.on_progress:
                request.on_progress(Ground.Feedback.STAGE_GENERATING, "".join(partial))

        score = request.score_threshold or p.score_threshold or None
        answer = engine.ask(rgb, request.query, task=Task(request.task), boxes=request.boxes,
                            frame_id=(stamp_to_ns(header.stamp), header.frame_id),
                            max_new_tokens=request.max_new_tokens or p.max_new_tokens or None,
                            score_threshold=score, on_token=on_token, should_cancel=job.should_stop)
        outcome = Outcome(answer, header, rgb=rgb)
        if request.lift_3d and self.lifter is not None and not answer.canceled:
            try:
                outcome.lifted = self.lifter.lift(answer, header)
            except Exception as exc:  # noqa: BLE001 - a bad depth frame/camera_info must not cost the 2-D answer
                self.get_logger().warning(f"3-D lifting skipped for {request.query_id}: {type(exc).__name__}: {exc}",
                                          throttle_duration_sec=5.0)
        return outcome

    def _decoded_frame(self, image_msg: Any) -> Any:
        """RGB of ``image_msg``; follow-up queries on the same frame reuse the last decode (worker thread only)."""
        key = (stamp_to_ns(image_msg.header.stamp), image_msg.header.frame_id, id(image_msg))
        if self._last_decoded is not None and self._last_decoded[0] == key:
            return self._last_decoded[1]
        rgb = compressed_to_rgb8(image_msg) if isinstance(image_msg, CompressedImage) else imgmsg_to_rgb8(image_msg)
        self._last_decoded = (key, rgb)
        return rgb

    # ------------------------------------------------------------------ outputs
    def _answer_from(self, request: Request, header: Header, outcome: Outcome | None,
                     error: BaseException | None) -> GroundedAnswer:
        model_id = self.engine.model_id if self.engine is not None else ""
        if error is not None:
            status, text = _status_of(error)
            if status == Status.MODEL_ERROR:
                self.get_logger().error(f"query {request.query_id} failed: {text}\n"
                                        + "".join(traceback.format_exception(error)))
            with self._stats_lock:
                self._stats["errors"] += 1
            return messages.error_answer_msg(request.query_id, request.query, request.task, status, text,
                                             model_id, header)
        assert outcome is not None
        if outcome.aborted_before_start or outcome.answer is None:
            return messages.error_answer_msg(request.query_id, request.query, request.task, Status.CANCELED,
                                             "canceled before it started", model_id, header)
        answer = outcome.answer
        status = Status.CANCELED if answer.canceled else Status.OK
        points = outcome.lifted.points if outcome.lifted is not None else None
        msg = messages.answer_msg(answer, header, request.query_id, model_id, points, status,
                                  "canceled during generation" if answer.canceled else "")
        with self._stats_lock:
            self._stats["answered"] += 1
            self._stats["last_total_ms"] = answer.timings.total_ms
            self._stats["last_encode_ms"] = answer.timings.encode_ms
            self._stats["last_generate_ms"] = answer.timings.generate_ms
        return msg

    def _publish_answer(self, answer: GroundedAnswer) -> None:
        pub = self._publishers_.get("answer")
        if pub is not None:
            pub.publish(answer)

    def _publish_extras(self, request: Request, answer: GroundedAnswer, outcome: Outcome) -> None:
        pubs = self._publishers_
        if "detections" in pubs:
            pubs["detections"].publish(answer.detections)
        lifted = outcome.lifted
        if lifted is not None and lifted.detections and "detections_3d" in pubs:
            header = Header(stamp=outcome.header.stamp, frame_id=lifted.frame_id)
            array = messages.detections_3d_msg(header, request.query_id, lifted.source_frame_id, lifted.detections)
            pubs["detections_3d"].publish(array)
            pubs["markers"].publish(detections_to_marker_array(array.detections, header))
        p = self.params
        debug = pubs.get("debug_image")
        if p and p.publish_debug_image and debug is not None and debug.get_subscription_count() > 0:
            pairs = messages.detection_pairs(outcome.answer)
            items = [(phrase or messages.DETECT_CLASS_ID, region.box, region.score)
                     for phrase, _s, _e, region in pairs]
            debug.publish(cv2_to_imgmsg(draw_grounding(outcome.rgb, items), "rgb8", header=outcome.header))
        if "vision" in pubs:
            pubs["vision"].publish(_to_vision_msgs(answer))

    def _publish_diagnostics(self) -> None:
        pub = self._publishers_.get("diagnostics")
        if pub is None:
            return
        p = self.params
        with self._stats_lock:
            stats = dict(self._stats)
        level = DiagnosticStatus.OK if self._active else DiagnosticStatus.WARN
        message = "active" if self._active else "inactive"
        if self._model_error:
            level, message = DiagnosticStatus.ERROR, f"model failed to load: {self._model_error}"
        values = {
            "model": self.engine.model_id if self.engine is not None else "",
            "device": p.model_device if p else "",
            "dtype": p.model_dtype if p else "",
            "rss_mb": f"{_rss_mb():.1f}",
            "queue_depth": str(self.worker.depth if self.worker else 0),
            "frames_received": str(self.images.received),
            "answered": str(stats["answered"]),
            "busy_rejections": str(stats["busy"]),
            "errors": str(stats["errors"]),
            "last_total_ms": f"{stats['last_total_ms']:.1f}",
            "last_encode_ms": f"{stats['last_encode_ms']:.1f}",
            "last_generate_ms": f"{stats['last_generate_ms']:.1f}",
        }
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: groma", message=message,
                                  hardware_id=values["device"],
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        pub.publish(array)

    # ------------------------------------------------------------------ helpers
    def _image_topic(self) -> str:
        compressed = self.params is not None and self.params.image_transport == "compressed"
        return self.resolve_topic_name("image/compressed" if compressed else "image")

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.get_logger().warning(text)


class _Aborted(RuntimeError):
    """The node stopped the query (deactivate/shutdown)."""


def _status_of(error: BaseException) -> tuple[Status, str]:
    """Map a failed job's exception to the answer status users see."""
    if isinstance(error, _Aborted):
        return Status.CANCELED, str(error)
    if isinstance(error, ImageConversionError):
        return Status.NO_IMAGE, f"the frame could not be decoded: {error}"
    if isinstance(error, ValueError):  # the engine's BadRequestError and other input problems
        return Status.BAD_REQUEST, str(error)
    return Status.MODEL_ERROR, f"{type(error).__name__}: {error}"


def _request_problem(request: Request) -> str:
    if request.task not in {int(t) for t in Task}:
        return f"unknown task {request.task}; expected 0..{max(int(t) for t in Task)}"
    if request.task != Task.DETECT and not request.query.strip():
        return "empty query"
    if len(request.query) > MAX_QUERY_CHARS:
        return f"query too long ({len(request.query)} characters, at most {MAX_QUERY_CHARS})"
    if request.score_threshold < 0 or request.score_threshold > 1 or math.isnan(request.score_threshold):
        return f"score_threshold must be in [0, 1], got {request.score_threshold}"
    return ""


def _goal_boxes(regions: list[Any]) -> tuple[list[BoxXYXY], str]:
    boxes = [messages.msg_to_box(r) for r in regions]
    for i, box in enumerate(boxes):
        if not all(math.isfinite(v) for v in box):
            return [], f"region {i} has a non-finite coordinate: {box}"
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
            return [], f"region {i} must have a positive size, got size_x={regions[i].size_x}, " \
                       f"size_y={regions[i].size_y}"
    return boxes, ""


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    text = spec.description + (f" One of: {', '.join(spec.choices)}." if spec.choices else "")
    desc = ParameterDescriptor(description=text, read_only=False)
    if isinstance(spec.default, bool):
        return desc
    if isinstance(spec.default, int) and spec.min is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
    elif isinstance(spec.default, float) and spec.min is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                        step=0.0)]
    return desc


def _optional_vision_msgs() -> Any:
    try:
        import vision_msgs.msg as vision
    except ImportError:
        return None
    return vision


def _to_vision_msgs(answer: GroundedAnswer) -> Any:
    vision = _optional_vision_msgs()
    out = vision.Detection2DArray(header=answer.header)
    for det in answer.detections.detections:
        v = vision.Detection2D(header=det.header, id=det.id)
        v.bbox.center.position.x, v.bbox.center.position.y = det.bbox.center.position.x, det.bbox.center.position.y
        v.bbox.size_x, v.bbox.size_y = det.bbox.size_x, det.bbox.size_y
        for r in det.results:
            h = vision.ObjectHypothesisWithPose()
            h.hypothesis.class_id, h.hypothesis.score = r.hypothesis.class_id, r.hypothesis.score
            h.pose = r.pose
            v.results.append(h)
        out.detections.append(v)
    return out


def _rss_mb() -> float:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def _empty_device_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(args: list[str] | None = None) -> int:
    """Console script ``groma_node``: ``groma_node --ros-args --params-file config/groma.yaml -r image:=...``."""
    rclpy.init(args=args)
    node = GromaNode()
    if node.get_parameter("autostart").value:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
    # One executor thread: every callback is short (frames are buffered, queries queued, goals awaited), the model
    # runs on the worker thread. rclpy's MultiThreadedExecutor added ~2.5 ms to each query's delivery here
    # (benchmarks/RESULTS.md).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            node.trigger_shutdown()  # from any state: answers pending queries CANCELED, frees the model
        except Exception:  # noqa: BLE001 - best effort on the way out (the context may be gone already)
            pass
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
