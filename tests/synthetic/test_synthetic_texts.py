"""Task texts: determinism, unambiguous expressions (re-evaluated on the scene), rendering, vocabulary."""

import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from groma_ros.synthetic.scenes import COLORS, SHAPES, SIZES, Scene, SceneObject, generate_scene
from groma_ros.synthetic.texts import (
    VOCABULARY,
    TextConfig,
    TextSample,
    corpus_texts,
    generate_samples,
    plain_text,
    render,
    resolve,
    words,
)

SCENES = [generate_scene(s) for s in range(250)]
SAMPLES = [generate_samples(sc) for sc in SCENES]


def _by_task(task):
    return [(sc, s) for sc, ss in zip(SCENES, SAMPLES, strict=True) for s in ss if s.task == task]


def _obj(shape, color, size, cx, cy, r=6.0):
    return SceneObject(shape, color, size, (cx - r, cy - r, cx + r, cy + r), (cx, cy))


def _scene(objs):
    return Scene(seed=0, image=np.zeros((128, 128, 3), np.uint8), objects=objs, background="plain")


def test_deterministic_per_seed():
    for seed in (0, 7, 10_000_123):
        assert generate_samples(generate_scene(seed)) == generate_samples(generate_scene(seed))


def test_all_tasks_and_kinds_present():
    kinds = {(s.task, s.kind) for ss in SAMPLES for s in ss}
    assert {("refer", "attribute"), ("refer", "relation"), ("grounded_caption", "caption")} <= kinds
    assert {t for t, _ in kinds} == {"refer", "refer_multi", "grounded_caption", "region_qa", "vqa"}


def test_every_refer_expression_picks_exactly_its_object():
    pairs = _by_task("refer")
    assert len(pairs) > 500
    for sc, s in pairs:
        assert s.answer == "{roi0}" and len(s.answer_objects) == 1 and len(s.answer_objects[0]) == 1
        assert resolve(s.query, sc) == s.answer_objects[0], (sc.seed, s.query)


def _attr_count(expr):
    return sum(w in {*SIZES, *COLORS, *SHAPES} for w in expr.split())


def test_attribute_expressions_are_minimal_without_overspecification():
    cfg = TextConfig(overspecify_prob=0.0)
    for sc in SCENES[:150]:
        for s in generate_samples(sc, cfg):
            if s.task != "refer" or s.kind != "attribute":
                continue
            t = sc.objects[s.answer_objects[0][0]]
            unique_sizes = [
                len(keys) for r in (1, 2, 3) for keys in itertools.combinations(("size", "color", "shape"), r)
                if sum(all(getattr(o, k) == getattr(t, k) for k in keys) for o in sc.objects) == 1]
            assert _attr_count(s.query) == min(unique_sizes), (sc.seed, s.query)


def test_relation_semantics_on_a_hand_made_scene():
    sc = _scene([_obj("circle", "red", "small", 20, 64), _obj("star", "green", "large", 64, 64),
                 _obj("circle", "blue", "medium", 110, 64), _obj("square", "red", "small", 64, 20)])
    assert resolve("the circle left of the green star", sc) == [0]
    assert resolve("the circle right of the star", sc) == [2]
    assert resolve("the shape above the green star", sc) == [3]
    assert resolve("the shape below the red square", sc) == [1]  # circles are mostly beside, not below
    assert resolve("the leftmost circle", sc) == [0]
    assert resolve("the largest shape", sc) == [1]
    assert resolve("the smallest circle", sc) == [0]
    assert resolve("the red circle", sc) == [0]
    assert resolve("all the circles", sc) == [0, 2]
    assert resolve("all the red shapes", sc) == [0, 3]
    assert resolve("the shape left of the circle", sc) == []  # ambiguous anchor
    with pytest.raises(ValueError):
        resolve("the thing over there", sc)


def test_multi_object_lists_exactly_the_matches_left_to_right():
    for sc, s in _by_task("refer_multi"):
        m = re.fullmatch(r"all the (?:(\w+) )?(\w+)", s.query)
        color, noun = m.group(1), {"crosses": "cross"}.get(m.group(2), m.group(2).removesuffix("s"))
        want = [i for i, o in enumerate(sc.objects)
                if (color is None or o.color == color) and noun in ("shape", o.shape)]
        want.sort(key=lambda i: sc.objects[i].center[0])
        assert s.answer_objects == [want] and want, (s.query, want)
        assert resolve(s.query, sc) == want


