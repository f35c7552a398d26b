"""``groma`` CLI end to end on a PNG written here (one real subprocess, the rest in-process)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from groma_ros import cli
from groma_ros.engine import loading

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
    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    assert cli.main(["detect", str(png), "--threads", "1"]) == 3
    err = capsys.readouterr().err
    assert "embedded default model is not installed" in err and "model.safetensors" in err


def _chat(model_dir, png, *extra, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "groma_ros.cli", "chat", str(png), "--model", str(model_dir), "--threads", "1",
         "--quiet", *extra], input=stdin, capture_output=True, text=True, timeout=180,
    )


def test_chat_script_json_lines_one_conversation(model_dir, png, tmp_path):
    script = tmp_path / "turns.txt"
    script.write_text("where is the red mug?\n\n# a comment line\nwhat colour is it?\nthe other one\n")
    proc = _chat(model_dir, png, "--script", str(script), "--json", "--save", str(tmp_path / "turn.png"),
                 "--max-new-tokens", "3")
    assert proc.returncode == 0, proc.stderr
    turns = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [t["turn"] for t in turns] == [1, 2, 3]
    assert len({t["conversation_id"] for t in turns}) == 1 and turns[0]["conversation_id"]
    assert [t["query"] for t in turns] == ["where is the red mug?", "what colour is it?", "the other one"]
    assert [t["task"] for t in turns] == ["refer", "vqa", "refer"]
    for before, after in zip(turns, turns[1:], strict=False):  # each turn sees the previous ones
        assert after["tokens"]["prompt"] > before["tokens"]["prompt"] + before["tokens"]["completion"]
    for k in (1, 2, 3):
        assert cv2.imread(str(tmp_path / f"turn_{k}.png")).shape == (60, 80, 3)


def test_chat_reads_typed_turns_and_starts_over_on_new(model_dir, png):
    proc = _chat(model_dir, png, "--max-new-tokens", "2",
                 stdin="where is the mug?\nwhat colour is it?\n/new\nis it big?\n/quit\nnever asked\n")
    assert proc.returncode == 0, proc.stderr
    heads = [line for line in proc.stdout.splitlines() if line.startswith("[turn")]
    assert [h.split("]")[0] for h in heads] == ["[turn 1", "[turn 2", "[turn 1"]
    assert "task refer" in proc.stdout and "task vqa" in proc.stdout


def test_chat_script_errors(model_dir, png, tmp_path, capsys):
    script = tmp_path / "long.txt"
    script.write_text("where is the mug?\nwhat colour is it?\n")
    proc = _chat(model_dir, png, "--script", str(script), "--max-new-tokens", "5000")
    assert proc.returncode == 2 and "max_tokens" in proc.stderr and proc.stdout == ""
    code = cli.main(["chat", str(png), "--script", str(tmp_path / "missing.txt"), "--model", "/nonexistent/model"])
    assert code == 2 and "cannot read the script" in capsys.readouterr().err  # before the model is looked for
