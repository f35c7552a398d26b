"""The embedded default model: it loads in the released format and really grounds.

The quality test runs the shipped checkpoint through ``GromaEngine`` (the CLI/ROS inference path) on a fixed
slice of the held-out test split (40 scenes, at most 6 samples per task and scene, ~15 s) and requires:
floor = min(target, value measured on this slice at export) - margin, margin 5 points (3 for proposal
recall, 0.05 for caption F1). Target-based (the model reaches the target on this slice): proposal recall,
REC attribute, REC relation (measured 91.0 %), grounded-caption F1 (measured 0.976), region QA, second-turn REC in
dialogues (10 test scenes, measured 100 %). Measured-based: multi-object P/R have no target (measured 97.5 % /
88.7 %), nor do existence questions ("is there a red circle?", every one of 40 test scenes, measured 92.3 %; a model
that always says "yes" has 50 %).
REC must also beat both baselines (random kept region, always <r0>) by 25 points.
"""

from __future__ import annotations

import json
import math

import pytest

from groma_ros.engine.engine import GromaEngine
from groma_ros.engine.loading import DEFAULT_MODEL_DIR
from groma_ros.model.modeling_groma import GromaForConditionalGeneration

SCENES = 40
BASELINE_MARGIN = 0.25  # REC accuracy must exceed the better baseline by this much (absolute)
# keys as in EvalAccumulator.summary(); measured with the shipped checkpoint on this slice
FLOORS = {
    "proposal_recall": 0.95,  # target 0.98 - 0.03 (measured 1.00)
    "rec_attribute": 0.90,  # target 0.95 - 0.05 (measured 1.00)
    "rec_relation": 0.80,  # target 0.85 - 0.05 (measured 0.910)
    "caption_f1": 0.85,  # target 0.90 - 0.05 (measured 0.976)
    "region_qa": 0.85,  # target 0.90 - 0.05 (measured 1.00)
    "multi_precision": 0.92,  # measured 0.975 - 0.05, rounded down (no target)
    "multi_recall": 0.83,  # measured 0.887 - 0.05, rounded down (no target)
}
EXISTS_FLOOR = 0.87  # measured 0.923 - 0.05, rounded down (no target); always "yes" scores 0.50
DIALOGUE_FLOOR = 0.85  # second-turn REC on 10 test scenes: target 0.90 - 0.05 (measured 1.00, n = 17)


def test_default_model_loads_in_released_format():
    assert (DEFAULT_MODEL_DIR / "config.json").is_file()
    model = GromaForConditionalGeneration.from_pretrained(DEFAULT_MODEL_DIR)
    cfg = model.config
    assert cfg.region_box_convention == "corrected"
    assert cfg.num_new_token == 114
    n = sum(p.numel() for p in model.parameters())
    assert 2e6 < n < 8e6
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.iterdir())
    assert size < 20 << 20
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    assert "python -m groma_ros.train" in card
    report = json.loads((DEFAULT_MODEL_DIR / "eval.json").read_text())
    assert report["split"] == "test"


@pytest.fixture(scope="module")
def engine():
    return GromaEngine.from_pretrained(None, num_threads=1, progress=False)


SINGLE_TURN_TASKS = ("refer", "refer_multi", "grounded_caption", "region_qa", "vqa")


@pytest.fixture(scope="module")
def summary(engine):
    from groma_ros.evaluate import evaluate

    return evaluate(engine, "test", SCENES, tasks=SINGLE_TURN_TASKS, max_per_task=6, progress=False).summary()


def test_dialogues_run_as_engine_conversations(engine):
    """The dialogue evaluation holds real conversations: the first turns (attribute REC) are right and the
    follow-ups that refer back ("the other one", "the one left of it", "and the bigger one?") find their object
    (93.5 % on 200 test scenes; 69.4 % when each follow-up is asked alone, without the conversation)."""
    from groma_ros.evaluate import evaluate

    s = evaluate(engine, "test", 10, tasks=("dialogue",), progress=False).summary()
    assert s["dialogue_refer_n"] >= 15 and s["dialogue_first"] >= 0.9, s
    assert s["dialogue_refer"] >= DIALOGUE_FLOOR, s
    assert 0.0 <= s["dialogue_refer_alone"] <= 1.0 and len(engine.conversations) == 0
    # a second evaluation on the same engine (as ``--shuffled`` runs) holds its dialogues under new ids
    again = evaluate(engine, "test", 3, tasks=("dialogue",), shuffled=True, progress=False)
    assert sum(len(v) for (turn, _), v in again.dialogue.items() if turn == 2) >= 3, again.dialogue


@pytest.mark.parametrize("key", sorted(FLOORS))
def test_default_model_reaches_floor(summary, key):
    assert not math.isnan(summary[key])
    assert summary[key] >= FLOORS[key], f"{key} = {summary[key]:.3f} < {FLOORS[key]}"


