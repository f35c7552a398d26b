"""The periodic stage-2 evaluation that picks the checkpoint to export (val split, through the engine)."""

from __future__ import annotations

import math

from groma_ros.engine.engine import GromaEngine
from groma_ros.model.modeling_groma import GromaForConditionalGeneration


def quick_eval(model: GromaForConditionalGeneration, tokenizer, n_scenes: int = 24,
               dialogue: bool = False) -> dict[str, float]:
    """REC, caption and region-QA ("what is") on ``n_scenes`` val scenes, with ``dialogue`` also the second-turn
    referring accuracy of dialogues; ``score`` is their mean."""
    from groma_ros.evaluate import evaluate

    engine = GromaEngine(model, tokenizer, cache_frames=1)
    tasks = ("refer", "grounded_caption", "region_qa", "vqa", *(("dialogue",) if dialogue else ()))
    acc = evaluate(engine, "val", n_scenes, tasks=tasks, max_per_task=4, region_qa_kinds=("what",), progress=False)
    s = acc.summary()
    keys = ("rec_attribute", "rec_relation", "caption_f1", "region_qa", *(("dialogue_refer",) if dialogue else ()))
    out = {k: round(float(s.get(k, float("nan"))), 4) for k in (*keys, "rec", "rec_first_region",
                                                                 "rec_random_region", "vqa", "proposal_recall")}
    vals = [out[k] for k in keys if not math.isnan(out[k])]
    out["score"] = round(sum(vals) / max(1, len(vals)), 4)
    return out
