"""Relation-focused stage-2 options: phrase split of binary relations, anchor-phrase gathering, relational task
weight, captions in region order, caption phrases pointing at their region, existence questions pointing at the
regions they ask about."""

from __future__ import annotations

import random
import re

import pytest
import torch

from groma_ros.synthetic.metrics import parse_grounded
from groma_ros.synthetic.scenes import generate_scene, split_seeds
from groma_ros.synthetic.texts import RELATIONS, caption_sample, generate_samples, resolve
from groma_ros.training import cache as cache_mod
from groma_ros.training import data, losses, sequences
from groma_ros.training.recipe import Stage2Config


@pytest.fixture(scope="module")
def scene_caches(model):
    """Cached scenes whose (untrained, random) proposals score 0: the ground-truth candidates are the regions."""
    caches = cache_mod.build_cache(model, 12, start=40)
    for c in caches:
        c.scores[:len(c.boxes) - c.num_objects] = 0.0
    return caches


def _phrase_bounds(ids: list[int], t) -> tuple[int, int]:
    start = ids.index(t.by_name("<p>"))
    return start, ids.index(t.by_name("</p>"), start)


def test_binary_relation_phrase_splits_before_the_anchor(model, tokenizer, scene_caches):
    enc, t, found = data.PromptEncoder(tokenizer), model.config.token_ids, 0
    for sc in scene_caches:
        scene = data.train_scene(sc.index)
        for sample in generate_samples(scene):
            if sequences.anchor_object(sample, scene) is None:
                continue
            seq = sequences.make_sequence(sc, None, "refer", enc, model.config, Stage2Config(), random.Random(0),
                                          sample=sample, scene_obj=scene)
            if seq is None:
                continue
            ids = seq.ids.tolist()
            start, end = _phrase_bounds(ids, t)
            target = tokenizer.decode(ids[start + 1:seq.anchor_split]).strip()
            anchor = tokenizer.decode(ids[seq.anchor_split:end]).strip()
            assert f"{target} {anchor}" == sample.query
            assert target.split(" ", 1)[1].endswith(tuple(RELATIONS)) and anchor.startswith("the ")
            assert resolve(anchor, scene) == [sequences.anchor_object(sample, scene)]
            found += 1
    assert found >= 3


def test_attribute_phrases_have_no_split(model, tokenizer, scene_caches):
    enc = data.PromptEncoder(tokenizer)
    sc = scene_caches[0]
    seq = sequences.make_sequence(sc, generate_samples(data.train_scene(sc.index)), "refer_multi", enc,
                                  model.config, Stage2Config(), random.Random(0))
    assert seq is None or seq.anchor_split is None


def _attention_for(seq: sequences.Sequence, t, heads: dict[int, tuple[int, int]], layers: int = 4) -> list:
    """Attention maps [1, 6, T, T] where, at each pointer position, head h attends uniformly to span heads[h]."""
    n = len(seq.ids)
    maps = [torch.full((1, 6, n, n), 1.0 / n) for _ in range(layers)]
    for p, _ in seq.pointer:
        for h, (a, b) in heads.items():
            for m in maps:
                m[0, h, p] = 0.0
                m[0, h, p, a:b] = 1.0 / (b - a)
    return maps


def test_anchor_gather_supervises_target_words_and_anchor_words_apart(model, tokenizer, scene_caches):
    enc, t = data.PromptEncoder(tokenizer), model.config.token_ids
    seq = None
    for sc in scene_caches:
        scene = data.train_scene(sc.index)
        for sample in generate_samples(scene):
            if sequences.anchor_object(sample, scene) is not None:
                seq = sequences.make_sequence(sc, None, "refer", enc, model.config, Stage2Config(), random.Random(0),
                                              sample=sample, scene_obj=scene)
                if seq is not None:
                    break
        if seq is not None:
            break
    assert seq is not None and seq.anchor_split is not None
    start, end = _phrase_bounds(seq.ids.tolist(), t)
    split = seq.anchor_split
    s2 = Stage2Config(anchor_gather_layers=(0,), pointer_layers=(), anchor_layers=())
    right = _attention_for(seq, t, {1: (start + 1, split), 3: (split, end)})
    swapped = _attention_for(seq, t, {1: (split, end), 3: (start + 1, split)})
    whole = _attention_for(seq, t, {1: (start + 1, end), 3: (start + 1, end)})
    loss = {name: float(losses.attention_losses(a, [seq], t, s2)[0]) for name, a in
            (("right", right), ("swapped", swapped), ("whole", whole))}
    assert loss["right"] < loss["whole"] < loss["swapped"]
    # without the option, head 1 gathers the whole phrase (the earlier recipe) and head 3 is free
    off = Stage2Config(pointer_layers=(), anchor_layers=())
    assert float(losses.attention_losses(whole, [seq], t, off)[0]) < float(losses.attention_losses(right, [seq], t,
                                                                                                   off)[0])


