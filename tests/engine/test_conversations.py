"""Conversations on the engine (tiny random Groma): KV-cached turns equal a from-scratch forward of the whole
multi-turn prompt; pinned frames, limits, expiry, memory, interleaving and concurrency."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from groma_ros.engine import BadRequestError, ConversationNotFoundError, GromaEngine, Task
from groma_ros.engine.perception import boxes_to_pixels, pixels_to_cxcywh, tensor_bytes
from groma_ros.engine.preprocess import preprocess
from groma_ros.engine.prompts import PREFIX

from .conftest import make_image

LOGIT_ATOL = 1e-4
BOX = (10.0, 8.0, 50.0, 40.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def make(engine):
    """Engines sharing the session's loaded tiny model, each with its own caches and conversations."""
    return lambda **kw: GromaEngine(engine.model, engine.tokenizer, **kw)


def from_scratch(engine, image, prompt_ids, box=None, max_new_tokens=5):
    """The whole unexpanded multi-turn prompt in one forward (the model's own reference path, no engine cache).
    Each ``<refer_box>`` takes the user box (duplicates of one box select the same region list)."""
    model = engine.model
    n_refer = prompt_ids.count(model.config.token_ids.refer_box)
    user = pixels_to_cxcywh([box] * n_refer, (image.shape[1], image.shape[0])) if n_refer else None
    if box is not None and not n_refer:
        user = pixels_to_cxcywh([box], (image.shape[1], image.shape[0]))
    return model.generate_greedy(preprocess(image, model.config.image_size), torch.tensor([prompt_ids]),
                                 user_boxes=user, max_new_tokens=max_new_tokens,
                                 eos_token_id=engine.tokenizer.eos_id)


def assert_equals_scratch(eng, image, answer, trace, box=None, max_new_tokens=5):
    ref = from_scratch(eng, image, trace.prompt_ids, box, max_new_tokens)
    gen = trace.generation
    assert gen.token_ids == [t for t in ref.tokens.tolist() if t != eng.tokenizer.eos_id]
    n = len(gen.step_logits)
    assert n >= 1
    torch.testing.assert_close(torch.stack(gen.step_logits), ref.step_logits[:n].float(), atol=LOGIT_ATOL, rtol=0)
    full = torch.cat([trace.prefix_ids[0].cpu(), trace.suffix_ids[0].cpu()])
    assert torch.equal(full, ref.prefill.expanded.input_ids[0].cpu())
    size = (image.shape[1], image.shape[0])
    scratch_boxes = boxes_to_pixels(ref.prefill.selection.boxes, size)
    assert len(answer.regions) == len(scratch_boxes)
    for r, b in zip(answer.regions, scratch_boxes, strict=True):  # the same region list (user boxes: as given)
        assert r.from_user or r.box == pytest.approx(b, abs=1e-4)


def closing(gen, eos):
    return gen.token_ids + [eos]


CONVERSATIONS = {
    "refer_vqa_caption": [("where is the red mug?", Task.REFER, ()), ("what colour is it?", Task.VQA, ()),
                          ("describe the image", Task.GROUNDED_CAPTION, ()), ("the other one", Task.REFER, ())],
    "region_qa": [("what is this?", Task.REGION_QA, (BOX,)), ("is it red?", Task.VQA, ()),
                  ("[grounding]what is next to it?", Task.GROUNDED_CAPTION, ()),
                  ("what colour is this?", Task.REGION_QA, (BOX,))],
}


