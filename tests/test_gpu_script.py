"""``benchmarks/gpu_7b.py`` cannot run here (no GPU); its ``--tiny`` mode runs the same code path on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_tiny_mode_prints_the_json_report():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_7b.py"), "--tiny"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert [v["decode"] for v in report["variants"]] == ["dynamic", "static", "compiled"]
    assert all("error" not in v for v in report["variants"])
    v = report["variants"][0]
    assert v["variant"] == "bfloat16" and v["params"] > 0
    for key in ("first_rec_ms", "followup_rec_ms", "vision_proposer_region_ms", "prefix_prefill_ms",
                "decode_ms_per_token", "peak_rss_gib"):
        assert v[key] > 0, key
    assert v["decode_tokens"] == 16 and v["rec_completion_tokens"] == 4  # </s> suppressed: full length
    assert v["decode_step_ms"]["median"] > 0
    assert v["stages_first_ms"]["prefix_prefill_ms"] > 0


def test_gpu_script_builds_a_llama_sized_tokenizer(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        gpu_7b = pytest.importorskip("gpu_7b")
    finally:
        sys.path.pop(0)
    tok = gpu_7b.build_tokenizer(32000, tmp_path)
    assert tok.vocab_size == 32000 and len(tok) == 32000 + 114
