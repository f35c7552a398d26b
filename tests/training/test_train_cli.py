"""The staged recipe runs end to end (a few steps each) and its export loads through the engine."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from groma_ros.engine.engine import GromaEngine
from groma_ros.train import main
from groma_ros.training.export_checkpoint import export_checkpoint


def test_train_all_stages_tiny(tmp_path):
    run, export = tmp_path / "run", tmp_path / "export"
    args = ["--run-dir", str(run), "--vocab-size", "400", "--corpus-scenes", "20", "--stage1-steps", "2",
            "--stage2-steps", "2", "--stage2-scenes", "8", "--eval-scenes", "1", "--export", str(export)]
    main(args)
    assert (run / "stage1" / "ckpt.pt").is_file() and (run / "stage2" / "ckpt.pt").is_file()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == 2 and "eval" in r for r in records)
    engine = GromaEngine.from_pretrained(str(export), num_threads=1, progress=False)
    assert engine.model.config.region_box_convention == "corrected"
    main(args)  # resumes: both stages are already at their step limits

    # the last state (not the best quick-eval one) exported in the released format, as the shipped weights were
    final = tmp_path / "final"
    ckpt = torch.load(run / "stage2" / "ckpt.pt", weights_only=False)
    assert export_checkpoint(run / "stage2" / "ckpt.pt", export, final) == ckpt["step"]
    exported = GromaEngine.from_pretrained(str(final), num_threads=1, progress=False).model.state_dict()
    for name, value in ckpt["model"].items():
        assert torch.equal(exported[name].float(), value.half().float()), name


def test_stage2_warm_start_with_overrides(tmp_path, monkeypatch):
    """``--stage2-init`` continues from another run's weights; ``--stage2-set`` overrides recipe fields."""
    monkeypatch.chdir(tmp_path)  # ``--export ''`` must export nowhere, not into the working directory
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--vocab-size", "400", "--corpus-scenes", "20", "--stage2-scenes", "8", "--eval-scenes", "1",
              "--export", ""]
    main(["--run-dir", str(first), "--stage1-steps", "2", "--stage2-steps", "2", *common])
    for name in ("tokenizer", "config.json", "stage1"):  # the second run shares the first one's stage 0/1
        src = first / name
        shutil.copytree(src, second / name) if src.is_dir() else shutil.copy(src, second / name)
    overrides = {"batch_size": 4, "curriculum_steps": 0, "anchor_layers": [1], "lr": 5e-4,
                 "anchor_gather_layers": [0], "caption_order": "regions", "position_weight": 0.1,
                 "phrase_pointer_layers": [1, 2], "referent_layers": [0],
                 "task_weights": {"refer": 0.2, "refer_relation": 0.2, "grounded_caption": 0.3, "vqa": 0.1,
                                  "dialogue": 0.2}}
    main(["--run-dir", str(second), "--stages", "2", "--stage2-steps", "3", "--stage2-init",
          str(first / "stage2" / "best.pt"), "--stage2-set", json.dumps(overrides), *common])
    records = [json.loads(line) for line in (second / "log.jsonl").read_text().splitlines()]
    start = next(r for r in records if "config" in r)
    assert start["init"].endswith("best.pt") and start["config"]["anchor_layers"] == [1]
    assert start["config"]["batch_size"] == 4 and start["config"]["curriculum_steps"] == 0
    assert start["config"]["caption_order"] == "regions" and start["config"]["anchor_gather_layers"] == [0]
    assert start["config"]["phrase_pointer_layers"] == [1, 2] and start["config"]["referent_layers"] == [0]
    assert start["config"]["task_weights"]["dialogue"] == 0.2
    assert torch.load(second / "stage2" / "ckpt.pt", weights_only=False)["step"] == 3
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(SystemExit, match="unknown Stage2Config fields"):
        main(["--run-dir", str(second), "--stages", "2", "--stage2-set", '{"batch": 4}', *common])
    with pytest.raises(SystemExit, match="unknown task_weights keys"):
        main(["--run-dir", str(second), "--stages", "2", "--stage2-set", '{"task_weights": {"refer_rel": 1}}',
              *common])



