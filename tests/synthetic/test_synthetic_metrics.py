"""Metrics on hand-made cases, and an oracle run over generated samples that must score 100 %."""

import math

import numpy as np
import pytest

from groma_ros.synthetic.metrics import (
    EvalAccumulator,
    box_iou,
    caption_pairs,
    exact_match,
    first_region_hit,
    format_percent,
    grounded_caption_prf,
    match_boxes,
    multi_object_pr,
    normalize_answer,
    normalize_phrase,
    parse_grounded,
    proposal_recall,
    random_region_hit,
    rec_accuracy,
    rec_baselines,
    region_indices,
    vqa_accuracy,
)
from groma_ros.synthetic.scenes import generate_scene
from groma_ros.synthetic.texts import generate_samples, render

A = [0, 0, 10, 10]
B = [5, 0, 15, 10]  # IoU(A, B) = 50 / 150
C = [20, 20, 30, 30]


def test_box_iou_pairwise():
    iou = box_iou([A, B], [A, B, C])
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou, [[1, 1 / 3, 0], [1 / 3, 1, 0]])
    assert box_iou([], [A]).shape == (0, 1)
    assert box_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0  # degenerate: 0, not NaN


def test_rec_accuracy_and_baselines():
    assert rec_accuracy([A, None, C], [A, A, A]) == pytest.approx(1 / 3)
    assert random_region_hit([A, C, C], A) == pytest.approx(1 / 3) and first_region_hit([A, C, C], A) == 1
    assert random_region_hit([C, A], A) == 0.5 and first_region_hit([C, A], A) == 0
    assert random_region_hit([], A) == 0 and first_region_hit([], A) == 0
    assert rec_baselines([[A, C, C], [C, A]], [A, A]) == {"random_region": pytest.approx(5 / 12),
                                                          "first_region": 0.5}


def test_proposal_recall():
    assert proposal_recall([[A, C], [B]], [[A, B, C], [A]]) == pytest.approx(2 / 4)
    assert proposal_recall([[]], [[A]]) == 0


def test_multi_object_matching_is_one_to_one():
    assert match_boxes([A, A], [A]) == [(0, 0)]
    assert multi_object_pr([[A, A, C]], [[A, C, B]]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    p, r = multi_object_pr([[]], [[A]])
    assert math.isnan(p) and r == 0


def test_grounded_caption_parsing_and_f1():
    text = "a <p>small red circle</p><roi><r1></roi> above a <p> blue stars </p> <roi> <r0> <r7> </roi>"
    assert parse_grounded(text) == [("small red circle", [1]), ("blue stars", [0, 7])]
    pairs = caption_pairs(text, [C, A])  # r7 names no kept region: dropped
    assert [p for p, _ in pairs] == ["small red circle", "blue stars"]
    assert normalize_phrase("a Small red circles") == "red circle"
    gt = [("red circle", A), ("blue star", C)]
    assert grounded_caption_prf([pairs], [gt]) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    wrong = [("green circle", A), ("blue star", C), ("blue star", C)]  # colour wrong; duplicate counts once
    p, r, f = grounded_caption_prf([wrong], [gt])
    assert (p, r) == (pytest.approx(1 / 3), pytest.approx(1 / 2)) and f == pytest.approx(0.4)
    assert grounded_caption_prf([[]], [gt]) == (0.0, 0.0, 0.0)


def test_answers_normalised():
    assert normalize_answer(" Two. ") == "2"
    assert normalize_answer("A small Yellow triangle.") == "a small yellow triangle"
    assert exact_match(["yes", "no"], ["Yes.", "yes"]) == 0.5
    assert vqa_accuracy(["3</s>"], ["3"]) == 1
    assert region_indices("<roi><r2><r9></roi>", num_regions=5) == [2]


def test_table_prints_baselines_next_to_rec():
    acc = EvalAccumulator()
    acc.add_rec("attribute", A, A, [C, A])
    acc.add_rec("relation", C, A, [A])
    s = acc.summary()
    assert s["rec"] == 0.5 and s["rec_attribute"] == 1 and s["rec_relation"] == 0
    assert s["rec_random_region"] == pytest.approx(0.75) and s["rec_first_region"] == 0.5
    table = acc.table()
    assert "random r" in table and "<r0>" in table and "REC Acc@0.5 (relation)" in table
    row = next(line for line in table.splitlines() if line.startswith("REC Acc@0.5 (all)"))
    assert row.split()[-2:] == ["75.0%", "50.0%"]


def test_oracle_predictions_score_100_percent():
    """Render GT answers with shuffled kept regions, parse them back: every metric must be perfect."""
    acc = EvalAccumulator()
    rng = np.random.default_rng(0)
    for seed in range(40):
        sc = generate_scene(seed)
        n = len(sc.objects)
        perm = rng.permutation(n + 2)[:n]  # object i -> region perm[i]; two distractor slots
        kept = np.zeros((n + 2, 4))
        kept[perm] = sc.boxes
        kept[[k for k in range(n + 2) if k not in perm]] = [0, 0, 1, 1]
        mapping = {i: int(perm[i]) for i in range(n)}
        acc.add_proposals(kept, sc.boxes)
        for s in generate_samples(sc):
            _, answer = render(s, mapping)
            if s.task == "refer":
                acc.add_rec(s.kind, kept[region_indices(answer)[0]], sc.boxes[s.answer_objects[0][0]], kept)
            elif s.task == "refer_multi":
                acc.add_multi(kept[region_indices(answer)], sc.boxes[s.answer_objects[0]])
            elif s.task == "grounded_caption":
                phrases = [p for p, _ in parse_grounded(answer)]
                gt = [(p, sc.boxes[o[0]]) for p, o in zip(phrases, s.answer_objects, strict=True)]
                acc.add_caption(caption_pairs(answer, kept), gt)
            else:
                acc.add_answer(s.task, answer, s.answer, s.kind)
    s = acc.summary()
    for key in ("proposal_recall", "rec", "rec_attribute", "rec_relation", "multi_precision", "multi_recall",
                "caption_f1", "region_qa", "vqa"):
        assert s[key] == 1.0, key
    assert s["rec_random_region"] < 0.5
    print("\n" + acc.table())


def test_a_value_just_below_its_target_never_prints_as_the_target():
    assert format_percent(0.8996, 0.9) == "89.96%"
    assert format_percent(0.8996) == "90.0%" and format_percent(0.9, 0.9) == "90.0%"
    assert format_percent(0.879, 0.9) == "87.9%" and format_percent(float("nan")) == "   -"