@pytest.mark.parametrize("decode", ["dynamic", "static"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_kv_cached_turns_equal_from_scratch(make, image, name, decode):
    eng = make(decode=decode)
    tok, eos = eng.tokenizer, eng.tokenizer.eos_id
    box = BOX if name == "region_qa" else None
    expected_ids = tok.encode(PREFIX)
    for turn, (query, task, boxes) in enumerate(CONVERSATIONS[name], start=1):
        answer, trace = eng._ask(image, query, task=task, boxes=boxes, frame_id=("conv", name), max_new_tokens=5,
                                 keep_logits=True, conversation_id=name)
        assert answer.conversation_id == name and answer.turn == turn and answer.task == task
        built = eng.prompts.build(task, query, num_boxes=len(boxes))
        message = tok.encode(built.suffix, add_bos=False)
        assert trace.prompt_ids == expected_ids + message  # the original multi-turn template, turn by turn
        if turn > 1:  # only the previous answer's unfed tail (</s>, maybe its last token) and the message
            assert answer.cached_prefix and trace.prefilled in (len(message) + 1, len(message) + 2)
        assert_equals_scratch(eng, image, answer, trace, box)
        gen = trace.generation
        assert not any(i in (eng._ids.image, eng._ids.region, eng._ids.refer_feat) for i in gen.token_ids)
        expected_ids = trace.prompt_ids + closing(gen, eos)
    conv = eng.conversations.get(name)
    assert conv.turns == 4 and len(conv.history) == 4 and conv.frame_id == ("conv", name)


def test_the_frame_prefix_is_never_mutated(make, image):
    eng = make()
    p = eng.perceive(image, frame_id="pristine")
    snapshot = [(layer.keys.clone(), layer.values.clone()) for layer in p.base.cache.layers]
    for q in ("where is the mug?", "what colour is it?", "and the bigger one?"):
        eng.ask(image, q, frame_id="pristine", conversation_id="c", max_new_tokens=4)
    assert p.base.cache.get_seq_length() == p.base.prefix_len
    for (k, v), layer in zip(snapshot, p.base.cache.layers, strict=True):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)
    single = eng.ask(image, "where is the mug?", frame_id="pristine", max_new_tokens=4)
    assert single.conversation_id == "" and single.turn == 0


def test_dropping_oldest_turns_equals_from_scratch_of_what_remains(make, image):
    eng = make(conversation_max_turns=2)
    tok, eos = eng.tokenizer, eng.tokenizer.eos_id
    prefix = eng._prefix_ids[0].tolist()
    queries = ["where is the red mug?", "what colour is it?", "the one left of it"]
    traces = []
    for q in queries:
        answer, trace = eng._ask(image, q, frame_id="drop", max_new_tokens=5, keep_logits=True,
                                 conversation_id="d")
        traces.append(trace)
    conv = eng.conversations.get("d")
    assert answer.turn == 3 and conv.turns == 3 and len(conv.history) == 2 and conv.dropped_turns == 1
    second = tok.encode(eng.prompts.build(Task.AUTO, queries[1]).suffix, add_bos=False)
    third = tok.encode(eng.prompts.build(Task.AUTO, queries[2]).suffix, add_bos=False)
    assert trace.prompt_ids == prefix + second + closing(traces[1].generation, eos) + third
    assert trace.prefilled == len(trace.prompt_ids) - len(prefix)  # re-prefilled on the frame prefix
    assert_equals_scratch(eng, image, answer, trace)
    # the limit is a runtime setting: with a token budget that holds only the new turn, the history goes too
    eng.conversations.max_turns = None
    eng.conversations.max_tokens = len(third) + 5
    answer, trace = eng._ask(None, queries[2], max_new_tokens=5, keep_logits=True, conversation_id="d")
    assert trace.prompt_ids == prefix + third and eng.conversations.get("d").history[-1].raw_ids[:len(third)] == third
    assert_equals_scratch(eng, image, answer, trace)
    with pytest.raises(BadRequestError, match="max_tokens"):
        eng.ask(None, "describe the image", conversation_id="d")  # 100 answer tokens never fit


def test_ending_at_the_limit_is_an_error_and_the_id_stays_ended(make, image):
    eng = make(conversation_max_turns=2, conversation_on_limit="end")
    for q in ("where is the mug?", "what colour is it?"):
        eng.ask(image, q, conversation_id="e", max_new_tokens=3)
    with pytest.raises(ConversationNotFoundError, match="ended at its limit") as err:
        eng.ask(None, "and the bigger one?", conversation_id="e", max_new_tokens=3)
    assert err.value.reason == "limit" and isinstance(err.value, LookupError)
    assert not isinstance(err.value, ValueError)
    with pytest.raises(ConversationNotFoundError, match="ended at its limit"):
        eng.ask(image, "where is the mug?", conversation_id="e")  # never silently started again
    st = eng.conversations.state("e")
    assert st.status == "limit" and not st.live and st.turns == 2


def test_pinned_frame_survives_newer_frames_and_eviction(make, image):
    eng = make(cache_frames=1)
    ref = make()
    a1 = eng.ask(image, "where is the mug?", frame_id="A", conversation_id="p", max_new_tokens=4)
    r1 = ref.ask(image, "where is the mug?", frame_id="A", conversation_id="p", max_new_tokens=4)
    for k in range(3):  # newer frames push frame A out of the cache
        eng.ask(make_image(seed=10 + k), "where is the cup?", frame_id=f"N{k}", max_new_tokens=2)
    assert "A" not in eng.frames
    other = make_image(seed=20)
    a2 = eng.ask(other, "what colour is it?", frame_id="N9", conversation_id="p", max_new_tokens=4)  # ignored
    r2 = ref.ask(None, "what colour is it?", conversation_id="p", max_new_tokens=4)
    assert a2.regions == a1.regions == r1.regions
    assert (a2.raw_text, a2.turn) == (r2.raw_text, 2) and a2.image_size == (image.shape[1], image.shape[0])
    assert "N9" not in eng.frames  # the ignored image was not even perceived
    assert eng.conversations.get("p").frame_id == "A"


def test_two_interleaved_conversations_on_two_frames_do_not_mix(make, image):
    img_b = make_image(seed=3)
    script = {"x": (image, ["where is the red mug?", "what colour is it?", "the one left of it"]),
              "y": (img_b, ["describe the image", "where is the spoon?", "is it big?"])}
    alone = {}
    for cid, (img, qs) in script.items():
        e = make()
        alone[cid] = [e._ask(img if i == 0 else None, q, conversation_id=cid, max_new_tokens=5)[1] for i, q
                      in enumerate(qs)]
    eng = make()
    for i in range(3):
        for cid, (img, qs) in script.items():
            answer, trace = eng._ask(img if i == 0 else None, qs[i], conversation_id=cid, max_new_tokens=5)
            ref = alone[cid][i]
            assert trace.prompt_ids == ref.prompt_ids and trace.generation.token_ids == ref.generation.token_ids
            assert answer.turn == i + 1 and answer.conversation_id == cid
    for cid, (img, _) in script.items():
        pinned = eng.conversations.get(cid).state.regions
        assert [r.box for r in pinned] == [r.box for r in make().perceive(img).regions]


def test_idle_expiry_with_an_injected_clock(make, image):
    clock = FakeClock()
    eng = make(conversation_idle_timeout_s=10.0, clock=clock)
    eng.ask(image, "where is the mug?", conversation_id="old", max_new_tokens=2)
    clock.now += 6
    eng.ask(image, "where is the cup?", conversation_id="new", max_new_tokens=2)
    clock.now += 5  # "old" idle 11 s, "new" 5 s
    assert eng.conversations.expire_idle() == ["old"]
    assert eng.conversations.get("new") is not None and eng.conversations.get("old") is None
    with pytest.raises(ConversationNotFoundError, match="expired after 10 s idle") as err:
        eng.ask(None, "what colour is it?", conversation_id="old", continue_only=True)
    assert err.value.reason == "expired"
    with pytest.raises(ConversationNotFoundError, match="expired"):
        eng.ask(image, "what colour is it?", conversation_id="old")  # an ended id is never reused
    clock.now += 11
    assert eng.conversations.get("new") is None  # a lookup expires it too
    assert eng.conversations.state("new").status == "expired"


def test_unknown_ids_continue_only_and_end(make, image):
    eng = make()
    with pytest.raises(ConversationNotFoundError, match="unknown") as err:
        eng.ask(image, "where is the mug?", conversation_id="nope", continue_only=True)
    assert err.value.reason == "unknown" and err.value.conversation_id == "nope"
    with pytest.raises(ConversationNotFoundError, match="no image"):
        eng.ask(None, "where is the mug?", conversation_id="nope")
    with pytest.raises(BadRequestError, match="continue_only needs"):
        eng.ask(image, "where is the mug?", continue_only=True)
    with pytest.raises(BadRequestError, match="no image"):
        eng.ask(None, "where is the mug?")
    with pytest.raises(BadRequestError, match="detect"):
        eng.ask(image, "", task=Task.DETECT, conversation_id="nope")
    assert eng.conversations.state("nope").status == "unknown" and len(eng.conversations) == 0
    eng.ask(image, "where is the mug?", conversation_id="", max_new_tokens=2)  # "" = a single question
    assert len(eng.conversations) == 0
    eng.ask(image, "where is the mug?", conversation_id="c", max_new_tokens=2)
    assert eng.conversations.end("c") and not eng.conversations.end("c")
    with pytest.raises(ConversationNotFoundError, match="ended by the caller"):
        eng.ask(image, "where is the mug?", conversation_id="c")


def test_user_boxes_are_pinned_on_the_first_turn(make, image):
    eng = make()
    first = eng.ask(image, "what is this?", boxes=[BOX], conversation_id="b", max_new_tokens=3)
    k = next(r.index for r in first.regions if r.from_user)
    again, trace = eng._ask(None, "what colour is this?", boxes=[BOX], conversation_id="b", max_new_tokens=3)
    assert again.regions == first.regions and again.task == Task.REGION_QA
    assert eng.model.config.token_ids.region_id(k) in trace.suffix_ids[0].tolist()[-20:]
    with pytest.raises(BadRequestError, match="pinned its boxes"):
        eng.ask(None, "what is this?", boxes=[(0.0, 0.0, 30.0, 30.0)], conversation_id="b")
    eng.ask(image, "where is the mug?", conversation_id="plain", max_new_tokens=2)
    with pytest.raises(BadRequestError, match=r"pinned its boxes on its first turn \(none\)"):
        eng.ask(None, "what is this?", boxes=[BOX], conversation_id="plain")
    assert eng.conversations.get("b").turns == 2 and eng.conversations.get("plain").turns == 1


def test_a_canceled_turn_is_not_kept(make, image):
    eng = make()
    eng.ask(image, "where is the mug?", conversation_id="k", max_new_tokens=3)
    canceled = eng.ask(None, "what colour is it?", conversation_id="k", should_cancel=lambda: True)
    assert canceled.canceled and canceled.turn == 2 and eng.conversations.get("k").turns == 1
    answer, trace = eng._ask(None, "is it big?", conversation_id="k", max_new_tokens=4, keep_logits=True)
    assert answer.turn == 2 and eng.conversations.get("k").turns == 2
    assert_equals_scratch(eng, image, answer, trace, max_new_tokens=4)


def test_max_live_ends_the_least_recently_used(make, image):
    eng = make(conversation_max_live=2)
    for cid in ("a", "b"):
        eng.ask(image, "where is the mug?", conversation_id=cid, max_new_tokens=2)
    eng.ask(None, "what colour is it?", conversation_id="a", max_new_tokens=2)  # "b" is now the least recent
    eng.ask(image, "where is the cup?", conversation_id="c", max_new_tokens=2)
    assert eng.conversations.ids() == ["a", "c"]
    assert eng.conversations.state("b").status == "evicted"


def test_memory_budget_is_shared_frames_go_first(make, image):
    probe = make()
    probe.ask(image, "where is the mug?", frame_id="m", conversation_id="m", max_new_tokens=3)
    frame_bytes = probe.frames.perceptions()[0].nbytes()
    conv_bytes = tensor_bytes(probe.conversations.tensors())
    # room for the conversation and two frames (its own frame's prefix is shared, not counted twice)
    eng = make(cache_frames=8, cache_bytes=conv_bytes + 2 * frame_bytes)
    eng.ask(image, "where is the mug?", frame_id="m", conversation_id="m", max_new_tokens=3)
    for k in range(4):
        eng.ask(make_image(seed=30 + k), "where is the cup?", frame_id=f"f{k}", max_new_tokens=2)
    assert eng.conversations.get("m") is not None  # frames were evicted instead
    assert 1 <= len(eng.frames) <= 2
    eng.frames.max_bytes = 1  # now nothing fits: the next frame ends the conversation
    eng.ask(make_image(seed=40), "where is the cup?", frame_id="g", max_new_tokens=2)
    assert eng.frames.keys() == ["g"]
    st = eng.conversations.state("m")
    assert st.status == "memory" and "evicted for memory" in st.message
    # the conversation being answered is never the one evicted
    eng.ask(image, "where is the mug?", conversation_id="n", max_new_tokens=2)
    eng.ask(None, "what colour is it?", conversation_id="n", max_new_tokens=2)
    assert eng.conversations.get("n") is not None


def test_settings_are_validated(make):
    eng = make()
    store = eng.conversations
    for name, bad in (("max_turns", 0), ("max_tokens", -1), ("max_live", 1.5), ("idle_timeout_s", 0)):
        with pytest.raises(ValueError, match=name):
            setattr(store, name, bad)
    with pytest.raises(ValueError, match="on_limit"):
        store.on_limit = "truncate"
    store.max_turns, store.idle_timeout_s = None, None  # unbounded
    assert store.max_turns is None and store.idle_timeout_s is None


def test_store_is_thread_safe_under_concurrent_ask_and_expire(make, image):
    clock = FakeClock()
    eng = make(conversation_idle_timeout_s=50.0, clock=clock, conversation_max_live=3)
    images = [make_image(seed=s) for s in (50, 51, 52)]
    queries = ["where is the mug?", "what colour is it?", "the one left of it", "is it big?", "the other one"]
    reference = []
    for img in images:
        e = make()
        reference.append([e.ask(img if i == 0 else None, q, conversation_id="r", max_new_tokens=3).raw_text
                          for i, q in enumerate(queries)])
    results: dict[int, list] = {i: [] for i in range(len(images))}
    errors: list[BaseException] = []
    stop = threading.Event()

    def talk(i: int) -> None:
        try:
            for j, q in enumerate(queries):
                try:
                    results[i].append(eng.ask(images[i] if j == 0 else None, q, conversation_id=f"t{i}",
                                              max_new_tokens=3))
                except ConversationNotFoundError as err:
                    results[i].append(err)
                    return
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    def meddle() -> None:
        rng = random.Random(0)
        try:
            while not stop.is_set():
                clock.now += rng.choice([0.0, 1.0, 30.0])
                eng.conversations.expire_idle()
                for cid in ("t0", "t1", "t2"):
                    eng.conversations.state(cid)
                    eng.conversations.get(cid)
                if rng.random() < 0.05:
                    eng.conversations.end("t2")
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=talk, args=(i,)) for i in range(3)]
    meddler = threading.Thread(target=meddle)
    meddler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    meddler.join(timeout=30)
    assert not errors, errors
    for i, got in enumerate(results.values()):
        answers = [a for a in got if not isinstance(a, BaseException)]
        assert [a.turn for a in answers] == list(range(1, len(answers) + 1))
        assert [a.raw_text for a in answers] == reference[i][:len(answers)]  # nothing mixed in
        if len(answers) < len(queries):  # it ended while idle or was ended: with a reason, never restarted
            assert isinstance(got[-1], ConversationNotFoundError)
            assert got[-1].reason in ("expired", "ended", "evicted")
    assert len(eng.conversations) <= 3


def test_ending_a_conversation_while_its_turn_runs(make, image):
    """The answer still comes back, the turn is not kept, and the id stays ended; idle expiry waits for a turn."""
    clock = FakeClock()
    eng = make(conversation_idle_timeout_s=5.0, clock=clock)
    eng.ask(image, "where is the mug?", conversation_id="f", max_new_tokens=2)

    def meddle(_piece: str) -> None:
        clock.now += 100  # far past the idle timeout, but the conversation is busy: not expired
        assert eng.conversations.expire_idle() == []
        eng.conversations.end("f")

    answer = eng.ask(None, "what colour is it?", conversation_id="f", max_new_tokens=3, on_token=meddle)
    assert not answer.canceled and answer.completion_tokens >= 1 and answer.turn == 2
    st = eng.conversations.state("f")
    assert st.status == "ended" and st.turns == 1
    with pytest.raises(ConversationNotFoundError, match="ended by the caller"):
        eng.ask(None, "is it big?", conversation_id="f")
