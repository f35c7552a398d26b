"""Dialogues: deterministic, every follow-up means exactly its answer (re-evaluated on the scene), the forms
follow the documented rules, and the prompt builder sends them as the training does."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from groma_ros.engine.prompts import PromptBuilder
from groma_ros.synthetic.dialogue import FOLLOWUP_KINDS, generate_dialogues, resolve_followup
from groma_ros.synthetic.scenes import Scene, SceneObject, generate_scene
from groma_ros.synthetic.texts import DIALOGUE_WORDS, VOCABULARY, resolve, words

SCENES = [generate_scene(s) for s in range(300)]
DIALOGUES = [(sc, d) for sc in SCENES for d in generate_dialogues(sc)]


def _obj(shape, color, size, cx, cy, r=6.0):
    return SceneObject(shape, color, size, (cx - r, cy - r, cx + r, cy + r), (cx, cy))


def _scene(objs):
    return Scene(seed=0, image=np.zeros((128, 128, 3), np.uint8), objects=objs, background="plain")


def test_deterministic_and_every_kind_occurs():
    assert generate_dialogues(SCENES[7]) == generate_dialogues(generate_scene(7))
    kinds = Counter(d.turns[1].kind for _, d in DIALOGUES)
    assert set(kinds) == set(FOLLOWUP_KINDS) and min(kinds.values()) >= 50, kinds
    assert sum(len(d.turns) == 3 for _, d in DIALOGUES) > 0.3 * len(DIALOGUES)


def test_first_turn_refers_and_every_follow_up_means_its_answer():
    for sc, d in DIALOGUES:
        first = d.turns[0]
        assert first.task == "refer" and resolve(first.query, sc) == first.answer_objects[0]
        assert d.referents[0] is None and d.referents[1] == first.answer_objects[0][0]
        for turn, referent in zip(d.turns[1:], d.referents[1:], strict=True):
            got = resolve_followup(turn.query, referent, sc)
            assert got == (turn.answer if turn.task == "vqa" else turn.answer_objects[0]), (sc.seed, turn)
            assert got != [referent]


def test_the_referent_is_the_latest_referring_answer():
    for _, d in DIALOGUES:
        if len(d.turns) == 3:
            second = d.turns[1]
            want = second.answer_objects[0][0] if second.task == "refer" else d.referents[1]
            assert d.referents[2] == want


def test_other_and_comparative_follow_only_a_named_shape():
    for sc, d in DIALOGUES:
        if d.turns[1].kind in ("other", "comparative"):
            t = sc.objects[d.referents[1]]
            assert d.turns[0].query.split()[-1] == t.shape


def test_relation_follow_ups_hold_with_the_margin():
    from groma_ros.synthetic.texts import _rel_score

    margin = 0.05 * 128
    for sc, d in DIALOGUES:
        for turn, r in zip(d.turns[1:], d.referents[1:], strict=True):
            if turn.kind != "relation":
                continue
            rel = turn.query.removeprefix("the one ").removesuffix(" it")
            target = turn.answer_objects[0][0]
            assert _rel_score(sc.objects[target], sc.objects[r], rel) >= margin
            assert all(_rel_score(o, sc.objects[r], rel) <= -margin
                       for i, o in enumerate(sc.objects) if i not in (target, r))


def test_semantics_on_a_hand_made_scene():
    sc = _scene([_obj("circle", "red", "small", 20, 64), _obj("circle", "blue", "large", 100, 64),
                 _obj("star", "green", "medium", 60, 40)])
    assert resolve_followup("the other one", 0, sc) == [1]
    assert resolve_followup("and the bigger one?", 0, sc) == [1]
    assert resolve_followup("and the smaller one?", 1, sc) == [0]
    assert resolve_followup("and the smaller one?", 0, sc) == []
    assert resolve_followup("the one right of it", 0, sc) == [1, 2]
    assert resolve_followup("the one above it", 1, sc) == []  # the star is more left (40 px) than above (24)
    assert resolve_followup("the one below it", 2, sc) == []
    assert resolve_followup("what colour is it?", 2, sc) == "green"
    assert resolve_followup("what size is it?", 1, sc) == "large"
    with pytest.raises(ValueError):
        resolve_followup("the thing over there", 0, sc)


def test_words_are_in_the_vocabulary_and_the_prompts_are_the_builders():
    used = {w for _, d in DIALOGUES for t in d.turns for w in words(t.query) + words(t.answer)
            if not w.startswith("{")}
    assert DIALOGUE_WORDS <= used <= VOCABULARY
    build = PromptBuilder().build
    assert build("auto", "and the bigger one?").user_message == "Locate <p>the bigger one</p> in the image."
    assert build("auto", "the one left of it").user_message == "Locate <p>the one left of it</p> in the image."
    assert build("auto", "the other one").task.name == "REFER"
    assert build("auto", "what colour is it?").user_message == "what colour is it?"