def test_relation_task_weight_draws_relational_expressions_only(model, tokenizer, scene_caches):
    enc, t, drawn = data.PromptEncoder(tokenizer), model.config.token_ids, 0
    for sc in scene_caches:
        samples = generate_samples(data.train_scene(sc.index))
        for seed in range(3):
            seq = sequences.make_sequence(sc, samples, sequences.RELATION_TASK, enc, model.config, Stage2Config(),
                                          random.Random(seed))
            if seq is None:
                continue
            ids = seq.ids.tolist()
            start, end = _phrase_bounds(ids, t)
            phrase = tokenizer.decode(ids[start + 1:end]).strip()
            assert any(s.query == phrase and s.kind == "relation" for s in samples)
            drawn += 1
    assert drawn >= 5


def _holds(a, b, rel: str) -> bool:
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    return {"left of": dx >= 0, "right of": dx < 0, "above": dy > abs(dx), "below": -dy > abs(dx)}[rel]


def _phrase_objects(sample) -> list[tuple[str, int]]:
    phrases = re.findall(r"<p>(.*?)</p>", sample.answer)
    return sorted(zip(phrases, (o[0] for o in sample.answer_objects), strict=True))


def test_caption_in_any_order_keeps_its_phrases_and_true_connectors():
    for seed in split_seeds("val", 30):
        scene = generate_scene(seed)
        default = caption_sample(scene)
        order = list(range(len(scene.objects)))[::-1]
        other = caption_sample(scene, order)
        assert [o[0] for o in other.answer_objects] == order
        assert _phrase_objects(default) == _phrase_objects(other)
        connectors = re.findall(r"\} (above|below|left of|right of) ", other.answer)
        for k, rel in enumerate(connectors):
            assert _holds(scene.objects[order[k]], scene.objects[order[k + 1]], rel), (other.answer, rel)
        assert "right of" not in default.answer  # left to right never needs it


def test_region_order_captions_list_regions_ascending(model, tokenizer, scene_caches):
    enc, checked = data.PromptEncoder(tokenizer), 0
    for sc in scene_caches:
        scene = data.train_scene(sc.index)
        samples = generate_samples(scene)
        seq = sequences.make_sequence(sc, samples, "grounded_caption", enc, model.config,
                                      Stage2Config(caption_order="regions"), random.Random(1), scene_obj=scene)
        if seq is None or scene.objects and len(scene.objects) < 2:
            continue
        answer = tokenizer.decode(seq.ids[int(torch.nonzero(seq.weights).min()):].tolist())
        regions = [k for _, idx in parse_grounded(answer) for k in idx]
        assert regions == sorted(regions) and len(regions) == len(scene.objects)
        checked += 1
    assert checked >= 3


