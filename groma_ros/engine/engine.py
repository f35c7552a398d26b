"""GromaEngine: perceive a frame once, answer many questions about it.

Per frame (``perceive``, cached by ``frame_id``): preprocess → DINOv2 + proposer + region maps → NMS
(deterministic, score order) → region tokens → the prompt prefix (system text, image tokens, region pairs)
prefilled once into a KV cache. Per question (``ask``): tokenize only the suffix (the user turn), run it on a
fork of the cached prefix, decode greedily with streaming and cancel, parse tags into grounded items.
The result equals a from-scratch forward of the whole prompt (tested), at a fraction of the cost.

REGION_QA user boxes join the NMS candidates (score 1.0) as in the original, which changes the region
list, so they get their own prefix per box set (built from the frame's cached vision output).

Conversations (``ask(..., conversation_id=...)``, see ``conversations``): the first turn pins the frame's region
set; each later turn prefills only its message (and the previous answer's unfed ``</s>``) on the conversation's
KV, which grows per turn from a fork of the frame prefix; equal to a from-scratch forward too (tested).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from groma_ros.model.generation import GenerationOutput, greedy_decode

from . import intents, parsing, prompts
from .conversations import (
    Conversation,
    ConversationNotFoundError,
    ConversationStore,
    Turn,
    fit_turn,
    pinned_box_index,
)
from .decoding import make_decoder
from .errors import BadRequestError, ModelLoadError
from .loading import ProgressCallback, load_model
from .modes import DecodeMode
from .perception import (
    FrameCache,
    Perception,
    PrefixState,
    boxes_to_pixels,
    clip_user_box,
    pixels_to_cxcywh,
    tensor_bytes,
)
from .preprocess import ImageError, Interpolation, check_image, preprocess
from .timing import StageClock, sync
from .types import Answer, BoxXYXY, GroundedItem, Region, Task, Timings

DEFAULT_CACHE_BYTES = 2 << 30


@dataclass
class QueryTrace:
    """Internals of one query, for tests and benchmarks: prompt ids and the per-step logits."""

    prefix_ids: torch.Tensor  # [1, T_prefix] expanded LLM ids of the cached prefix
    suffix_ids: torch.Tensor  # [1, T_suffix] LLM ids after the prefix: earlier turns + the query (<refer_box> → <r k>)
    prompt_ids: list[int]  # the unexpanded prompt (prefix + suffix) exactly as the tokenizer gives it
    generation: GenerationOutput = field(default_factory=GenerationOutput)
    prefilled: int = 0  # ids this query prefilled on its cached context (the rest of the prompt was in the cache)


@dataclass
class _TurnInput:
    """What one query prefills: ``ids`` on top of ``cache`` (``cache_len`` tokens, never mutated), the positions
    in ``ids`` that take region features, and for the trace the ids between the frame prefix and ``ids``."""

    cache: DynamicCache
    cache_len: int
    ids: list[int]
    feat_pos: list[int]
    feat_regions: list[int]
    before: list[int]  # LLM ids already in ``cache`` after the frame prefix (earlier turns)
    raw_before: list[int]  # tokenizer ids of all earlier turns
    raw_suffix: list[int]  # tokenizer ids of this turn's message


class GromaEngine:
    """Perceive-once, ask-many Groma inference (no ROS). Thread-safe: calls are serialized.

    ``conversation_*`` set ``self.conversations`` (a ``ConversationStore``; its settings change at runtime too):
    at most ``max_live`` live conversations, ended after ``idle_timeout_s`` idle, each keeping at most
    ``max_turns`` turns and ``max_tokens`` tokens of turns, beyond which ``on_limit`` drops the oldest turns or
    ends it. ``clock`` (seconds, monotonic) times idle expiry. Conversations count in ``cache_bytes``.
    """

    def __init__(self, model, tokenizer, *, model_id: str = "groma", cache_frames: int = 4,
                 cache_bytes: int | None = DEFAULT_CACHE_BYTES, interpolation: Interpolation = "bilinear",
                 decode: DecodeMode = "auto", conversation_max_live: int | None = 8,
                 conversation_idle_timeout_s: float | None = 300.0, conversation_max_turns: int | None = 16,
                 conversation_max_tokens: int | None = 1024, conversation_on_limit: str = "drop_oldest",
                 clock: Callable[[], float] = time.monotonic) -> None:
        cfg = model.config
        if tokenizer.vocab_size != cfg.llm_cfg.vocab_size or len(tokenizer) != cfg.vocab_size:
            raise ModelLoadError(
                f"tokenizer does not match the model: {tokenizer.vocab_size}+{len(tokenizer) - tokenizer.vocab_size}"
                f" ids vs model {cfg.llm_cfg.vocab_size}+{cfg.num_new_token}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = str(model.device)
        self.interpolation: Interpolation = interpolation
        self.frames = FrameCache(cache_frames, cache_bytes)
        self._lock = threading.RLock()
        self._ids = cfg.token_ids
        self.prompts = prompts.PromptBuilder()
        self._prefix_ids = torch.tensor([tokenizer.encode(prompts.PREFIX)], dtype=torch.long)
        self.decode_mode = decode
        self._decoder = make_decoder(model, decode)
        self.conversations = ConversationStore(
            max_live=conversation_max_live, idle_timeout_s=conversation_idle_timeout_s,
            max_turns=conversation_max_turns, max_tokens=conversation_max_tokens, on_limit=conversation_on_limit,
            clock=clock)

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | None = None, *, device: str = "cpu", dtype: str = "float32",
                        num_threads: int | None = None, cache_frames: int = 4,
                        progress: bool | ProgressCallback = True,
                        cache_bytes: int | None = DEFAULT_CACHE_BYTES,
                        interpolation: Interpolation = "bilinear", decode: DecodeMode = "auto",
                        quantization: str | None = None) -> GromaEngine:
        """Load a model directory (released format or ours; ``None`` = the embedded default model).

        See ``loading.load_model`` for ``num_threads`` and ``progress`` (True: a bar for big checkpoints; a
        callable gets ``(loaded_bytes, total_bytes)`` after each tensor). ``decode``: see ``decoding``
        (``static``/``compiled`` pay off on a GPU; ``compiled`` on CUDA compiles perception too, see
        ``GromaForConditionalGeneration.compile_perception``).
        ``quantization``: None/"none", "int8" or "int4" weight-only LLM linears (torchao; int4 on a GPU needs
        bfloat16). Raises ``ModelNotFoundError`` / ``ModelLoadError``.
        """
        model, tokenizer, directory = load_model(path, device=device, dtype=dtype, num_threads=num_threads,
                                                 quantization=quantization, progress=progress)
        if decode == "compiled" and model.device.type == "cuda":
            model.compile_perception(warm_up=False)  # image graph, region tokens, prefix prefill: CUDA graphs too
        return cls(model, tokenizer, model_id=directory.name, cache_frames=cache_frames, cache_bytes=cache_bytes,
                   interpolation=interpolation, decode=decode)

    def warm_up(self) -> None:
        """One throw-away query on a blank frame: builds kernels, CUDA graphs and the KV buffer up front."""
        blank = np.zeros((self.model.config.image_size, self.model.config.image_size, 3), np.uint8)
        self.ask(blank, "warm up", task=Task.VQA, max_new_tokens=3)
        self.frames.clear()

    def release(self) -> None:
        """Drop the model, tokenizer and cached frames (lifecycle deactivate); the engine is unusable after."""
        with self._lock:
            self.frames.clear()
            self.conversations.clear()
            self.model = None
            self.tokenizer = None
            self._decoder = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @property
    def released(self) -> bool:
        return self.model is None

    def _check_alive(self) -> None:
        if self.model is None:
            raise RuntimeError("GromaEngine was released; load a new one")

    # ---------------------------------------------------------------------------------------- perception
    def perceive(self, image_rgb: np.ndarray, frame_id: Hashable | None = None) -> Perception:
        """Perception of a frame; returns the cached one when ``frame_id`` was seen recently."""
        return self._perceive(image_rgb, frame_id)

    @torch.inference_mode()
    def _perceive(self, image_rgb: np.ndarray, frame_id: Hashable | None) -> Perception:
        with self._lock:
            self._check_alive()
            w, h = self._image_size(image_rgb)
            cached = self.frames.get(frame_id)
            if cached is not None and cached.image_size == (w, h):
                return cached  # (a different size under the same id means a new frame: rebuilt below)
            model, device = self.model, self.model.device
            t0 = time.perf_counter()
            pixels = preprocess(image_rgb, model.config.image_size, self.interpolation)
            pixels = pixels.to(device=device, dtype=model.dtype)
            sync(device)
            t1 = time.perf_counter()
            clock = StageClock(device, {
                "proposer": [model.perceiver.input_proj, model.perceiver.ddetr_transformer],
                "region": [model.region_encoder.mlvl_fuse],
            })
            try:
                vision = model.encode_image(pixels)
                sync(device)
            finally:
                clock.remove()
            t2 = time.perf_counter()
            selection = model.select_regions(vision.proposal_boxes[0], vision.proposal_scores[0])
            base = self._build_prefix(vision, selection, (w, h), ())
            encode_ms = (t2 - t1) * 1000.0
            perception = Perception(
                frame_id=frame_id, image_size=(w, h), vision=vision,
                proposal_boxes=vision.proposal_boxes[0], proposal_scores=vision.proposal_scores[0], base=base,
                preprocess_ms=(t1 - t0) * 1000.0,
                vision_ms=max(encode_ms - clock.ms.get("proposer", 0.0) - clock.ms.get("region", 0.0), 0.0),
                proposer_ms=clock.ms.get("proposer", 0.0), region_ms=clock.ms.get("region", 0.0),
            )
            self.frames.put(perception)
            self._trim_memory()
            return perception

    def _build_prefix(self, vision, selection, image_size: tuple[int, int], user_boxes) -> PrefixState:
        """Region tokens for ``selection`` and the prompt prefix prefilled into a fresh KV cache."""
        model, device = self.model, self.model.device
        t0 = time.perf_counter()
        region_tokens = model.encode_regions(vision, selection.boxes)
        sync(device)
        t1 = time.perf_counter()
        expanded = model.expand_input_ids(self._prefix_ids, len(selection.boxes))
        embeds = model.build_inputs_embeds(expanded.input_ids, vision.image_tokens[0], region_tokens)
        cache = model.prefill_prefix(embeds)  # compiled (a CUDA graph) when perception is compiled
        sync(device)
        t2 = time.perf_counter()
        scores = selection.scores.detach().float().cpu().tolist()
        from_user = selection.from_user.detach().cpu().tolist()
        pixel_boxes = boxes_to_pixels(selection.boxes, image_size)
        num_proposals = len(vision.proposal_boxes[0])
        for i, cand in enumerate(selection.candidate_index.tolist()):
            if cand >= num_proposals:  # a user box: report exactly the (clipped) pixels the caller gave
                pixel_boxes[i] = tuple(user_boxes[cand - num_proposals])
        regions = [Region(i, b, float(s), bool(u))
                   for i, (b, s, u) in enumerate(zip(pixel_boxes, scores, from_user, strict=True))]
        return PrefixState(
            user_boxes=tuple(user_boxes), region_boxes=selection.boxes.detach(), regions=regions,
            refer_match=[int(k) for k in selection.refer_match.tolist()], region_tokens=region_tokens,
            prefix_ids=expanded.input_ids, cache=cache,
            region_ms=(t1 - t0) * 1000.0, prefill_ms=(t2 - t1) * 1000.0,
        )

    def _prefix_with_boxes(self, perception: Perception, boxes: tuple[BoxXYXY, ...]) -> tuple[PrefixState, bool]:
        """The prefix for a user-box set (cached per frame); second value True when it was just built."""
        state = perception.prefix_for(boxes)
        if state is not None:
            return state, False
        user = pixels_to_cxcywh(boxes, perception.image_size).to(perception.proposal_boxes.device)
        selection = self.model.select_regions(perception.proposal_boxes, perception.proposal_scores, user)
        state = self._build_prefix(perception.vision, selection, perception.image_size, boxes)
        perception.add_prefix(state)
        self.frames.trim()
        self._trim_memory()
        return state, True

    # ------------------------------------------------------------------------------------------- asking
    def detect(self, image: np.ndarray | Perception, *, frame_id: Hashable | None = None,
               score_threshold: float | None = None) -> Answer:
        """Class-agnostic regions with scores, no LLM (= ``ask(task=DETECT)``)."""
        return self.ask(image, "", task=Task.DETECT, frame_id=frame_id, score_threshold=score_threshold)

    def ask(self, image: np.ndarray | Perception | None, query: str, *, task: Task | str | int = Task.AUTO,
            boxes: Sequence[BoxXYXY] = (), frame_id: Hashable | None = None, max_new_tokens: int | None = None,
            score_threshold: float | None = None, on_token: Callable[[str], None] | None = None,
            should_cancel: Callable[[], bool] | None = None, conversation_id: str | None = None,
            continue_only: bool = False) -> Answer:
        """Answer ``query`` about ``image`` (an RGB array or a ``Perception``).

        ``boxes`` (original-image pixels x1,y1,x2,y2) make it a REGION_QA question. ``on_token`` receives
        each decoded text piece (their concatenation is ``Answer.raw_text``); ``should_cancel`` is polled
        between tokens and yields ``Answer(canceled=True)`` with the text so far. ``score_threshold`` is
        used by DETECT only. ``max_new_tokens`` defaults per task (prompts.DEFAULT_MAX_NEW_TOKENS).

        ``conversation_id`` (see ``conversations``): None or "" = a single question; a new id starts a
        conversation on ``image``; a live id continues on its pinned frame (``image`` may be None and is then
        ignored, as is ``frame_id``). A turn that was canceled is not part of the conversation. User boxes are
        pinned on a conversation's first turn; later turns may ask about those boxes again, not about new ones.
        ``continue_only=True`` never starts one. Raises ``ConversationNotFoundError`` (a ``LookupError``) for an
        id that has no live conversation when ``continue_only`` is set, for an id whose conversation ended (ids
        are never reused), and for an unknown id without an image; ``BadRequestError`` for unusable input, before
        any model work where possible.
        """
        answer, _ = self._ask(image, query, task=task, boxes=boxes, frame_id=frame_id,
                              max_new_tokens=max_new_tokens, score_threshold=score_threshold,
                              on_token=on_token, should_cancel=should_cancel, conversation_id=conversation_id,
                              continue_only=continue_only)
        return answer

    def _ask(self, image, query, *, task=Task.AUTO, boxes=(), frame_id=None, max_new_tokens=None,
             score_threshold=None, on_token=None, should_cancel=None, conversation_id=None,
             continue_only: bool = False, keep_logits: bool = False) -> tuple[Answer, QueryTrace | None]:
        t_start = time.perf_counter()
        try:
            task = Task.parse(task)
        except ValueError as err:
            raise BadRequestError(str(err)) from None
        query = "" if query is None else str(query)
        boxes = list(boxes or ())
        conv_id = None if conversation_id is None or str(conversation_id) == "" else str(conversation_id)
        if continue_only and conv_id is None:
            raise BadRequestError("continue_only needs a conversation_id")
        if task != Task.DETECT and not query.strip():
            raise BadRequestError("the query is empty")
        if task == Task.AUTO:
            task = intents.resolve_task(query, has_boxes=bool(boxes))
        if task == Task.DETECT and conv_id is not None:
            raise BadRequestError("detect does not use the language model and is no conversation turn; "
                                  "ask it without conversation_id")
        if boxes and task != Task.REGION_QA:
            raise BadRequestError(f"boxes are only used by region_qa, not by {task.name.lower()}")
        if task == Task.REGION_QA and not boxes:
            raise BadRequestError("region_qa needs at least one box (x1, y1, x2, y2 in pixels)")
        if max_new_tokens is not None and not (isinstance(max_new_tokens, (int, np.integer)) and max_new_tokens >= 1):
            raise BadRequestError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if score_threshold is not None and not (
            isinstance(score_threshold, (int, float, np.number)) and 0.0 <= float(score_threshold) <= 1.0
        ):
            raise BadRequestError(f"score_threshold must be a number within [0, 1], got {score_threshold!r}")
        built = self.prompts.build(task, query, num_boxes=len(boxes), max_new_tokens=max_new_tokens)
        store = self.conversations

        with self._lock, torch.inference_mode():
            self._check_alive()
            conv = None
            if conv_id is not None:
                conv = store.claim(conv_id)
                if conv is None:
                    if continue_only:
                        store.require(conv_id)  # raises, saying why
                    store.check_startable(conv_id)
                    if image is None:
                        raise ConversationNotFoundError(conv_id, "unknown", f"no conversation {conv_id!r} "
                                                        "(unknown id) and no image to start one on")
            if conv is not None:
                try:
                    return self._continue(conv, built, query, boxes, t_start, on_token, should_cancel, keep_logits)
                finally:
                    store.release(conv)
            if image is None:
                raise BadRequestError("no image given (only a live conversation may continue without one)")
            size = self._image_size(image)
            try:  # validate before any model work
                user = tuple(clip_user_box(b, size) for b in boxes)
            except ValueError as err:
                raise BadRequestError(str(err)) from None
            raw_suffix = self.tokenizer.encode(built.suffix, add_bos=False)
            if conv_id is not None:
                self._check_turn_budget(len(raw_suffix), built.max_new_tokens)
            perception = image if isinstance(image, Perception) else self._perceive(image, frame_id)
            timings = Timings()
            fresh = self._claim_timings(perception, timings)
            answer = Answer(task=task, query=query, text="", raw_text="", image_size=perception.image_size,
                            timings=timings, cached_prefix=not fresh)
            if task == Task.DETECT:
                self._detect_into(answer, perception, score_threshold)
                timings.total_ms = (time.perf_counter() - t_start) * 1000.0
                return answer, None
            state = perception.base
            if user:
                state, new_state = self._prefix_with_boxes(perception, user)
                if new_state:
                    timings.region_ms += state.region_ms
                    timings.prefix_prefill_ms += state.prefill_ms
                    answer.cached_prefix = False
            if conv_id is not None:
                conv = store.start(conv_id, perception.frame_id, perception.image_size, state)
                try:
                    return self._turn(conv, answer, built, raw_suffix, list(state.refer_match[:len(user)]),
                                      t_start, on_token, should_cancel, keep_logits)
                finally:
                    store.release(conv)
            answer.regions = list(state.regions)
            inp = self._turn_input(state, state.cache, state.prefix_len, [], [], [], raw_suffix,
                                   list(state.refer_match))
            trace, _ = self._generate(answer, state, inp, built.max_new_tokens, on_token, should_cancel,
                                      keep_logits, keep_cache=False)
            self._parse_into(answer, state, built, trace)
            timings.total_ms = (time.perf_counter() - t_start) * 1000.0
            return answer, trace

    # ------------------------------------------------------------------------------------ conversations
    def _check_turn_budget(self, n_new: int, budget: int) -> None:
        limit = self.conversations.max_tokens
        if limit is not None and n_new + budget > limit:
            raise BadRequestError(f"this turn needs {n_new} message tokens + {budget} answer tokens, more than the "
                                  f"conversation limit max_tokens = {limit}")

    def _continue(self, conv: Conversation, built: prompts.BuiltPrompt, query: str, boxes: list, t_start: float,
                  on_token, should_cancel, keep_logits: bool) -> tuple[Answer, QueryTrace]:
        """A later turn of ``conv``: its boxes must be among the pinned ones (they map to the same regions)."""
        try:
            user = [clip_user_box(b, conv.image_size) for b in boxes]
        except ValueError as err:
            raise BadRequestError(str(err)) from None
        refer = []
        for box in user:
            k = pinned_box_index(conv.user_boxes, box)
            if k is None:
                pinned = ", ".join(f"({', '.join(f'{c:g}' for c in b)})" for b in conv.user_boxes) or "none"
                raise BadRequestError(
                    f"conversation {conv.id!r} pinned its boxes on its first turn ({pinned}); box "
                    f"({', '.join(f'{c:g}' for c in box)}) is not one of them: a new box changes the region list, so "
                    "ask about it in a new conversation")
            refer.append(conv.state.refer_match[k])
        raw_suffix = self.tokenizer.encode(built.suffix, add_bos=False)
        answer = Answer(task=built.task, query=query, text="", raw_text="", image_size=conv.image_size,
                        timings=Timings(), cached_prefix=True)
        return self._turn(conv, answer, built, raw_suffix, refer, t_start, on_token, should_cancel, keep_logits)

    def _turn(self, conv: Conversation, answer: Answer, built: prompts.BuiltPrompt, raw_suffix: list[int],
              refer: list[int], t_start: float, on_token, should_cancel,
              keep_logits: bool) -> tuple[Answer, QueryTrace]:
        """One conversation turn: fit it into the limits, prefill the pending ids + the message on the
        conversation's KV, decode, and (unless canceled) append the turn to the conversation."""
        store, state = self.conversations, conv.state
        ids, feat_pos, feat_regions = self._suffix_ids(state, raw_suffix, refer)
        self._check_turn_budget(len(ids), built.max_new_tokens)
        context = self.model.config.llm_cfg.max_position_embeddings
        fit_turn(store, conv, len(ids), built.max_new_tokens, context)
        base = conv.cache if conv.cache is not None else state.cache
        in_cache = [i for t in conv.history for i in t.ids][:conv.cache_len - state.prefix_len]
        raw_before = [i for t in conv.history for i in t.raw_ids]
        inp = self._turn_input(state, base, conv.cache_len, in_cache, conv.pending, conv.pending_refer,
                               raw_suffix, refer, raw_before=raw_before)
        answer.regions = list(state.regions)
        answer.conversation_id = conv.id
        trace, kept = self._generate(answer, state, inp, built.max_new_tokens, on_token, should_cancel,
                                     keep_logits, keep_cache=True)
        answer.turn = conv.turns + 1  # a canceled turn is not kept: the next one gets its number
        if not answer.canceled and store.is_live(conv):
            gen, eos = trace.generation, self.tokenizer.eos_id
            tokens = gen.token_ids + [eos]
            cache, cache_len = kept
            fed = len(gen.token_ids) if gen.stopped_on_eos else len(gen.token_ids) - 1
            conv.commit(Turn(built.task, raw_suffix + tokens, ids + tokens, feat_pos, feat_regions),
                        cache, cache_len, pending=tokens[max(fed, 0):])
        store.touch(conv)
        self._parse_into(answer, state, built, trace)
        self._trim_memory(protect=conv)
        answer.timings.total_ms = (time.perf_counter() - t_start) * 1000.0
        return answer, trace

    def _trim_memory(self, protect: Conversation | None = None) -> None:
        """Keep frames + conversations within ``cache_bytes``: least recently used frames go first (the newest
        stays), then least recently used conversations (reason ``memory``; never ``protect``)."""
        limit = self.frames.max_bytes
        if limit is None or not len(self.conversations):
            return
        total = lambda: tensor_bytes([self.frames.perceptions(), self.conversations.tensors()])  # noqa: E731
        while total() > limit and self.frames.evict_oldest():
            pass
        while total() > limit:
            victim = self.conversations.least_recent(exclude=protect)
            if victim is None:
                break
            self.conversations.end(victim.id, "memory", f"conversation {victim.id!r} was evicted for memory "
                                                        f"(cache_bytes {limit / 2**20:.0f} MiB)")

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _image_size(image: np.ndarray | Perception) -> tuple[int, int]:
        """(width, height) of the caller's image; ``BadRequestError`` for an unusable array."""
        if isinstance(image, Perception):
            return image.image_size
        try:
            checked = check_image(image)
        except ImageError as err:
            raise BadRequestError(str(err)) from None
        return int(checked.shape[1]), int(checked.shape[0])

    @staticmethod
    def _claim_timings(perception: Perception, timings: Timings) -> bool:
        """Report the frame's build timings on the first query that uses it; True if this is that query."""
        with perception.lock:
            if perception.reported:
                return False
            perception.reported = True
        timings.preprocess_ms = perception.preprocess_ms
        timings.vision_ms = perception.vision_ms
        timings.proposer_ms = perception.proposer_ms
        timings.region_ms = perception.region_ms + perception.base.region_ms
        timings.prefix_prefill_ms = perception.base.prefill_ms
        return True

    def _detect_into(self, answer: Answer, perception: Perception, score_threshold: float | None) -> None:
        """DETECT: the NMS-kept proposals (score order); a threshold re-runs NMS with that score cut-off."""
        from groma_ros.model.ops import cxcywh_to_xyxy, nms

        if score_threshold is None:  # the frame's own selection, minus the "best box if none" fallback
            thr = self.model.config.box_score_thres
            regions = [r for r in perception.base.regions if r.score > thr]
        else:
            cfg = self.model.config
            keep = nms(cxcywh_to_xyxy(perception.proposal_boxes.float()), perception.proposal_scores.float(),
                       cfg.nms_thres, float(score_threshold), cfg.max_region_num)
            boxes = boxes_to_pixels(perception.proposal_boxes[keep.to(perception.proposal_boxes.device)],
                                    perception.image_size)
            scores = perception.proposal_scores.float().cpu()[keep].tolist()
            regions = [Region(i, b, float(s)) for i, (b, s) in enumerate(zip(boxes, scores, strict=True))]
        answer.regions = regions
        answer.items = [GroundedItem(phrase="object", start=-1, end=-1, regions=(r,)) for r in regions]
        answer.text = f"{len(regions)} object{'s' if len(regions) != 1 else ''}"
        answer.raw_text = answer.text

    def _suffix_ids(self, state: PrefixState, raw: list[int],
                    refer: list[int]) -> tuple[list[int], list[int], list[int]]:
        """LLM ids of a user message (``<refer_box>`` i -> ``<r refer[i]>``), the positions of its
        ``<refer_feat>`` and the region index each of them takes, in order."""
        t = self._ids
        forbidden = {i: t.text_of(i) for i in (t.image, t.region, t.pad, t.ground_box)}
        bad = sorted({forbidden[i] for i in raw if i in forbidden})
        if bad:
            raise BadRequestError(f"the query must not contain the reserved token(s) {', '.join(bad)}")
        refer_pos = [i for i, x in enumerate(raw) if x == t.refer_box]
        feat_pos = [i for i, x in enumerate(raw) if x == t.refer_feat]
        if max(len(refer_pos), len(feat_pos)) > len(refer):
            raise BadRequestError(
                f"the query refers to {max(len(refer_pos), len(feat_pos))} boxes but {len(refer)} were given"
            )
        ids = list(raw)
        for i, pos in enumerate(refer_pos):
            ids[pos] = t.region_id(refer[i])
        return ids, feat_pos, list(refer[:len(feat_pos)])

    def _turn_input(self, state: PrefixState, cache: DynamicCache, cache_len: int, in_cache: list[int],
                    pending: list[int], pending_refer: list[tuple[int, int]], raw_suffix: list[int],
                    refer: list[int], raw_before: list[int] | None = None) -> _TurnInput:
        """What to prefill on ``cache``: ``pending`` history ids (with their ``<refer_feat>`` positions and
        regions as ``(position, region)`` pairs) followed by the message."""
        ids, feat_pos, feat_regions = self._suffix_ids(state, raw_suffix, refer)
        offset = len(pending)
        return _TurnInput(
            cache=cache, cache_len=cache_len, ids=list(pending) + ids,
            feat_pos=[p for p, _ in pending_refer] + [offset + p for p in feat_pos],
            feat_regions=[k for _, k in pending_refer] + feat_regions,
            before=list(in_cache), raw_before=list(raw_before or []), raw_suffix=list(raw_suffix),
        )

    def _generate(self, answer: Answer, state: PrefixState, inp: _TurnInput, limit: int, on_token,
                  should_cancel, keep_logits: bool,
                  keep_cache: bool) -> tuple[QueryTrace, tuple[DynamicCache, int] | None]:
        """Prefill ``inp.ids`` on a fork of ``inp.cache``, then decode greedily; with ``keep_cache`` also the
        grown KV (for a conversation's next turn)."""
        model, tok, device = self.model, self.tokenizer, self.model.device
        ids = torch.tensor([inp.ids], dtype=torch.long, device=device)
        room = model.config.llm_cfg.max_position_embeddings - inp.cache_len - len(inp.ids)
        if room < 1:
            raise BadRequestError(f"the query is too long ({len(inp.ids)} tokens after a "
                                  f"{inp.cache_len}-token context; the model handles "
                                  f"{model.config.llm_cfg.max_position_embeddings})")
        limit = min(limit, room)
        suffix_ids = torch.tensor([inp.before + inp.ids], dtype=torch.long)
        trace = QueryTrace(state.prefix_ids, suffix_ids,
                           self._prefix_ids[0].tolist() + inp.raw_before + inp.raw_suffix, prefilled=len(inp.ids))
        answer.prompt_tokens = inp.cache_len + len(inp.ids)
        if should_cancel is not None and should_cancel():
            answer.canceled = True
            return trace, None

        t0 = time.perf_counter()
        decoder = self._decoder
        decoder.begin(inp.cache, inp.cache_len)
        kept = None
        try:
            embeds = model.embed_tokens(ids)
            if inp.feat_pos:
                feats = state.region_tokens[torch.tensor(inp.feat_regions, device=state.region_tokens.device)]
                embeds[0, torch.tensor(inp.feat_pos, device=device)] = feats.to(embeds.dtype)
            first = decoder.prefill(embeds)
            sync(device)
            answer.timings.query_prefill_ms = (time.perf_counter() - t0) * 1000.0

            text = tok.incremental_decoder(skip_special_tokens=False)
            pieces: list[str] = []

            def emit(token: int) -> None:
                piece = text.push(token)
                if piece:
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)

            gen = greedy_decode(first, decoder.step, eos_token_id=tok.eos_id, max_new_tokens=limit, on_token=emit,
                                should_cancel=should_cancel, keep_logits=keep_logits)
            if keep_cache and not gen.canceled:
                kept = decoder.snapshot()
        finally:
            decoder.end()
        tail = text.flush()
        if tail:
            pieces.append(tail)
            if on_token is not None:
                on_token(tail)
        sync(device)
        answer.timings.decode_ms = gen.decode_ms
        answer.raw_text = "".join(pieces)
        answer.completion_tokens = gen.num_generated
        answer.canceled = gen.canceled
        trace.generation = gen
        return trace, kept

    def _parse_into(self, answer: Answer, state: PrefixState, built: prompts.BuiltPrompt,
                    trace: QueryTrace) -> None:
        """Tags → plain text + grounded items (from the ids, so user-like text never fakes a tag)."""
        parsed = parsing.parse_ids(trace.generation.token_ids, self.tokenizer, num_regions=len(state.regions),
                                   expression=built.expression)
        answer.text = parsed.text
        answer.warnings = list(parsed.warnings)
        # grounding confidence of region k: the probability of its first <rk> in the answer
        region_prob: dict[int, float] = {}
        for token, prob in zip(trace.generation.token_ids, trace.generation.token_probs, strict=True):
            k = self._ids.region_of(token)
            if k is not None:
                region_prob.setdefault(k, prob)
        answer.items = [
            GroundedItem(phrase=it.phrase, start=it.start, end=it.end,
                         regions=tuple(state.regions[k] for k in it.region_indices),
                         grounding=tuple(region_prob.get(k, 0.0) for k in it.region_indices))
            for it in parsed.items
        ]
