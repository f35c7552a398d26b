"""GromaEngine on a tiny random model in the released format (see conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from groma_ros.engine import BadRequestError, GromaEngine, Task, loading
from groma_ros.engine import engine as engine_mod
from groma_ros.engine.errors import ModelNotFoundError
from groma_ros.engine.perception import pixels_to_cxcywh
from groma_ros.engine.preprocess import preprocess

from .conftest import make_image

LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def fresh(engine):
    """A second engine on the same loaded model, with its own frame cache (ids never collide)."""
    counter = iter(range(10**6))
    return lambda **kw: GromaEngine(engine.model, engine.tokenizer, **kw), counter


def from_scratch(engine, image, prompt_ids, user_boxes_px=(), max_new_tokens=6):
    """Whole prompt in one forward, no prefix cache (the model's own reference path)."""
    model = engine.model
    pixels = preprocess(image, model.config.image_size)
    w, h = image.shape[1], image.shape[0]
    user = pixels_to_cxcywh(user_boxes_px, (w, h)) if user_boxes_px else None
    ids = torch.tensor([prompt_ids])
    return model.generate_greedy(pixels, ids, user_boxes=user, max_new_tokens=max_new_tokens,
                                 eos_token_id=engine.tokenizer.eos_id)


@pytest.mark.parametrize(
    ("query", "task", "boxes"),
    [("where is the red mug?", Task.REFER, ()), ("what is this?", Task.REGION_QA, ((10.0, 8.0, 50.0, 40.0),)),
     ("describe the image", Task.GROUNDED_CAPTION, ())],
)
def test_cached_prefix_equals_from_scratch(engine, image, query, task, boxes):
    frame = ("scratch", query)
    engine.perceive(image, frame_id=frame)
    engine.ask(image, "warm up the frame cache", task=task, boxes=boxes, frame_id=frame, max_new_tokens=1)
    answer, trace = engine._ask(image, query, task=task, boxes=boxes, frame_id=frame, max_new_tokens=6,
                                keep_logits=True)
    assert answer.task == task
    assert answer.cached_prefix  # the follow-up really used the cached prefix
    ref = from_scratch(engine, image, trace.prompt_ids, boxes, max_new_tokens=6)
    gen = trace.generation
    ref_tokens = [t for t in ref.tokens.tolist() if t != engine.tokenizer.eos_id]
    assert gen.token_ids == ref_tokens
    n = len(gen.step_logits)
    assert n >= 1
    torch.testing.assert_close(torch.stack(gen.step_logits), ref.step_logits[:n].float(), atol=LOGIT_ATOL, rtol=0)
    # the expanded LLM sequence is the same too
    full = torch.cat([trace.prefix_ids[0].cpu(), trace.suffix_ids[0].cpu()])
    expected = ref.prefill.expanded.input_ids[0].cpu()
    assert torch.equal(full, expected)


def test_prompt_ids_per_task(engine, image):
    tok, t = engine.tokenizer, engine.model.config.token_ids
    prefix = tok.encode(engine_mod.prompts.PREFIX)
    assert prefix[0] == tok.bos_id and prefix[-1] == tok.eos_id
    assert prefix.count(t.image) == 1 and prefix.count(t.region) == 1
    cases = {
        Task.REFER: ("find the red mug", "Locate <p>the red mug</p> in the image."),
        Task.GROUNDED_CAPTION: ("describe the image", "[grounding]Give me a concise description of the image."),
        Task.VQA: ("how many cups are there?", "how many cups are there?"),
        Task.REGION_QA: ("describe this", "Please briefly describe <roi><refer_box></roi><refer_feat>."),
    }
    for task, (query, message) in cases.items():
        boxes = ((5.0, 5.0, 40.0, 30.0),) if task == Task.REGION_QA else ()
        answer, trace = engine._ask(image, query, task=Task.AUTO, boxes=boxes, frame_id="ids", max_new_tokens=1)
        assert answer.task == task
        expected = tok.encode(engine_mod.prompts.PREFIX + f"USER: {message} ASSISTANT:")
        got = trace.prompt_ids
        assert got == expected, task
        if task == Task.REGION_QA:  # <refer_box> becomes <r k> of the user's region
            k = next(r.index for r in answer.regions if r.from_user)
            suffix = trace.suffix_ids[0].tolist()
            assert t.refer_box not in suffix and suffix == [
                t.region_id(k) if i == t.refer_box else i for i in got[len(prefix):]
            ]
        # prefix/suffix split is exact: prefix ids are shared
        assert got[: len(prefix)] == prefix
        # the expanded prefix holds every image token and one <rK><region> pair per region
        exp = trace.prefix_ids[0].tolist()
        assert exp.count(t.image) == engine.model.config.num_image_tokens
        assert exp.count(t.region) == len(answer.regions)
        assert [exp[i - 1] for i, x in enumerate(exp) if x == t.region] == [
            t.region_id(k) for k in range(len(answer.regions))
        ]
    multi, trace = engine._ask(image, "find all the cups", frame_id="ids", max_new_tokens=1)
    assert trace.prompt_ids[len(prefix):] == tok.encode("USER: Locate all <p>the cups</p> in this image. ASSISTANT:",
                                                         add_bos=False)


def test_followup_reuses_prefix_and_never_mutates_it(fresh, image):
    make, _ = fresh
    eng = make()
    first = eng.ask(image, "where is the red mug?", frame_id=1, max_new_tokens=4)
    assert not first.cached_prefix and first.timings.vision_ms > 0 and first.timings.prefix_prefill_ms > 0
    perception = eng.perceive(image, frame_id=1)
    snapshot = [(layer.keys.clone(), layer.values.clone()) for layer in perception.base.cache.layers]
    length = perception.base.cache.get_seq_length()
    second = eng.ask(image, "and the spoon?", frame_id=1, max_new_tokens=4)
    third = eng.ask(image, "where is the red mug?", frame_id=1, max_new_tokens=4)
    assert second.cached_prefix and third.cached_prefix
    assert second.timings.vision_ms == 0 and second.timings.prefix_prefill_ms == 0
    assert perception.base.cache.get_seq_length() == length
    for (k, v), layer in zip(snapshot, perception.base.cache.layers, strict=True):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)
    assert third.raw_text == first.raw_text and third.items == first.items