def test_grounded_caption_covers_all_objects_left_to_right():
    for sc, s in _by_task("grounded_caption"):
        flat = [ois[0] for ois in s.answer_objects]
        assert sorted(flat) == list(range(len(sc.objects)))
        xs = [sc.objects[i].center[0] for i in flat]
        assert xs == sorted(xs)
        phrases = re.findall(r"<p>(.*?)</p>\{roi(\d+)\}", s.answer)
        assert [int(k) for _, k in phrases] == list(range(len(flat)))
        for (phrase, k) in phrases:
            o = sc.objects[flat[int(k)]]
            assert phrase.split()[-2:] == [o.color, o.shape]
            if len(phrase.split()) == 3:
                assert phrase.split()[0] == o.size


def test_region_qa_answers_match_the_object():
    for sc, s in _by_task("region_qa"):
        assert "{refer0}" in s.query and len(s.query_objects) == 1 and s.answer_objects == []
        o = sc.objects[s.query_objects[0]]
        want = {"what": f"{'an' if o.size[0] in 'aeiou' else 'a'} {o.size} {o.color} {o.shape}",
                "colour": o.color, "shape": o.shape, "size": o.size}[s.kind]
        assert s.answer == want


def test_vqa_answers_are_correct():
    plural = {"crosses": "cross"}
    n_yes = n_no = 0
    for sc, s in _by_task("vqa"):
        if m := re.fullmatch(r"how many (?:(\w+) )?(\w+) are there\?", s.query):
            color, noun = m.groups()
            noun = plural.get(noun, noun[:-1])
            n = sum((color is None or o.color == color) and noun in ("shape", o.shape) for o in sc.objects)
            assert s.answer == str(n), s.query
        else:
            m = re.fullmatch(r"is there an? (\w+) (\w+)\?", s.query)
            yes = any(o.color == m.group(1) and o.shape == m.group(2) for o in sc.objects)
            assert s.answer == ("yes" if yes else "no")
            n_yes, n_no = n_yes + yes, n_no + (not yes)
    assert abs(n_yes - n_no) < 0.1 * (n_yes + n_no)


def test_render_substitutes_regions_and_refer_tokens():
    s = TextSample("refer_multi", "all the red shapes", "{roi0}", [], [[2, 0]], "colour")
    assert render(s, {0: 5, 2: 1}) == ("all the red shapes", "<roi><r1><r5></roi>")
    cap = TextSample("grounded_caption", "describe the image briefly.",
                     "a <p>red circle</p>{roi0} above a <p>blue star</p>{roi1}", [], [[1], [0]])
    want = "a <p>red circle</p><roi><r3></roi> above a <p>blue star</p><roi><r0></roi>"
    assert render(cap, {0: 0, 1: 3})[1] == want
    qa = TextSample("region_qa", "what is {refer0}?", "a small red star", [4], [])
    assert render(qa, {}) == ("what is <roi><refer_box></roi><refer_feat>?", "a small red star")
    with pytest.raises(KeyError):
        render(cap, {0: 0})


def test_corpus_uses_only_the_documented_vocabulary():
    texts = corpus_texts(200)
    used = {w for t in texts for w in words(t)}
    assert used <= VOCABULARY and len(used) > 50
    assert not any(c in t for t in texts for c in "{}<>")
    doc = (Path(__file__).parents[2] / "groma_ros/synthetic/VOCABULARY.md").read_text()
    doc_words = set(re.findall(r"[a-z0-9]+", doc.lower()))
    assert VOCABULARY - {str(d) for d in range(10)} <= doc_words
    assert plain_text("a <p>red star</p>{roi0} x", keep_markup=True) == "a <p>red star</p> x"


def test_relation_kind_names_the_reasoning():
    from groma_ros.synthetic.texts import relation_kind

    assert relation_kind("the leftmost red shape") == "extreme"
    assert relation_kind("the smallest circle") == "superlative"
    assert relation_kind("the square left of the green star") == "binary"
