"""``groma`` CLI end to end on a PNG written here (one real subprocess, the rest in-process)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from groma_ros import cli
from groma_ros.engine import engine as engine_mod

from .conftest import make_image


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(make_image(80, 60, seed=1), cv2.COLOR_RGB2BGR))
    return path


def test_ask_json_and_save_subprocess(model_dir, png, tmp_path):
    out = tmp_path / "annotated.png"
    proc = subprocess.run(
        [sys.executable, "-m", "groma_ros.cli", "ask", str(png), "where is the red mug?", "--model", str(model_dir),
         "--json", "--save", str(out), "--threads", "1", "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["task"] == "refer" and data["query"] == "where is the red mug?"
    assert data["image_size"] == [80, 60]
    assert set(data) >= {"text", "raw_text", "items", "timings", "tokens"}
    assert data["tokens"]["prompt"] > 0 and 1 <= data["tokens"]["completion"] <= 4
    for item in data["items"]:
        assert {"phrase", "span", "boxes", "scores"} <= set(item)
    saved = cv2.imread(str(out))
    assert saved is not None and saved.shape == (60, 80, 3)


def test_detect_human_output_and_save(model_dir, png, tmp_path, capsys):
    out = tmp_path / "det.png"
    code = cli.main(["detect", str(png), "--model", str(model_dir), "--save", str(out), "--quiet",
                     "--score-threshold", "0.0", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "objects" in captured.out and "region" in captured.out and "x1" in captured.out
    assert cv2.imread(str(out)).shape == (60, 80, 3)


def test_region_qa_json(model_dir, png, capsys):
    code = cli.main(["ask", str(png), "what is this?", "--box", "5,5,40,30", "--model", str(model_dir), "--json",
                     "--max-new-tokens", "2", "--quiet", "--threads", "1"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["task"] == "region_qa"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["ask", "{png}", "what?", "--box", "1,2,3"], 2, "4 numbers"),
        (["ask", "{png}", "what?", "--box", "90,90,99,99"], 2, "empty after clipping"),
        (["ask", "{png}", "   "], 2, "empty"),
        (["ask", "/nonexistent/x.png", "what?"], 2, "cannot read image"),
        (["ask", "{png}", "what?", "--task", "dance"], 2, "invalid choice"),
        (["detect", "{png}", "--model", "/nonexistent/model"], 3, "does not exist"),
    ],
)
def test_exit_codes(model_dir, png, capsys, argv, code, message):
    argv = [a.replace("{png}", str(png)) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(model_dir)]
    argv += ["--threads", "1", "--quiet"]
    try:
        got = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        got = exc.code
    assert got == code
    assert message in capsys.readouterr().err


def test_missing_default_model_exit_3(monkeypatch, png, tmp_path, capsys):
    monkeypatch.setattr(engine_mod, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    assert cli.main(["detect", str(png), "--threads", "1"]) == 3
    err = capsys.readouterr().err
    assert "embedded default model is not installed" in err and "model.safetensors" in err
