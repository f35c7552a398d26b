"""The model card renders from the run logs: recipe, both kinds of continuation, and the evaluation tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from groma_ros.training.model_card import write_card

SHIPPED = Path(__file__).resolve().parents[2] / "groma_ros" / "assets" / "default_model"


def _log(run: Path, records: list[dict], cmd: str) -> Path:
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "cmd.sh").write_text(cmd + "\n")
    return run


def test_card_describes_perception_and_language_continuations(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "eval.json"):
        shutil.copy(SHIPPED / name, model / name)
    base = _log(tmp_path / "base", [{"time": "10:00:00", "stage": 1, "step": 20, "loss": 1.0},
                                    {"time": "10:28:00", "stage": 1, "step": 3000, "loss": 0.5}], "python -m x")
    attrs = {"color": 1.0, "shape": 0.975, "size": 1.0, "shape_small": 0.93}
    perception = _log(tmp_path / "p1", [
        {"time": "11:00:00", "stage": 1, "start_step": 0, "init": "runs/base/stage1/ckpt.pt",
         "config": {"batch_size": 8, "lr": 3e-4, "loss_attr": 2.0}},
        {"time": "11:30:00", "stage": 1, "step": 4000, "final_eval": {"recall@0.5": 0.999, "kept_per_image": 3.6,
                                                                      "attributes": attrs}}], "python -m p1")
    language = _log(tmp_path / "s2", [
        {"time": "12:00:00", "stage": 2, "start_step": 0, "device": "cpu", "init": "runs/x/stage2/ckpt.pt",
         "perception": "runs/p1/stage1/ckpt.pt", "config": {"batch_size": 16, "lr": 2e-4, "num_scenes": 4000}},
        {"time": "13:00:00", "stage": 2, "step": 5000, "eval": {"score": 0.9, "rec_attribute": 0.97,
                                                                "rec_relation": 0.9, "caption_f1": 0.91,
                                                                "region_qa": 0.98}}], "python -m s2")
    card = write_card(base, model, notes="NOTES HERE", continuations=[perception, language])
    assert "3000 steps x batch 8, 28 min" in card  # the base run's stage 1
    assert "**`p1`** (stage 1, perception, from `runs/base/stage1/ckpt.pt`): 4000 steps x batch 8, 30 min" in card
    assert '`{"lr": 0.0003, "loss_attr": 2.0}`' in card  # only the fields that differ from Stage1Config
    assert "shape 97.5 % (small shapes 93.0 %)" in card and "python -m p1" in card
    assert "**`s2`** on `cpu`, perception from `runs/p1/stage1/ckpt.pt`: 5000 steps x batch 16" in card
    assert "caption F1 0.91" in card and '"lr": 0.0002' in card and "num_scenes" not in card.split("`s2`")[1]
    assert "NOTES HERE" in card and (model / "MODEL_CARD.md").read_text() == card


def test_update_keeps_the_shipped_card_and_adds_the_new_run(tmp_path):
    """``--update``: new tables and targets line from eval.json, the new run's paragraph after the listed ones and
    the notes before the previous "what changed" sections; the rest of the shipped card stays as it is."""
    from groma_ros.training.model_card import update_card

    model = tmp_path / "model"
    model.mkdir()
    shipped = (SHIPPED / "MODEL_CARD.md").read_text()
    (model / "MODEL_CARD.md").write_text(shipped)
    report = json.loads((SHIPPED / "eval.json").read_text())
    report["tables"] = {"score_order": "SCORE TABLE", "shuffled": "SHUFFLED TABLE"}
    report["score_order"].update(dialogue_refer=0.93, vqa_count=0.5)
    (model / "eval.json").write_text(json.dumps(report))
    run = _log(tmp_path / "d9", [
        {"time": "12:00:00", "stage": 2, "start_step": 0, "device": "cpu", "init": "runs/d9/init.pt",
         "config": {"batch_size": 16, "lr": 2e-4, "referent_layers": [0]}},
        {"time": "12:40:00", "stage": 2, "step": 900, "eval": {"score": 0.9, "rec_attribute": 0.97,
                                                               "rec_relation": 0.9, "caption_f1": 0.95,
                                                               "region_qa": 0.98}}], "python -m d9")
    card = update_card(model, [run], notes="### What the last continuation changed, and why: DIALOGUE NOTES")
    assert "SCORE TABLE" in card and "SHUFFLED TABLE" in card and "VQA (count)" not in card.split("## Cont")[0]
    new = card.index("**`d9`** on `cpu`: 900 steps x batch 16")
    assert card.index("**`v2b`**") < new < card.index("DIALOGUE NOTES") < card.index("(session 6): existence")
    assert "second-turn referring in dialogues (93.0 %)" in card and "Counting questions are weak (50.0 %)" in card
    assert card.count("## Limitations") == 1 and card.count("**`v2b`**") == 1
    assert card.split("## Evaluation")[0] == shipped.split("## Evaluation")[0]  # recipe, curves: unchanged
    assert (model / "MODEL_CARD.md").read_text() == card
