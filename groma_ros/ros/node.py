"""The Groma lifecycle node: camera frames and spoken queries in, grounded answers out, for every camera of a robot.

Life of the node (the ROS 2 managed-node convention):

* start: parameters declared; query intake (``~/query``, ``~/<camera>/query``, the ``~/ground`` action) and every
  output exist from here to shutdown, so a query sent in any state gets its one answer (``MODEL_ERROR`` "not
  active" outside the active state);
* configure: validate parameters and load the model (a load failure fails the transition with the reason);
* activate: subscribe to the cameras and serve; deactivate: unsubscribe, answer waiting and running queries
  ``CANCELED``, keep the model (activating again costs milliseconds, not a reload);
* cleanup: free the model and every buffer; shutdown: the same from any state.

Camera callbacks only store messages; one worker thread runs the model for every camera (one model in memory),
so callbacks never block and every query gets exactly one ``GroundedAnswer``.
"""

from __future__ import annotations

import gc
import itertools
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from groma_ros.action import Ground
from groma_ros.drawing import draw_grounding
from groma_ros.engine.parsing import StreamParser
from groma_ros.engine.types import Answer, Status, Task
from groma_ros.msg import GroundedAnswer, GroundedDetection3DArray, GroundedDetectionArray
from groma_ros.ros import diagnostics, messages
from groma_ros.ros.camera import CameraInput
from groma_ros.ros.frame_buffer import Frame, stamp_to_ns
from groma_ros.ros.image_codec import ImageConversionError, compressed_to_rgb8, cv2_to_imgmsg, imgmsg_to_rgb8
from groma_ros.ros.lifting import DepthLifter, Lifted, TransformSource
from groma_ros.ros.markers import detections_to_marker_array
from groma_ros.ros.params import (
    ALL_CAMERAS,
    CAMERA_OVERRIDES,
    SPEC_BY_NAME,
    SPECS,
    CameraSettings,
    NodeParams,
    camera_name_problem,
    descriptor,
    validate_one,
)
from groma_ros.ros.requests import Rejected, Request, goal_boxes, request_problem
from groma_ros.ros.worker import Job, QueryWorker

# Query intake and answers keep every message (KEEP_ALL, reliable): a burst is queued by DDS, never dropped, and a
# slow answer subscriber cannot lose an answer. Clients need a publisher/subscription history as deep as their
# bursts (README, "Guarantees").
INTAKE_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
ANSWER_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
RESULTS_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
DEBUG_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
DEACTIVATE_WAIT_S = 30.0
SIGNAL_POLL_S = 0.2
SHUTDOWN_FLUSH_S = 0.5


@dataclass
class Outcome:
    """What a finished job hands back: the engine answer and the frame it was computed on."""

    answer: Answer | None
    header: Header
    camera: str = ""
    rgb: Any = None
    lifted: Lifted | None = None
    aborted_before_start: bool = False


@dataclass(frozen=True)
class Target:
    """What a job answers on: a camera frame, or (``frame`` None) a live conversation's pinned frame."""

    camera: CameraInput
    frame: Frame[Any] | None
    pinned_header: Header | None = None

    @property
    def header(self) -> Header:
        return self.frame.msg.header if self.frame is not None else self.pinned_header


