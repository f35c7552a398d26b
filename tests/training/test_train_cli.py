"""The staged recipe runs end to end (a few steps each) and its export loads through the engine."""

from __future__ import annotations

import json

from groma_ros.engine.engine import GromaEngine
from groma_ros.train import main


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