def test_default_model_answers_existence_questions(engine):
    """Both answers occur: half of the questions ask about a colour+shape that is absent (a near miss)."""
    from groma_ros.evaluate import evaluate

    acc = evaluate(engine, "test", SCENES, tasks=("vqa",), progress=False)
    exists = acc.qa["vqa"]["exists"]
    assert len(exists) >= 200
    assert sum(exists) / len(exists) >= EXISTS_FLOOR, f"existence accuracy {sum(exists) / len(exists):.3f}"


@pytest.mark.parametrize("kind", ["rec", "rec_attribute", "rec_relation"])
def test_rec_beats_both_baselines(summary, kind):
    best_baseline = max(summary[f"{kind}_random_region"], summary[f"{kind}_first_region"])
    assert summary[kind] >= best_baseline + BASELINE_MARGIN, summary


CLI_CASES = 5
CLI_MIN_CORRECT = 4


def _cli_cases() -> list[tuple[int, str, int]]:
    """(test seed, expression, object) for the first attribute expressions of simple test scenes."""
    from groma_ros.synthetic.scenes import generate_scene, split_seeds
    from groma_ros.synthetic.texts import generate_samples

    cases = []
    for seed in split_seeds("test", 200):
        scene = generate_scene(seed)
        if len(scene.objects) > 3:
            continue
        s = next((s for s in generate_samples(scene) if s.task == "refer" and s.kind == "attribute"), None)
        if s is not None:
            cases.append((seed, s.query, s.answer_objects[0][0]))
        if len(cases) == CLI_CASES:
            return cases
    return cases


def test_cli_grounds_referring_expressions(tmp_path, capsys):
    """``groma ask IMAGE "the ..." --json`` with the default model returns the referred shape's box."""
    import cv2

    from groma_ros.cli import main
    from groma_ros.synthetic.metrics import box_iou
    from groma_ros.synthetic.scenes import generate_scene

    correct = []
    for seed, expr, obj in _cli_cases():
        scene = generate_scene(seed)
        png = tmp_path / f"{seed}.png"
        cv2.imwrite(str(png), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        capsys.readouterr()
        assert main(["ask", str(png), expr, "--task", "refer", "--json", "--quiet", "--threads", "1"]) == 0
        out = json.loads(capsys.readouterr().out)
        boxes = [b for item in out["items"] for b in item["boxes"]]
        correct.append(bool(boxes) and box_iou(boxes[0], scene.boxes[obj])[0, 0] >= 0.5)
    assert sum(correct) >= CLI_MIN_CORRECT, correct


def _dialogue_scene():
    """The first test scene with a dialogue whose second turn points at another object, and that dialogue."""
    from groma_ros.synthetic.dialogue import generate_dialogues
    from groma_ros.synthetic.scenes import generate_scene, split_seeds

    for seed in split_seeds("test", 200):
        scene = generate_scene(seed)
        for d in generate_dialogues(scene):
            if d.turns[1].task == "refer" and d.turns[1].kind == "other":
                return scene, d
    raise AssertionError("no dialogue")


def test_conversation_turns_equal_from_scratch_and_the_training_encoding(engine):
    """With answers that end in </s> (the trained model stops): turn 2 on the conversation's KV equals a
    from-scratch forward of the whole prompt, whose ids are the training encoding of the same dialogue."""
    import torch

    from groma_ros.engine.preprocess import preprocess
    from groma_ros.training.data import PromptEncoder, engine_query

    scene, dialogue = _dialogue_scene()
    traces = []
    for i, turn in enumerate(dialogue.turns[:2]):
        task, query, _ = engine_query(turn)
        answer, trace = engine._ask(scene.image if i == 0 else None, query, task=task, keep_logits=True,
                                    conversation_id="scratch")
        traces.append((answer, trace))
    engine.conversations.end("scratch")
    first, (answer, trace) = traces[0][1], traces[1]
    eos = engine.tokenizer.eos_id
    message = engine.tokenizer.encode(engine.prompts.build(answer.task, answer.query).suffix, add_bos=False)
    assert first.generation.stopped_on_eos and trace.prefilled == len(message) + 1  # the first answer's </s>
    gen = trace.generation
    ref = engine.model.generate_greedy(preprocess(scene.image, engine.model.config.image_size),
                                       torch.tensor([trace.prompt_ids]), max_new_tokens=len(gen.step_logits),
                                       eos_token_id=eos)
    assert gen.token_ids == [t for t in ref.tokens.tolist() if t != eos]
    torch.testing.assert_close(torch.stack(gen.step_logits), ref.step_logits.float(), atol=1e-4, rtol=0)
    # the training side encodes this dialogue (with the regions the engine kept) to exactly these ids
    kept = [r.box for r in answer.regions]
    from groma_ros.synthetic.metrics import box_iou

    iou = box_iou(scene.boxes, kept)
    object_to_region = {j: int(iou[j].argmax()) for j in range(len(scene.objects)) if iou[j].max() >= 0.5}
    encoded = PromptEncoder(engine.tokenizer).encode_dialogue(list(dialogue.turns[:2]), object_to_region)
    model_turn1 = first.generation.token_ids + [eos]
    assert encoded.ids[:len(first.prompt_ids) + len(model_turn1)] == first.prompt_ids + model_turn1
    assert encoded.ids[:encoded.answers[1][0]] == trace.prompt_ids