def test_perceive_then_ask_reports_frame_timings_once(fresh, image):
    make, _ = fresh
    eng = make()
    p = eng.perceive(image)  # no frame id: not cached, but usable directly
    assert len(eng.frames) == 0
    a = eng.ask(p, "where is the mug?", max_new_tokens=2)
    b = eng.ask(p, "where is the cup?", max_new_tokens=2)
    assert not a.cached_prefix and a.timings.vision_ms > 0
    assert b.cached_prefix and b.timings.encode_ms == 0


def test_streaming_concatenation_equals_raw_text(engine, image):
    pieces: list[str] = []
    a = engine.ask(image, "describe the image", frame_id="stream", max_new_tokens=12, on_token=pieces.append)
    assert a.completion_tokens >= 1 and "".join(pieces) == a.raw_text
    assert a.raw_text == engine.tokenizer.decode(engine._ask(image, "describe the image", frame_id="stream",
                                                             max_new_tokens=12)[1].generation.token_ids)


def test_cancel_mid_generation(engine, image):
    full = engine.ask(image, "describe the image", frame_id="cancel", max_new_tokens=10)
    if full.completion_tokens < 4:
        pytest.skip("the random model stops too early for this image")
    seen: list[int] = []
    a = engine.ask(image, "describe the image", frame_id="cancel", max_new_tokens=10,
                   on_token=lambda s: seen.append(1), should_cancel=lambda: len(seen) >= 2)
    assert a.canceled and a.completion_tokens <= 3
    assert full.raw_text.startswith(a.raw_text)
    early = engine.ask(image, "describe the image", frame_id="cancel", should_cancel=lambda: True)
    assert early.canceled and early.completion_tokens == 0 and early.raw_text == ""


def test_region_qa_user_box_joins_regions(engine, image):
    box = (12.0, 10.0, 60.0, 50.0)
    a = engine.ask(image, "what is this?", boxes=[box], frame_id="rq", max_new_tokens=3)
    assert a.task == Task.REGION_QA
    users = [r for r in a.regions if r.from_user]
    assert len(users) == 1 and users[0].score == 1.0
    assert users[0].box == box
    assert a.regions[0].from_user  # score 1.0 sorts first
    base = engine.perceive(image, frame_id="rq").regions
    assert not any(r.from_user for r in base)
    again = engine.ask(image, "what is this?", boxes=[box], frame_id="rq", max_new_tokens=3)
    assert again.cached_prefix and again.raw_text == a.raw_text