def test_caption_phrase_positions_point_at_the_region_their_roi_names(model, tokenizer, scene_caches):
    """Each position from an answer's <p> to the token before </p> targets the one region of that phrase's roi;
    the supervised head's loss is lowest when it attends there and is not computed when the option is off."""
    enc, t, checked = data.PromptEncoder(tokenizer), model.config.token_ids, 0
    for sc in scene_caches:
        scene = data.train_scene(sc.index)
        seq = sequences.make_sequence(sc, generate_samples(scene), "grounded_caption", enc, model.config,
                                      Stage2Config(), random.Random(2), scene_obj=scene)
        if seq is None or len(scene.objects) < 2:
            continue
        ids = seq.ids.tolist()
        answer_start = int(torch.nonzero(seq.weights).min())
        by_region: dict[int, list[int]] = {}
        for pos, k in seq.phrase_pointer:
            by_region.setdefault(k, []).append(pos)
        phrases = parse_grounded(tokenizer.decode(ids[answer_start:]))
        assert sorted(by_region) == sorted(k for _, idx in phrases for k in idx)
        for phrase, idx in phrases:
            positions = by_region[idx[0]]
            assert ids[positions[0]] == t.by_name("<p>") and ids[positions[-1] + 1] == t.by_name("</p>")
            assert positions == list(range(positions[0], positions[-1] + 1))
            assert tokenizer.decode(ids[positions[0] + 1:positions[-1] + 1]).strip() == phrase
        region_pos = torch.nonzero(seq.ids == t.region).flatten()
        n = len(ids)
        right, wrong = (torch.full((1, 6, n, n), 1.0 / n) for _ in range(2))
        for pos, k in seq.phrase_pointer:
            right[0, losses.PHRASE_POINTER_HEAD, pos] = 0.0
            right[0, losses.PHRASE_POINTER_HEAD, pos, region_pos[k]] = 1.0
            wrong[0, losses.PHRASE_POINTER_HEAD, pos] = 0.0
            wrong[0, losses.PHRASE_POINTER_HEAD, pos, region_pos[(k + 1) % len(region_pos)]] = 1.0
        s2 = Stage2Config(pointer_layers=(), gather_layers=(), phrase_pointer_layers=(2,))
        on = {name: float(losses.attention_losses([m] * 4, [seq], t, s2)[0]) for name, m in
              (("right", right), ("wrong", wrong))}
        assert on["right"] + 1.0 < on["wrong"]
        off = Stage2Config(pointer_layers=(), gather_layers=())
        assert float(losses.attention_losses([wrong] * 4, [seq], t, off)[0]) == float(
            losses.attention_losses([right] * 4, [seq], t, off)[0])
        checked += 1
    assert checked >= 3
    refer = sequences.make_sequence(scene_caches[0], generate_samples(data.train_scene(scene_caches[0].index)),
                                    "refer", enc, model.config, Stage2Config(), random.Random(0))
    assert refer is None or refer.phrase_pointer == []


def test_existence_answer_points_at_the_asked_regions_or_the_sink(model, tokenizer, scene_caches):
    """"is there a red circle?": the answer position targets exactly the kept regions showing a red circle ("yes"),
    or nothing (position 0, "no"); its gather targets are the colour and shape words; the loss prefers attending
    there and is not computed when the option is off or for other questions."""
    enc, t = data.PromptEncoder(tokenizer), model.config.token_ids
    s2 = Stage2Config(pointer_layers=(), gather_layers=(1,), exists_pointer_layers=(2,))
    seen = {"yes": 0, "no": 0}
    for sc in scene_caches:
        scene = data.train_scene(sc.index)
        for sample in generate_samples(scene):
            if sample.kind != "exists":
                continue
            seq = sequences.make_sequence(sc, None, "vqa", enc, model.config, s2, random.Random(3), sample=sample,
                                          scene_obj=scene)
            if seq is None:
                continue
            pos, regions, words = seq.exists
            ids = seq.ids.tolist()
            first = tokenizer.decode(ids[pos + 1:pos + 2]).strip()  # pos predicts the answer's first piece
            assert first and sample.answer.startswith(first) and seq.weights[pos + 1] == 1
            color, shape = re.match(r"is there an? (\w+) (\w+)\?", sample.query).groups()
            assert tokenizer.decode([ids[w] for w in words]).strip() == f"{color} {shape}"
            asked = [o for o in scene.objects if (o.color, o.shape) == (color, shape)]
            assert (sample.answer == "yes") == bool(regions) and len(regions) <= len(asked)
            q = len(sc.boxes) - sc.num_objects
            for k in regions:  # each target region is the kept box of one asked object
                kept_box = seq.region_boxes[k]
                assert any(torch.allclose(kept_box, sc.boxes[q + j].float())
                           for j, o in enumerate(scene.objects) if (o.color, o.shape) == (color, shape))
            region_pos = torch.nonzero(seq.ids == t.region).flatten()
            targets = region_pos[regions].tolist() if regions else [0]
            n = len(ids)
            right, wrong = (torch.full((1, 6, n, n), 1.0 / n) for _ in range(2))
            right[0, s2.exists_pointer_head, pos] = 0.0
            right[0, s2.exists_pointer_head, pos, targets] = 1.0 / len(targets)
            right[0, 1, pos] = 0.0
            right[0, 1, pos, words] = 1.0 / len(words)
            other = next((int(r) for r in region_pos if int(r) not in targets), pos)  # else: itself
            wrong[0, s2.exists_pointer_head, pos] = 0.0
            wrong[0, s2.exists_pointer_head, pos, other] = 1.0
            on = {name: float(losses.attention_losses([m] * 4, [seq], t, s2)[0]) for name, m in
                  (("right", right), ("wrong", wrong))}
            assert on["right"] + 1.0 < on["wrong"]
            off = Stage2Config(pointer_layers=(), gather_layers=(1,))
            seq_off = sequences.make_sequence(sc, None, "vqa", enc, model.config, off, random.Random(3),
                                              sample=sample, scene_obj=scene)
            assert seq_off.exists is None
            seen[sample.answer] += 1
    assert seen["yes"] >= 3 and seen["no"] >= 3
    count = next(s for s in generate_samples(data.train_scene(scene_caches[0].index)) if s.kind == "count")
    seq = sequences.make_sequence(scene_caches[0], None, "vqa", enc, model.config, s2, random.Random(0), sample=count,
                                  scene_obj=data.train_scene(scene_caches[0].index))
    assert seq is not None and seq.exists is None