class GromaNode(LifecycleNode):
    """Lifecycle node ``groma``: ``~/query`` + ``~/ground`` in; answers, detections, 3-D, debug out."""

    def __init__(self, node_name: str = "groma", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._param_problems: list[str] = []
        for spec in SPECS:
            self._declare(spec.name, spec.default, descriptor(spec))
        self._declare_camera_overrides(self._declared_cameras())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.params: NodeParams | None = None
        self.engine: Any = None
        self.worker: QueryWorker | None = None
        self.cameras: dict[str, CameraInput] = {}
        self._active = False
        self._ids = itertools.count(1)
        self._talks: dict[str, tuple[str, float]] = {}  # query topic -> (its conversation id, last query time)
        self._talk_ids = itertools.count(1)
        self._camera_group = MutuallyExclusiveCallbackGroup()
        self._query_group = ReentrantCallbackGroup()
        self._camera_subscriptions: list[Any] = []
        self._warned: set[str] = set()
        self._stats = {"answered": 0, "busy": 0, "errors": 0, "last_total_ms": 0.0, "last_encode_ms": 0.0,
                       "last_generate_ms": 0.0}
        self._stats_lock = threading.Lock()
        self._model_error = ""
        self._last_decoded: tuple[tuple[str, int], Any] | None = None  # follow-ups on a frame skip the decode
        self._transforms = TransformSource(self, self._warn_once)
        # Action goals await their answer: the worker queues it and triggers this guard condition, whose callback
        # runs on the executor thread (rclpy futures are not meant to be completed from other threads).
        self._completions: queue.SimpleQueue[tuple[Future, GroundedAnswer]] = queue.SimpleQueue()
        self._completion_guard = self.create_guard_condition(self._complete_goals)
        self._publishers_ = self._create_outputs()
        self._query_topics: dict[str, Any] = {}
        self._open_query_intake(self._declared_cameras())
        services = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
        self._action_server = ActionServer(
            self, Ground, "~/ground", execute_callback=self._execute_goal, callback_group=self._query_group,
            goal_callback=lambda goal: GoalResponse.ACCEPT, cancel_callback=lambda goal: CancelResponse.ACCEPT,
            goal_service_qos_profile=services, result_service_qos_profile=services,
            cancel_service_qos_profile=services, feedback_pub_qos_profile=QoSProfile(depth=100))
        self._diag_period = float(self.get_parameter("diagnostics_period_s").value)
        self._diag_timer = self.create_timer(self._diag_period, self._publish_diagnostics,
                                             callback_group=self._camera_group)

    # ------------------------------------------------------------------ start-up (node life)
    def _declare(self, name: str, default: Any, desc: Any) -> None:
        try:
            self.declare_parameter(name, default, desc)
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            # An out-of-range override must fail configure with a clear log, not crash the process.
            self._param_problems.append(f"{name}: {exc}")
            self.declare_parameter(name, default, desc, ignore_override=True)

    def _declared_cameras(self) -> list[str]:
        names = list(self.get_parameter("cameras").value or [])
        return names if camera_name_problem(names) is None else [""]

    def _declare_camera_overrides(self, names: list[str]) -> None:
        """``<camera>.image_transport`` / ``<camera>.use_depth`` for each named camera, defaulting to the globals."""
        for name in names:
            for key in CAMERA_OVERRIDES if name else ():
                full = f"{name}.{key}"
                if not self.has_parameter(full):
                    spec = replace(SPEC_BY_NAME[key], name=full, default=self.get_parameter(key).value,
                                   description=f"{SPEC_BY_NAME[key].description} For camera {name!r}.")
                    self._declare(full, spec.default, descriptor(spec))

    def _create_outputs(self) -> dict[str, Any]:
        pubs = {
            "answer": self.create_publisher(GroundedAnswer, "~/answer", ANSWER_QOS),
            "detections": self.create_publisher(GroundedDetectionArray, "~/detections", RESULTS_QOS),
            "detections_3d": self.create_publisher(GroundedDetection3DArray, "~/detections_3d", RESULTS_QOS),
            "debug_image": self.create_publisher(Image, "~/debug_image", DEBUG_QOS),
            "markers": self.create_publisher(MarkerArray, "~/markers", RESULTS_QOS),
            "diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", RESULTS_QOS),
        }
        vision = messages.optional_vision_msgs()
        if vision is not None:
            pubs["vision"] = self.create_publisher(vision.Detection2DArray, "~/vision/detections", RESULTS_QOS)
        return pubs

    def _open_query_intake(self, cameras: list[str]) -> None:
        """``~/query`` (the default camera) and ``~/<camera>/query`` per named camera; they live until shutdown."""
        topics = {"~/query": ""} | {f"~/{name}/query": name for name in cameras if name}
        for topic, camera in topics.items():
            if topic not in self._query_topics:
                self._query_topics[topic] = self.create_subscription(
                    String, topic, lambda msg, camera=camera: self._on_query(msg, camera), INTAKE_QOS,
                    callback_group=self._query_group)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params = self._read_params()
            self._declare_camera_overrides(list(self.params.cameras))
            self._open_query_intake(list(self.params.cameras))
            self.cameras = {name: self._make_camera(self._camera_settings(name)) for name in self.params.cameras}
        except ValueError as exc:
            self.params = None
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        p = self.params
        try:
            self.engine = self._load_engine(p)
        except Exception as exc:  # noqa: BLE001 - a failed load must fail the transition, not the node
            self._model_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: could not load the model: {self._model_error}")
            self.params, self.cameras = None, {}
            return TransitionCallbackReturn.FAILURE
        self._model_error = ""
        self._apply_runtime(p)
        self.worker = QueryWorker(p.queue_size, on_error=self._log_finish_error)
        self._restart_diagnostics(p.diagnostics_period_s)
        cams = ", ".join(f"{c.label} ({c.settings.image_transport}{', depth' if c.lifter else ''})"
                         for c in self.cameras.values())
        self.get_logger().info(
            f"configured: model {self.engine.model_id} on {self.engine.device} ({p.model_dtype}); cameras: {cams}; "
            f"queue={p.queue_size}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for camera in self.cameras.values():
            self._subscribe(camera)
        self._active = True
        topics = ", ".join(self.resolve_topic_name(c.image_topic) for c in self.cameras.values())
        self.get_logger().info(f"active: listening on {self.resolve_topic_name('~/query')}; cameras on {topics}")
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

    def _read_params(self) -> NodeParams:
        if self._param_problems:
            raise ValueError("invalid parameters: " + "; ".join(self._param_problems))
        return NodeParams.from_values({spec.name: self.get_parameter(spec.name).value for spec in SPECS})

    def _camera_settings(self, name: str) -> CameraSettings:
        values = {key: self.get_parameter(f"{name}.{key}" if name else key).value for key in CAMERA_OVERRIDES}
        for key, value in values.items():
            problem = validate_one(SPEC_BY_NAME[key], value)
            if problem:
                raise ValueError(f"camera {name!r}: {problem}")
        return CameraSettings(name, **values)

    def _make_camera(self, settings: CameraSettings) -> CameraInput:
        p = self.params
        assert p is not None
        name = settings.name

        def warn(key: str, text: str) -> None:
            self._warn_once(f"{name}/{key}", text if not name else f"camera {name!r}: {text}")

        lifter = None
        if settings.use_depth:
            lifter = DepthLifter(p.frame_buffer_size, p.depth_max_stamp_diff_s, p.target_frame, p.tf_timeout_s,
                                 warn, self._transforms, max_depth_m=p.depth_max_m)
        return CameraInput(settings, p.frame_buffer_size, lifter, lambda: self.get_clock().now().nanoseconds,
                           self._warn_once)

    def _load_engine(self, p: NodeParams) -> Any:
        from groma_ros.engine import GromaEngine  # torch import only when a model is needed
        from groma_ros.engine.loading import progress_logger

        self.get_logger().info(f"loading model {p.model_path or '<embedded default>'} ...")
        t0 = time.monotonic()
        engine = GromaEngine.from_pretrained(
            p.model_path or None, device=p.model_device, dtype=p.model_dtype,
            num_threads=p.model_num_threads or None, cache_frames=p.model_cache_frames,
            progress=progress_logger(self.get_logger().info), decode=p.model_decode, quantization=p.model_quantization)
        self.get_logger().info(f"model {engine.model_id} loaded in {time.monotonic() - t0:.1f} s")
        if p.model_decode == "compiled":  # pay the compilation now, not on the first spoken command
            t0 = time.monotonic()
            engine.warm_up()
            self.get_logger().info(f"decode step compiled in {time.monotonic() - t0:.1f} s")
        return engine

    def _subscribe(self, camera: CameraInput) -> None:
        subs = self._camera_subscriptions
        subs.append(self.create_subscription(camera.image_type, camera.image_topic, camera.on_image,
                                             qos_profile_sensor_data, callback_group=self._camera_group, raw=True))
        lifter = camera.lifter
        if lifter is not None:
            for msg_type, topic, callback in ((CameraInfo, "camera_info", lifter.on_camera_info),
                                              (Image, "depth/image", lifter.on_depth),
                                              (CameraInfo, "depth/camera_info", lifter.on_depth_info)):
                subs.append(self.create_subscription(msg_type, camera.topic(topic), callback,
                                                     qos_profile_sensor_data, callback_group=self._camera_group))

    def _deactivate(self, reason: str) -> None:
        """Stop serving: no camera input, every waiting or running query answered CANCELED; the model stays."""
        self._active = False
        for sub in self._camera_subscriptions:
            self.destroy_subscription(sub)
        self._camera_subscriptions.clear()
        if self.worker is not None:
            for job in self.worker.abort_all():
                job.finish(job, None, _Aborted(reason))
            if not self.worker.wait_idle(DEACTIVATE_WAIT_S):
                self.get_logger().warning(f"the running query did not stop within {DEACTIVATE_WAIT_S:.0f} s")
        for camera in self.cameras.values():
            camera.clear()
        self._last_decoded = None

    def _release_all(self) -> None:
        """Cleanup: the worker, the model, cameras and parameters go; intake and outputs stay for the node's life."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.engine is not None:
            try:
                self.engine.release()
            finally:
                self.engine = None
                gc.collect()
                _empty_device_cache()
            self.get_logger().info("model released")
        self.cameras = {}
        self.params = None
        self._last_decoded = None

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        problems = []
        for param in params:
            spec = self._spec_of(param.name)
            if spec is None:
                if not param.name or not self.has_parameter(param.name):
                    problems.append(f"{param.name!r} is not a parameter of this node")
                continue  # rclpy's own (use_sim_time, ...)
            problem = validate_one(spec, param.value)
            if problem:
                problems.append(problem)
            elif spec.read_only and self.params is not None:
                problems.append(f"{spec.name} can only change while the node is unconfigured "
                                "(deactivate, cleanup, set it, configure)")
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        if self.params is not None:
            changes = {param.name.replace(".", "_"): param.value for param in params}
            values = self.params.as_ros_dict()
            values.update({k: v for k, v in changes.items() if k in values})
            self.params = NodeParams(**values)
            self._apply_runtime(self.params)
        return SetParametersResult(successful=True)

    def _spec_of(self, name: str) -> Any:
        if name in SPEC_BY_NAME:
            return SPEC_BY_NAME[name]
        camera, _, key = name.rpartition(".")
        if camera and key in CAMERA_OVERRIDES and self.has_parameter(name):
            return replace(SPEC_BY_NAME[key], name=name)
        return None

    def _apply_runtime(self, p: NodeParams) -> None:
        """Parameters that change while configured take effect at once (the lifters and the conversation store
        read them on their next use)."""
        if self.engine is not None:
            store = self.engine.conversations
            store.max_turns, store.max_tokens = p.conversation_max_turns, p.conversation_max_tokens
            store.idle_timeout_s, store.max_live = p.conversation_idle_timeout_s, p.conversation_max_live
        for camera in self.cameras.values():
            if camera.lifter is not None:
                camera.lifter.max_stamp_diff_s = p.depth_max_stamp_diff_s
                camera.lifter.target_frame = p.target_frame
                camera.lifter.tf_timeout_s = p.tf_timeout_s
                camera.lifter.max_depth_m = p.depth_max_m

    # ------------------------------------------------------------------ query input
    def _next_query_id(self) -> str:
        return f"{self.get_name()}-{next(self._ids):06d}"

    def _on_query(self, msg: String, camera: str) -> None:
        lift = any(c.lifter is not None for c in self.cameras.values())
        request = Request(self._next_query_id(), msg.data, int(Task.AUTO), camera=camera, lift_3d=lift,
                          conversation_id=self._topic_conversation(camera))
        self.submit_request(request, lambda answer: None)

    def _topic_conversation(self, camera: str) -> str:
        """With ``query_follows_conversation_s`` > 0, Strings on one query topic form conversations: one within
        that many seconds of the previous continues it, a later one starts a new one (a new id)."""
        p = self.params
        if p is None or p.query_follows_conversation_s <= 0 or self.engine is None:
            return ""
        now = time.monotonic()
        current = self._talks.get(camera)
        # "unknown": its first turn may still wait in the queue; any other non-live state means it ended
        if (current is None or now - current[1] > p.query_follows_conversation_s
                or self.engine.conversations.state(current[0]).status not in ("live", "unknown")):
            current = (f"{self.get_name()}/{camera or 'query'}/{next(self._talk_ids)}", now)
        self._talks[camera] = (current[0], now)
        return current[0]

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

        boxes, problem = goal_boxes(goal.regions, messages.msg_to_box)
        request = Request(self._next_query_id(), goal.query, int(goal.task), boxes=boxes, camera=goal.camera,
                          image_stamp_ns=stamp_to_ns(goal.image_stamp),
                          score_threshold=float(goal.score_threshold), max_new_tokens=int(goal.max_new_tokens),
                          lift_3d=bool(goal.lift_3d), conversation_id=goal.conversation_id,
                          continue_conversation=bool(goal.continue_conversation), on_progress=progress,
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
        """Validate, pick the frame(s), queue the job; ``on_answer`` is called exactly once (maybe right away)."""
        try:
            targets = self._targets(request, precheck_error)
        except Rejected as rejected:
            answer = messages.error_answer_msg(request.query_id, request.query, request.task, rejected.status,
                                               rejected.reason, self._model_id(), rejected.header,
                                               camera=rejected.camera, conversation_id=request.conversation_id)
            if rejected.status == Status.BUSY:
                with self._stats_lock:
                    self._stats["busy"] += 1
            self._publish_answer(answer)
            on_answer(answer)
            return

        def finish(job: Job, outcome: Outcome | None, error: BaseException | None) -> None:
            """Exactly one answer, whatever fails on the way: extras (detections, 3-D, debug image) never cost it."""
            try:
                answer = self._answer_from(request, targets[0], outcome, error)
            except Exception as exc:  # noqa: BLE001 - a message that cannot be built still owes an answer
                answer = messages.error_answer_msg(request.query_id, request.query, request.task, Status.MODEL_ERROR,
                                                   f"{type(exc).__name__}: {exc}", self._model_id(), targets[0].header,
                                                   camera=targets[0].camera.name,
                                                   conversation_id=request.conversation_id)
            try:
                self._publish_answer(answer)
                if outcome is not None and answer.status == Status.OK:
                    try:
                        self._publish_extras(request, answer, outcome)
                    except Exception as exc:  # noqa: BLE001 - the answer itself is out; say what is missing
                        self.get_logger().warning(f"extra outputs of {request.query_id} not published: "
                                                  f"{type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
            finally:
                on_answer(answer)

        job = Job(request.query_id, run=lambda job: self._run(job, request, targets),
                  finish=finish, cancel_requested=request.cancel_requested)
        if request.on_progress:
            request.on_progress(Ground.Feedback.STAGE_QUEUED, "")
        worker = self.worker
        if worker is None or not worker.submit(job):
            with self._stats_lock:
                self._stats["busy"] += 1
            capacity = worker.capacity if worker is not None else 0
            depth = worker.depth if worker is not None else 0
            answer = messages.error_answer_msg(
                request.query_id, request.query, request.task, Status.BUSY,
                f"{depth} queries are waiting (queue_size={capacity}); try again later", self._model_id(),
                targets[0].header, camera=targets[0].camera.name, conversation_id=request.conversation_id)
            self._publish_answer(answer)
            on_answer(answer)

    def _targets(self, request: Request, precheck_error: str) -> list[Target]:
        """The frame(s) a request will be answered on; ``Rejected`` when it cannot run now."""
        problem = precheck_error or request_problem(request)
        if problem:
            raise Rejected(Status.BAD_REQUEST, problem, camera=request.camera)
        if not self._active or self.engine is None or self.params is None:
            label = self._state_machine.current_state[1]
            reason = f"; last configure failed: {self._model_error}" if self._model_error else ""
            raise Rejected(Status.MODEL_ERROR, f"node is not active (state: {label}){reason}", camera=request.camera)
        if request.conversation_id:
            pinned = self._conversation_target(request)
            if pinned is not None:
                return [pinned]
        if request.camera == ALL_CAMERAS:
            if request.image_stamp_ns:
                raise Rejected(Status.BAD_REQUEST, "camera '*' answers on each camera's newest frame; "
                                                   "image_stamp must be zero")
            cameras = list(self.cameras.values())
        else:
            name = request.camera or self.params.cameras[0]
            if name not in self.cameras:
                known = ", ".join(repr(c) for c in self.cameras)
                raise Rejected(Status.BAD_REQUEST, f"unknown camera {request.camera!r}; this node has {known} "
                                                   f"(or '*' for all)", camera=request.camera)
            cameras = [self.cameras[name]]
        targets, stale = [], []
        for camera in cameras:
            frame = camera.frame(request.image_stamp_ns)
            if frame is None:
                continue
            age = frame.age_s()
            max_age = self.params.max_image_age_s
            if max_age > 0 and age > max_age:
                stale.append((camera, frame, age))
            else:
                targets.append(Target(camera, frame))
        if targets:
            return targets
        if stale:
            camera, frame, age = min(stale, key=lambda s: s[2])
            raise Rejected(Status.STALE_IMAGE, f"newest usable frame of {camera.label} arrived {age:.2f} s ago "
                                               f"(max_image_age_s={self.params.max_image_age_s})",
                           frame.msg.header, camera.name)
        if request.image_stamp_ns:
            camera = cameras[0]
            raise Rejected(Status.NO_IMAGE, f"no buffered frame with stamp {request.image_stamp_ns} ns from "
                                            f"{camera.label} (the newest {camera.frames.capacity} frames are kept)",
                           camera=camera.name)
        topics = ", ".join(self.resolve_topic_name(c.image_topic) for c in cameras)
        raise Rejected(Status.NO_IMAGE, f"no image received yet on {topics}", camera=request.camera)

    def _conversation_target(self, request: Request) -> Target | None:
        """A live conversation answers on its pinned frame; an ended (or, to continue, unknown) id is refused;
        None for a new id, which starts on the newest frame of the request's camera."""
        if request.camera == ALL_CAMERAS:
            raise Rejected(Status.BAD_REQUEST, "a conversation is about one camera's frame: give a camera, not '*'")
        store = self.engine.conversations
        conv = store.get(request.conversation_id)
        if conv is not None and "camera" in conv.meta:
            camera = self.cameras.get(conv.meta["camera"])
            if camera is None:  # the node was reconfigured without that camera
                raise Rejected(Status.NO_CONVERSATION, f"conversation {request.conversation_id!r} is about camera "
                                                       f"{conv.meta['camera']!r}, which this node no longer has")
            if request.camera and request.camera != camera.name:
                raise Rejected(Status.BAD_REQUEST, f"conversation {request.conversation_id!r} is about "
                                                   f"{camera.label}, not camera {request.camera!r}")
            return Target(camera, None, conv.meta["header"])
        state = store.state(request.conversation_id)
        if conv is None and (state.status != "unknown" or request.continue_conversation):
            raise Rejected(Status.NO_CONVERSATION, state.message, camera=request.camera)
        return None

    # ------------------------------------------------------------------ the worker's part
    def _run(self, job: Job, request: Request, targets: list[Target]) -> Outcome:
        if job.should_stop():
            return Outcome(None, targets[0].header, targets[0].camera.name, aborted_before_start=True)
        engine, p = self.engine, self.params
        if engine is None or p is None:
            raise _Aborted("model released")
        outcomes = []
        for target in targets:
            outcomes.append(self._run_on(job, request, target, engine, p))
            if job.should_stop():
                break
        best = max(outcomes, key=lambda o: _answer_score(o.answer))
        lifter = self.cameras[best.camera].lifter if best.camera in self.cameras else None
        if request.lift_3d and lifter is not None and best.answer is not None and not best.answer.canceled:
            try:
                best.lifted = lifter.lift(best.answer, best.header)
            except Exception as exc:  # noqa: BLE001 - a bad depth frame/camera_info must not cost the 2-D answer
                self.get_logger().warning(f"3-D lifting skipped for {request.query_id}: {type(exc).__name__}: {exc}",
                                          throttle_duration_sec=5.0)
        return best

    def _run_on(self, job: Job, request: Request, target: Target, engine: Any, p: NodeParams) -> Outcome:
        if request.on_progress:
            request.on_progress(Ground.Feedback.STAGE_PERCEIVING, "")
        rgb = self._decoded_frame(target) if target.frame is not None else None
        partial = StreamParser()  # feedback shows the answer as users read it: phrases, no tags

        def on_token(piece: str) -> None:
            partial.feed(piece)
            if request.on_progress:
                request.on_progress(Ground.Feedback.STAGE_GENERATING, partial.snapshot().text)

        score = request.score_threshold or p.score_threshold or None
        frame_id = (target.camera.name, target.frame.seq) if target.frame is not None else None
        answer = engine.ask(rgb, request.query, task=Task(request.task), boxes=request.boxes, frame_id=frame_id,
                            max_new_tokens=request.max_new_tokens or p.max_new_tokens or None,
                            score_threshold=score, on_token=on_token, should_cancel=job.should_stop,
                            conversation_id=request.conversation_id or None,
                            continue_only=request.continue_conversation)
        header, camera = target.header, target.camera.name
        if request.conversation_id:
            # the conversation's first turn pins this frame; later turns (even ones queued as "new") answer on it
            conv = engine.conversations.get(request.conversation_id)
            if conv is not None:
                conv.meta.setdefault("camera", camera)
                conv.meta.setdefault("header", header)
                header, camera = conv.meta["header"], conv.meta["camera"]
        return Outcome(answer, header, camera, rgb=rgb)

    def _decoded_frame(self, target: Target) -> Any:
        """RGB of a frame; follow-up queries on the same frame reuse the last decode (worker thread only)."""
        key = (target.camera.name, target.frame.seq)
        if self._last_decoded is not None and self._last_decoded[0] == key:
            return self._last_decoded[1]
        msg = target.frame.msg.message()
        rgb = compressed_to_rgb8(msg) if isinstance(msg, CompressedImage) else imgmsg_to_rgb8(msg)
        self._last_decoded = (key, rgb)
        return rgb

    # ------------------------------------------------------------------ outputs
    def _model_id(self) -> str:
        engine = self.engine
        return engine.model_id if engine is not None else ""

    def _answer_from(self, request: Request, target: Target, outcome: Outcome | None,
                     error: BaseException | None) -> GroundedAnswer:
        model_id = self._model_id()
        header, camera = target.header, target.camera.name
        if error is not None:
            status, text = _status_of(error)
            if status == Status.MODEL_ERROR:
                self.get_logger().error(f"query {request.query_id} failed: {text}\n"
                                        + "".join(traceback.format_exception(error)))
            with self._stats_lock:
                self._stats["errors"] += 1
            return messages.error_answer_msg(request.query_id, request.query, request.task, status, text,
                                             model_id, header, camera=camera, conversation_id=request.conversation_id)
        assert outcome is not None
        if outcome.aborted_before_start or outcome.answer is None:
            return messages.error_answer_msg(request.query_id, request.query, request.task, Status.CANCELED,
                                             "canceled before it started", model_id, outcome.header,
                                             camera=outcome.camera, conversation_id=request.conversation_id)
        answer = outcome.answer
        status = Status.CANCELED if answer.canceled else Status.OK
        points = outcome.lifted.points if outcome.lifted is not None else None
        msg = messages.answer_msg(answer, outcome.header, request.query_id, model_id, points, status,
                                  "canceled during generation" if answer.canceled else "", camera=outcome.camera)
        with self._stats_lock:
            self._stats["answered"] += 1
            self._stats["last_total_ms"] = answer.timings.total_ms
            self._stats["last_encode_ms"] = answer.timings.encode_ms
            self._stats["last_generate_ms"] = answer.timings.generate_ms
        return msg

    def _publish_answer(self, answer: GroundedAnswer) -> None:
        self._publishers_["answer"].publish(answer)

    def _publish_extras(self, request: Request, answer: GroundedAnswer, outcome: Outcome) -> None:
        pubs = self._publishers_
        pubs["detections"].publish(answer.detections)
        lifted = outcome.lifted
        if lifted is not None and lifted.detections:
            header = Header(stamp=outcome.header.stamp, frame_id=lifted.frame_id)
            array = messages.detections_3d_msg(header, request.query_id, lifted.source_frame_id, lifted.detections)
            pubs["detections_3d"].publish(array)
            pubs["markers"].publish(detections_to_marker_array(array.detections, header))
        p = self.params
        debug = pubs["debug_image"]
        # a conversation's later turns reuse the pinned frame's perception, not its pixels: nothing to draw on
        if p and p.publish_debug_image and outcome.rgb is not None and debug.get_subscription_count() > 0:
            pairs = messages.detection_pairs(outcome.answer)
            items = [(phrase or messages.DETECT_CLASS_ID, region.box, region.score)
                     for phrase, _s, _e, region in pairs]
            debug.publish(cv2_to_imgmsg(draw_grounding(outcome.rgb, items), "rgb8", header=outcome.header))
        if "vision" in pubs:
            pubs["vision"].publish(messages.to_vision_msgs(answer))

    def _restart_diagnostics(self, period_s: float) -> None:
        if period_s != self._diag_period:
            self.destroy_timer(self._diag_timer)
            self._diag_period = period_s
            self._diag_timer = self.create_timer(period_s, self._publish_diagnostics,
                                                 callback_group=self._camera_group)

    def _publish_diagnostics(self) -> None:
        engine = self.engine
        if engine is not None:
            engine.conversations.expire_idle()  # frees idle conversations' KV even when nobody asks about them
        p = self.params
        with self._stats_lock:
            stats = dict(self._stats)
        worker = self.worker
        values = {
            "model": self._model_id(),
            "device": p.model_device if p else "",
            "dtype": p.model_dtype if p else "",
            "rss_mb": f"{diagnostics.rss_mb():.1f}",
            "queue_depth": str(worker.depth if worker else 0),
            "frames_received": str(sum(c.frames.received for c in self.cameras.values())),
            "answered": str(stats["answered"]),
            "busy_rejections": str(stats["busy"]),
            "errors": str(stats["errors"]),
            "last_total_ms": f"{stats['last_total_ms']:.1f}",
            "last_encode_ms": f"{stats['last_encode_ms']:.1f}",
            "last_generate_ms": f"{stats['last_generate_ms']:.1f}",
        }
        for camera in self.cameras.values():
            values[f"frames_received/{camera.name or '(unnamed)'}"] = str(camera.frames.received)
        array = diagnostics.groma_status(self.get_fully_qualified_name(), self._state_machine.current_state[1],
                                         self._active, self._model_error, values)
        array.header.stamp = self.get_clock().now().to_msg()
        self._publishers_["diagnostics"].publish(array)

    # ------------------------------------------------------------------ helpers
    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.get_logger().warning(text)

    def _log_finish_error(self, job: Job, error: BaseException) -> None:
        if not self.context.ok():  # Ctrl-C shut the context down under a running query: nothing can be sent
            self._warn_once("shutdown", f"query {job.query_id} not answered: the node is shutting down")
            return
        self.get_logger().error(f"answering query {job.query_id} failed: {type(error).__name__}: {error}\n"
                                + "".join(traceback.format_exception(error)))


class _Aborted(RuntimeError):
    """The node stopped the query (deactivate/shutdown)."""


def _status_of(error: BaseException) -> tuple[Status, str]:
    """Map a failed job's exception to the answer status users see."""
    if isinstance(error, _Aborted):
        return Status.CANCELED, str(error)
    from groma_ros.engine.conversations import ConversationNotFoundError  # the engine is loaded by now

    if isinstance(error, ConversationNotFoundError):
        return Status.NO_CONVERSATION, str(error)
    if isinstance(error, ImageConversionError):
        return Status.NO_IMAGE, f"the frame could not be decoded: {error}"
    if isinstance(error, ValueError):  # the engine's BadRequestError and other input problems
        return Status.BAD_REQUEST, str(error)
    return Status.MODEL_ERROR, f"{type(error).__name__}: {error}"


def _answer_score(answer: Answer | None) -> float:
    """How sure an answer is of its best region: grounding probability x proposal score (for camera '*')."""
    if answer is None or answer.canceled:
        return -1.0
    scores = [g * region.score for item in answer.items
              for region, g in zip(item.regions, messages.grounding_scores(item), strict=True)]
    return max(scores, default=0.0)


def _empty_device_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(args: list[str] | None = None) -> int:
    """Console script ``groma_node``: ``groma_node --ros-args --params-file config/groma.yaml -r image:=...``."""
    # The node handles SIGINT/SIGTERM itself: rclpy's handler shuts the context down at once, after which the
    # answers owed to queued and running queries could no longer be sent. Here they are answered CANCELED first.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (a background job)
        signal.signal(signum, _interrupt)
    node = GromaNode()
    if node.get_parameter("autostart").value:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
    # One executor thread: every callback is short (frames are buffered, queries queued, goals awaited), the model
    # runs on the worker thread. rclpy's MultiThreadedExecutor added ~2.5 ms to each query's delivery here
    # (benchmarks/RESULTS.md).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)  # wakes at least this often to notice a signal
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C under `ros2 launch` arrives twice (the terminal's and launch's own SIGINT): the second must not
        # interrupt the clean shutdown; launch escalates to SIGKILL if it ever hangs.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            node.trigger_shutdown()  # from any state: answers pending queries CANCELED, frees the model
            end = time.monotonic() + SHUTDOWN_FLUSH_S
            while time.monotonic() < end:  # goal coroutines send their CANCELED results; DDS delivers the answers
                executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
