"""Evaluate a Groma checkpoint on synthetic scenes through ``GromaEngine`` (the shipped inference path).

``python -m groma_ros.evaluate [--model DIR] [--split test] [--limit 40] [--shuffled] [--json out.json]``

Metrics: proposal recall@0.5 of the kept regions; REC Acc@0.5 overall / attribute / relation, each
printed next to two baselines (a random kept region, always ``<r0>``: kept regions are in score order, so a
constant answer can look good); multi-object precision/recall; grounded-caption phrase-box F1; region-QA
exact match; VQA accuracy; dialogues (``synthetic.dialogue``, held as engine conversations): referring
accuracy of the second turn, which refers back to the first ("the other one"), per follow-up kind, the
attribute follow-ups ("what colour is it?") and the third turns. ``--shuffled`` permutes the kept regions
(seeded) before the LLM sees them, as the original Groma did with its unseeded ``randperm``: a model that learned
"<r0> is the answer" fails there.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from groma_ros.engine.engine import GromaEngine
from groma_ros.engine.types import Answer
from groma_ros.synthetic.dialogue import Dialogue, generate_dialogues
from groma_ros.synthetic.metrics import EvalAccumulator
from groma_ros.synthetic.scenes import Scene, generate_scene, split_seeds
from groma_ros.synthetic.texts import TextSample, generate_samples, relation_kind
from groma_ros.training.data import engine_query

ALL_TASKS = ("refer", "refer_multi", "grounded_caption", "region_qa", "vqa", "dialogue")
_CAPTION_PART = re.compile(r"<p>(.*?)</p>\{roi(\d+)\}")


def shuffle_regions(engine: GromaEngine, seed: int) -> None:
    """Make the engine's region selection return the kept regions in a seeded random order."""
    model = engine.model
    original = type(model).select_regions.__get__(model)
    gen = torch.Generator().manual_seed(seed)

    def select(boxes, scores, user_boxes=None, order=None):
        n = len(original(boxes, scores, user_boxes).boxes)
        return original(boxes, scores, user_boxes, order=torch.randperm(n, generator=gen))

    model.select_regions = select


def unshuffle_regions(engine: GromaEngine) -> None:
    engine.model.__dict__.pop("select_regions", None)


def _item_boxes(answer: Answer) -> list[tuple[str, tuple[float, ...]]]:
    return [(item.phrase, r.box) for item in answer.items for r in item.regions]


def _gt_caption(sample: TextSample, boxes: np.ndarray) -> list[tuple[str, np.ndarray]]:
    return [(phrase, boxes[o]) for phrase, k in _CAPTION_PART.findall(sample.answer)
            for o in sample.answer_objects[int(k)]]


def evaluate_dialogue(engine: GromaEngine, perception, dialogue: Dialogue, gt: np.ndarray, acc: EvalAccumulator,
                      conversation_id: str) -> None:
    """Hold ``dialogue`` as one engine conversation (each turn sees the model's own earlier answers) and score
    every turn: a referring turn by its first box, a question by exact match. The second turn is also asked
    alone, without the conversation: the baseline a model that ignores the history gets (a follow-up such as
    "the one left of it" often names the object furthest that way, which needs no referent)."""
    try:
        for i, turn in enumerate(dialogue.turns):
            task, query, _ = engine_query(turn)
            answer = engine.ask(perception if i == 0 else None, query, task=task, conversation_id=conversation_id)
            if turn.task == "refer":
                pairs = _item_boxes(answer)
                acc.add_dialogue(i + 1, turn.kind, pairs[0][1] if pairs else None, gt[turn.answer_objects[0][0]])
                if i == 1:
                    alone = _item_boxes(engine.ask(perception, query, task=task))
                    acc.add_dialogue(0, turn.kind, alone[0][1] if alone else None, gt[turn.answer_objects[0][0]])
            else:
                acc.add_dialogue(i + 1, turn.kind, answer.text, turn.answer)
    finally:
        engine.conversations.end(conversation_id)