def test_unknown_caption_order_is_refused():
    with pytest.raises(ValueError, match="caption_order"):
        Stage2Config(caption_order="random")


def test_position_alignment_orders_regions_by_their_extreme_words(tokenizer):
    """Minimising the loss over region tokens makes cos(token, "leftmost") fall with x, "bottommost" rise with y."""
    torch.manual_seed(0)
    aux = losses.Stage2Aux(64, losses.attribute_word_ids(tokenizer))
    emb = torch.randn(tokenizer.vocab_size + 200, 64, requires_grad=True)  # word embeddings train too
    boxes = torch.rand(24, 4)
    reg = torch.randn(24, 64, requires_grad=True)
    opt = torch.optim.Adam([reg, emb], lr=0.05)
    first = float(losses.position_align_loss(emb, reg, boxes, aux).detach())
    for _ in range(300):
        opt.zero_grad()
        losses.position_align_loss(emb, reg, boxes, aux).backward()
        opt.step()
    assert float(losses.position_align_loss(emb, reg, boxes, aux).detach()) < 0.05 * first
    r, emb = torch.nn.functional.normalize(reg.detach(), dim=-1), emb.detach()
    # the first region by score must be the most extreme one: smallest x for leftmost, largest y for bottommost...
    expected = {"leftmost": (0, 1.0), "rightmost": (0, -1.0), "topmost": (1, 1.0), "bottommost": (1, -1.0)}
    for ids, (word, _, _) in zip(aux.word_ids["position"], losses.POSITION_WORDS, strict=True):
        axis, ascending = expected[word]
        score = r @ torch.nn.functional.normalize(emb[torch.tensor(ids)].mean(0), dim=-1)
        order = torch.argsort(score, descending=True)
        coord = boxes[order, axis] * ascending
        assert torch.all(coord[:-1] <= coord[1:] + 0.02), word