def test_perception_continuation_then_stage2_on_it(tmp_path, monkeypatch):
    """``--stage1-init``/``--stage1-set`` continue another run's stage 1 (fresh schedule, unseen scenes);
    ``--stage2-perception`` puts that perception under an already trained LLM, and nothing else of it."""
    from groma_ros.training.stage1 import perception_state

    monkeypatch.chdir(tmp_path)
    first, longer, joined = tmp_path / "first", tmp_path / "longer", tmp_path / "joined"
    common = ["--vocab-size", "400", "--corpus-scenes", "20", "--stage2-scenes", "8", "--eval-scenes", "1",
              "--export", ""]
    main(["--run-dir", str(first), "--stage1-steps", "2", "--stage2-steps", "2", *common])
    for run in (longer, joined):
        run.mkdir()
        shutil.copytree(first / "tokenizer", run / "tokenizer")
        shutil.copy(first / "config.json", run / "config.json")
    main(["--run-dir", str(longer), "--stages", "1", "--stage1-steps", "3", "--stage1-init",
          str(first / "stage1" / "ckpt.pt"), "--stage1-set", '{"lr": 0.01, "region_aux_images": 2}', *common])
    old = torch.load(first / "stage1" / "ckpt.pt", weights_only=False)
    new = torch.load(longer / "stage1" / "ckpt.pt", weights_only=False)
    assert new["step"] == 3 and new["scene_index"] == old["scene_index"] + 3 * 8  # scenes the first run never saw
    assert new["config"]["region_aux_images"] == 2 and new["config"]["lr"] == 0.01
    records = [json.loads(line) for line in (longer / "log.jsonl").read_text().splitlines()]
    assert next(r for r in records if "config" in r)["init"].endswith("ckpt.pt")
    final = next(r for r in records if "final_eval" in r)["final_eval"]["attributes"]
    assert set(final) == {"color", "shape", "size", "shape_small"} and all(0 <= v <= 1 for v in final.values())
    moved = perception_state(new["model"])
    assert moved and not any(k.startswith("llm.") or ".updims." in k for k in moved)
    assert any(not torch.equal(v, old["model"][k]) for k, v in moved.items())  # it trained

    with pytest.raises(SystemExit):
        main(["--run-dir", str(joined), "--stages", "2", "--stage2-perception", str(longer / "stage1" / "ckpt.pt"),
              *common])
    best = torch.load(first / "stage2" / "best.pt", weights_only=False)
    main(["--run-dir", str(joined), "--stages", "2", "--stage2-steps", "0", "--stage2-init",
          str(first / "stage2" / "best.pt"), "--stage2-perception", str(longer / "stage1" / "ckpt.pt"), *common])
    joined_state = torch.load(joined / "stage2" / "ckpt.pt", weights_only=False)["model"]
    for name, value in joined_state.items():
        source = moved if name in moved else best
        assert torch.equal(value, source[name]), name


def test_stage2_batch_sampling_refuses_tasks_it_cannot_sample():
    """A task that never yields a sequence (its objects are never kept) is an error, not an endless loop."""
    import random

    from groma_ros.training.recipe import Stage2Config
    from groma_ros.training.stage2 import sample_batch

    s2 = Stage2Config(batch_size=4, scenes_per_batch=2, task_weights={"refer_relation": 1.0})
    tried: list[str] = []
    with pytest.raises(RuntimeError, match="0 of 4 sequences after"):
        sample_batch(["scene"], s2, random.Random(0), lambda scene, task: tried.append(task))
    assert set(tried) == {"refer_relation"} and len(tried) > 100
    made = sample_batch(["a", "b"], s2, random.Random(0), lambda scene, task: (scene, task))
    assert len(made) == 4 and {t for _, t in made} == {"refer_relation"}