def evaluate_scene(engine: GromaEngine, scene: Scene, acc: EvalAccumulator, tasks: Iterable[str] = ALL_TASKS,
                   max_per_task: int | None = None, region_qa_kinds: Iterable[str] | None = None,
                   conversation_prefix: str = "eval") -> None:
    """Ask every (or the first ``max_per_task``) sample of ``tasks`` about ``scene`` and record the results."""
    tasks = set(tasks)
    perception = engine.perceive(scene.image)
    kept = np.array([r.box for r in perception.base.regions], dtype=np.float64).reshape(-1, 4)
    gt = scene.boxes.astype(np.float64)
    acc.add_proposals(kept, gt)
    counts: dict[str, int] = {}
    for sample in generate_samples(scene):
        if sample.task not in tasks:
            continue
        if region_qa_kinds is not None and sample.task == "region_qa" and sample.kind not in region_qa_kinds:
            continue
        if max_per_task is not None and counts.get(sample.task, 0) >= max_per_task:
            continue
        counts[sample.task] = counts.get(sample.task, 0) + 1
        task, query, _ = engine_query(sample)
        boxes = [tuple(gt[o]) for o in sample.query_objects]
        answer = engine.ask(perception, query, task=task, boxes=boxes)
        if sample.task == "refer":
            pairs = _item_boxes(answer)
            detail = f"relation_{relation_kind(sample.query)}" if sample.kind == "relation" else ""
            acc.add_rec(sample.kind, pairs[0][1] if pairs else None, gt[sample.answer_objects[0][0]], kept,
                        detail)
        elif sample.task == "refer_multi":
            acc.add_multi([b for _, b in _item_boxes(answer)], gt[sample.answer_objects[0]])
        elif sample.task == "grounded_caption":
            acc.add_caption(_item_boxes(answer), _gt_caption(sample, gt))
        else:
            acc.add_answer(sample.task, answer.text, sample.answer, sample.kind)
    if "dialogue" in tasks:
        for i, dialogue in enumerate(generate_dialogues(scene)[:max_per_task]):
            evaluate_dialogue(engine, perception, dialogue, gt, acc, f"{conversation_prefix}-{scene.seed}-{i}")


_EVALUATIONS = itertools.count()


def evaluate(engine: GromaEngine, split: str = "test", limit: int = 40, shuffled: bool = False,
             tasks: Iterable[str] = ALL_TASKS, max_per_task: int | None = None,
             region_qa_kinds: Iterable[str] | None = None, progress: bool = True, seed: int = 0) -> EvalAccumulator:
    """Evaluate the first ``limit`` scenes of ``split``; restores the engine's region order afterwards."""
    acc = EvalAccumulator()
    # an ended conversation id stays ended in the engine: every evaluation holds its dialogues under new ids
    prefix = f"eval{next(_EVALUATIONS)}"
    if shuffled:
        shuffle_regions(engine, seed)
    try:
        for s in tqdm(split_seeds(split, limit), desc=f"eval {split}", disable=not progress, mininterval=5):
            evaluate_scene(engine, generate_scene(s), acc, tasks, max_per_task, region_qa_kinds, prefix)
    finally:
        if shuffled:
            unshuffle_regions(engine)
        engine.frames.clear()
    return acc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=200, help="number of scenes")
    p.add_argument("--shuffled", action="store_true", help="also evaluate with shuffled region order")
    p.add_argument("--tasks", default=",".join(ALL_TASKS))
    p.add_argument("--max-per-task", type=int, default=None, help="samples per task and scene")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = p.parse_args(argv)
    engine = GromaEngine.from_pretrained(args.model, num_threads=args.threads, progress=False)
    tasks = [t for t in args.tasks.split(",") if t]
    results: dict[str, object] = {}
    tables: dict[str, str] = {}
    for shuffled in (False, True) if args.shuffled else (False,):
        t0 = time.perf_counter()
        acc = evaluate(engine, args.split, args.limit, shuffled, tasks, args.max_per_task)
        name = "shuffled" if shuffled else "score_order"
        print(f"\n== {args.split} split, {args.limit} scenes, region order: {name} "
              f"({time.perf_counter() - t0:.0f} s) ==")
        acc.print_table()
        results[name] = acc.summary()
        tables[name] = acc.table()
        results[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
    if args.json is not None:
        report = {"split": args.split, "scenes": args.limit, "max_per_task": args.max_per_task,
                  "model": str(args.model or "default"), **results, "tables": tables}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