def test_dialogue_sequences_train_every_answer_and_point_back_at_the_referent(model, tokenizer, scene_caches):
    """A dialogue is one sequence: prefix, then per turn the engine's message ids and the answer; each follow-up's
    answer position has the referent's region as anchor and, as referent key, the position of the ``<rK>`` by
    which the first answer named it; the referent loss prefers attending there and is off without the option."""
    from groma_ros.synthetic.dialogue import generate_dialogues

    enc, t = data.PromptEncoder(tokenizer), model.config.token_ids
    s2 = Stage2Config(pointer_layers=(), gather_layers=(), referent_layers=(0,))
    checked = set()
    for sc in scene_caches:
        for dialogue in generate_dialogues(data.train_scene(sc.index)):
            seq = sequences.make_dialogue_sequence(sc, [], enc, model.config, s2, random.Random(1), shuffle=False,
                                                   dialogue=dialogue)
            if seq is None:
                continue
            ids = seq.ids.tolist()
            q = len(sc.boxes) - sc.num_objects
            region_of = {j: k for k in range(len(seq.region_boxes)) for j in range(sc.num_objects)
                         if torch.allclose(seq.region_boxes[k], sc.boxes[q + j].float())}
            eos = [i for i, x in enumerate(ids) if x == tokenizer.eos_id][1:]  # the prefix's first exchange ends at 0
            assert len(eos) == len(dialogue.turns) and eos[-1] == len(ids) - 1
            trained = [i for i, w in enumerate(seq.weights.tolist()) if w > 0 and w != s2.list_weight]
            assert eos[0] in trained and all(e in trained for e in eos)
            first_target = region_of[dialogue.turns[0].answer_objects[0][0]]
            named = ids.index(t.region_id(first_target), eos[0] - 3)  # the <rK> of the first answer
            assert named < eos[0]
            referent = region_of[dialogue.referents[1]]
            follow = [(p, k) for p, k in seq.pointer if p > eos[0] and p < eos[1]]
            if dialogue.turns[1].task == "refer":
                assert [k for _, k in follow] == [region_of[dialogue.turns[1].answer_objects[0][0]]]
                positions = [p for p, _ in follow]
            else:
                assert not follow
                answer_word = tokenizer.decode(ids[eos[0] + 1:eos[1]]).split("ASSISTANT:")[-1].strip()
                assert answer_word.removesuffix("</s>").strip() == dialogue.turns[1].answer
                positions = [p for p, _ in seq.anchors if eos[0] < p < eos[1]]
                assert len(positions) == 1
            assert [(p, k) for p, k in seq.anchors if eos[0] < p < eos[1]] == [(p, referent) for p in positions]
            assert [(p, k) for p, k in seq.referents if eos[0] < p < eos[1]] == [(p, named) for p in positions]
            n = len(ids)
            right, wrong = (torch.full((1, 6, n, n), 1.0 / n) for _ in range(2))
            for p in positions:
                right[0, 2, p] = 0.0
                right[0, 2, p, named] = 1.0
                wrong[0, 2, p] = 0.0
                wrong[0, 2, p, named - 1] = 1.0
            loss = {name: float(losses.attention_losses([m] * 4, [seq], t, s2)[0]) for name, m in
                    (("right", right), ("wrong", wrong))}
            assert loss["right"] + 1.0 < loss["wrong"]
            off = float(losses.attention_losses([wrong] * 4, [seq], t, Stage2Config(pointer_layers=(),
                                                                                    gather_layers=()))[0])
            assert off < loss["wrong"]
            assert seq.referent_words == []  # off unless referent_phrase
            words = sequences.make_dialogue_sequence(sc, [], enc, model.config, Stage2Config(referent_phrase=True),
                                                     random.Random(1), shuffle=False, dialogue=dialogue)
            described = [(p, tokenizer.decode([ids[w] for w in ws])) for p, ws in words.referent_words
                         if eos[0] < p < eos[1]]
            assert described == [(p, dialogue.turns[0].query) for p in positions]
            gather = Stage2Config(pointer_layers=(), gather_layers=(), anchor_gather_layers=(0,), referent_phrase=True)
            right, wrong = (torch.full((1, 6, n, n), 1.0 / n) for _ in range(2))
            for p, ws in words.referent_words:
                right[0, 3, p] = 0.0
                right[0, 3, p, ws] = 1.0 / len(ws)
                wrong[0, 3, p] = 0.0
                wrong[0, 3, p, p] = 1.0
            assert (float(losses.attention_losses([right] * 4, [words], t, gather)[0]) + 1.0
                    < float(losses.attention_losses([wrong] * 4, [words], t, gather)[0]))
            checked.add(dialogue.turns[1].task)
    assert checked == {"refer", "vqa"}


def test_dialogue_encoding_is_the_multi_turn_template(tokenizer):
    """Turn by turn as the engine continues a conversation, and the same as tokenizing the whole conversation."""
    from groma_ros.engine.prompts import PREFIX, PromptBuilder
    from groma_ros.synthetic.texts import TextSample

    enc = data.PromptEncoder(tokenizer)
    turns = [TextSample("refer", "the red circle", "{roi0}", [], [[0]], "attribute"),
             TextSample("refer", "and the bigger one?", "{roi0}", [], [[2]], "comparative"),
             TextSample("vqa", "what colour is it?", "blue", [], [], "attribute")]
    out = enc.encode_dialogue(turns, {0: 3, 2: 1})
    text = PREFIX + "".join(PromptBuilder().build(data.engine_query(s)[0], s.query).suffix + f" {a}</s>"
                            for s, a in zip(turns, ["<roi><r3></roi>", "<roi><r1></roi>", "blue"], strict=True))
    assert out.ids == tokenizer.encode(text)
    assert [tokenizer.decode(out.ids[a:b]) for a, b in out.answers] == ["<roi><r3></roi></s>", "<roi><r1></roi></s>",
                                                                        "blue</s>"]
    assert "Locate <p>the bigger one</p> in the image." in text