def test_output_boxes_are_clipped_pixels(engine):
    img = make_image(120, 40, seed=3)
    a = engine.detect(img, frame_id="px", score_threshold=0.0)
    assert a.image_size == (120, 40) and a.regions
    for r in a.regions:
        x1, y1, x2, y2 = r.box
        assert 0 <= x1 <= x2 <= 120 and 0 <= y1 <= y2 <= 40
    scores = [r.score for r in a.regions]
    assert scores == sorted(scores, reverse=True)


def test_detect_threshold(engine, image):
    default = engine.detect(image, frame_id="det")
    assert default.task == Task.DETECT and default.completion_tokens == 0
    assert [it.regions[0] for it in default.items] == default.regions
    assert all(r.score > engine.model.config.box_score_thres for r in default.regions)
    strict = engine.detect(image, frame_id="det", score_threshold=0.5)
    assert all(r.score > 0.5 for r in strict.regions)
    assert len(strict.regions) <= len(engine.detect(image, frame_id="det", score_threshold=0.0).regions)
    assert engine.detect(image, frame_id="det", score_threshold=1.0).regions == []


def test_frame_cache_eviction(fresh, image):
    make, _ = fresh
    eng = make(cache_frames=2)
    for i in range(3):
        eng.perceive(image, frame_id=i)
    assert eng.frames.keys() == [1, 2]
    assert eng.perceive(image, frame_id=1) is eng.perceive(image, frame_id=1)  # hit, now most recent
    template = eng.perceive(image, frame_id=2)
    one = template.nbytes()
    assert one > 0
    eng2 = make(cache_frames=8, cache_bytes=int(2.5 * one))
    eng2.perceive(image, frame_id="a")
    eng2.perceive(image, frame_id="b")
    assert eng2.frames.keys() == ["a", "b"]
    # a new user-box set grows frame "b" (its own prefix); the byte budget is re-checked → "a" goes
    eng2.ask(image, "what is this?", boxes=[(1, 1, 30, 30)], frame_id="b", max_new_tokens=1)
    assert eng2.perceive(image, frame_id="b").nbytes() > one
    eng2.perceive(image, frame_id="c")
    assert "a" not in eng2.frames.keys() and eng2.frames.nbytes() <= 2.5 * one


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query": ""}, "empty"),
        ({"query": "   "}, "empty"),
        ({"query": "what?", "boxes": [(0, 0, float("nan"), 5)]}, "NaN"),
        ({"query": "what?", "boxes": [(500, 500, 600, 600)]}, "empty after clipping"),
        ({"query": "what?", "boxes": [(10, 10, 5, 20)]}, "empty after clipping"),
        ({"query": "what?", "boxes": [(1, 2, 3)]}, "4 numbers"),
        ({"query": "where?", "task": "refer", "boxes": [(1, 1, 9, 9)]}, "only used by region_qa"),
        ({"query": "what?", "task": "region_qa"}, "at least one box"),
        ({"query": "what?", "task": "dance"}, "unknown task"),
        ({"query": "what?", "max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_requests(engine, image, kwargs, match):
    with pytest.raises(BadRequestError, match=match):
        engine.ask(image, **kwargs)


@pytest.mark.parametrize("bad", [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((10,), np.uint8)])
def test_bad_images(engine, bad):
    with pytest.raises(BadRequestError):
        engine.ask(bad, "where is the mug?")
    with pytest.raises(ValueError):
        engine.perceive(bad)


def test_missing_default_model_names_files(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    with pytest.raises(ModelNotFoundError, match="tokenizer.model"):
        GromaEngine.from_pretrained(None)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        GromaEngine.from_pretrained(str(tmp_path / "nope"))


def test_release(model_dir, image):
    eng = GromaEngine.from_pretrained(str(model_dir), num_threads=1, progress=False)
    eng.perceive(image, frame_id=0)
    eng.release()
    assert eng.released and len(eng.frames) == 0
    with pytest.raises(RuntimeError, match="released"):
        eng.ask(image, "where is the mug?")


def test_load_progress_bar(model_dir, monkeypatch, capsys):
    monkeypatch.setattr(loading, "PROGRESS_MIN_BYTES", 0)
    eng = GromaEngine.from_pretrained(str(model_dir), num_threads=1, progress=True)
    assert eng.model_id == model_dir.name
    assert "loading" in capsys.readouterr().err


def test_load_progress_logger_logs_each_tenth_once(model_dir):
    lines: list[str] = []
    GromaEngine.from_pretrained(str(model_dir), num_threads=1, progress=loading.progress_logger(lines.append, 0))
    assert [line.split()[2] for line in lines] == [f"{10 * k}" for k in range(1, 11)], lines
    quiet: list[str] = []  # below the size that deserves it: nothing
    GromaEngine.from_pretrained(str(model_dir), num_threads=1, progress=loading.progress_logger(quiet.append))
    assert quiet == []


def test_load_progress_callback_counts_every_weight_byte(model_dir):
    reports: list[tuple[int, int]] = []
    GromaEngine.from_pretrained(str(model_dir), num_threads=1, progress=lambda *report: reports.append(report))
    total = loading.weight_bytes(model_dir)
    assert reports and {t for _, t in reports} == {total}
    done = [d for d, _ in reports]
    assert len(done) > 10 and done == sorted(done) and done[-1] == total  # per tensor, then once loaded


# ------------------------------------------------------------------------------------------------------------
# The engine's cached-prefix path against the ORIGINAL implementation (shared parity fixture).

class _IdTokenizer:
    """Stands in for the tokenizer: the fixture's prompts are placeholder ids, not text."""

    vocab_size, eos_id = 512, 2

    def __init__(self, prefix: list[int]) -> None:
        self.prefix = prefix

    def __len__(self) -> int:
        return 512 + 114

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return list(self.prefix)

    def incremental_decoder(self, skip_special_tokens: bool = False):
        class _Dec:
            def push(self, i: int) -> str:
                return f"<{i}>"

            def flush(self) -> str:
                return ""

        return _Dec()


@pytest.mark.slow
def test_cached_prefix_reproduces_original_generation(tmp_path, monkeypatch):
    """Prefix (up to ``</s>``) prefilled once per region set, each prompt's suffix on a fork of it: the
    greedy tokens and every step's logits equal the original's ``generate`` (the parity fixture's tolerance)."""
    import json

    import cv2

    from groma_ros.engine.types import Answer
    from groma_ros.model import GromaForConditionalGeneration, checkpoint
    from tests.support.checkpoints import PARITY_FIXTURE, fixture_state_dict

    fixture = PARITY_FIXTURE
    if not (fixture / "expected.npz").is_file():
        pytest.skip("parity fixture not available")
    expected = dict(np.load(fixture / "expected.npz"))
    (tmp_path / "config.json").write_text((fixture / "config.json").read_text())
    state = fixture_state_dict(fixture, verify=False)
    monkeypatch.setattr(checkpoint, "read_checkpoint", lambda directory: state)
    model = GromaForConditionalGeneration.from_pretrained(tmp_path)
    prompts_json = json.loads((fixture / "prompts.json").read_text())["prompts"]
    ids0 = prompts_json[0]["input_ids"]
    cut = ids0.index(2) + 1  # the cacheable prefix ends with </s>
    eng = GromaEngine(model, _IdTokenizer(ids0[:cut]))
    image = cv2.cvtColor(cv2.imread(str(fixture / "image.png")), cv2.COLOR_BGR2RGB)
    vision = model.encode_image(preprocess(image, 448))
    for prompt in prompts_json:
        name = prompt["name"]
        ids = prompt["input_ids"]
        assert ids[:cut] == ids0[:cut]
        user = torch.as_tensor(expected[f"{name}_refer_boxes"]) if f"{name}_refer_boxes" in expected else None
        user_px = () if user is None else tuple(
            tuple(float(v) * 448 for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
            for cx, cy, w, h in user.tolist()
        )
        selection = model.select_regions(vision.proposal_boxes[0], vision.proposal_scores[0], user,
                                         order=torch.as_tensor(expected[f"{name}_perm"]))
        state = eng._build_prefix(vision, selection, (448, 448), user_px)
        for _ in range(2):  # the second run re-uses the (unchanged) prefix cache
            answer = Answer(task=Task.VQA, query="", text="", raw_text="")
            inp = eng._turn_input(state, state.cache, state.prefix_len, [], [], [], ids[cut:], state.refer_match)
            trace, _ = eng._generate(answer, state, inp, 10, None, None, keep_logits=True, keep_cache=False)
            gen = trace.generation
            tokens = gen.token_ids + ([2] if gen.stopped_on_eos else [])
            assert tokens == expected[f"{name}_gen_tokens"].tolist(), name
            torch.testing.assert_close(torch.stack(gen.step_logits),
                                       torch.as_tensor(expected[f"{name}_gen_step_logits"]), atol=2e-4, rtol=0)
        full = torch.cat([trace.prefix_ids[0], trace.suffix_ids[0]]).tolist()
        assert full == expected[f"{name}_llm_input_ids"].tolist()
