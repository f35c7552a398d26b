"""Loading a model directory through the engine is safe: no code runs, problems come in one error, no network.

``test_checkpoint.py`` already covers the model-level loader (pickled ``print`` refused, non-tensor entries,
missing/extra/shape one at a time). Here: the user-facing ``GromaEngine.from_pretrained`` path, a payload
whose side effect would be visible, sharded ``.bin`` files, all key problems reported together, and that
loading never touches the network (sockets blocked, HF offline forced).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from groma_ros.engine import GromaEngine
from groma_ros.engine.errors import ModelLoadError
from tests.support.models import make_tiny_model_dir

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def _copy_without_weights(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix not in (".bin", ".safetensors"):
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


class _Payload:
    """Unpickling this would create a file: proof that no pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_pickled_code_is_refused_through_the_engine_and_never_runs(model_dir, tmp_path, layout):
    marker = tmp_path / "pwned"
    d = _copy_without_weights(model_dir, tmp_path / "evil")
    state = torch.load(model_dir / "pytorch_model.bin", weights_only=True)
    evil = {"llm.lm_head.weight": _Payload(marker)}
    if layout == "single":
        torch.save({**state, **evil}, d / "pytorch_model.bin")  # a zip torch file with one object inside
        bad = "pytorch_model.bin"
    else:
        keys = sorted(state)
        torch.save({k: state[k] for k in keys}, d / "pytorch_model-00001-of-00002.bin")
        with open(d / "pytorch_model-00002-of-00002.bin", "wb") as f:
            pickle.dump(evil, f, protocol=2)  # a legacy raw pickle
        weight_map = {k: "pytorch_model-00001-of-00002.bin" for k in keys}
        weight_map["llm.lm_head.weight"] = "pytorch_model-00002-of-00002.bin"
        (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
        bad = "pytorch_model-00002-of-00002.bin"
    with pytest.raises(ModelLoadError) as err:
        GromaEngine.from_pretrained(str(d), progress=False)
    assert "refusing to load" in str(err.value) and bad in str(err.value)
    assert not marker.exists(), "the pickled payload was executed"


def test_all_key_problems_come_in_one_error_naming_each(model_dir, tmp_path):
    d = _copy_without_weights(model_dir, tmp_path / "tampered")
    state = torch.load(model_dir / "pytorch_model.bin", weights_only=True)
    del state["img_txt_bridge.0.bias"]
    del state["llm.model.norm.weight"]
    state["totally.unknown.weight"] = torch.zeros(2)
    state["extra_lm_head.weight"] = torch.zeros(3, 3)
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as err:
        GromaEngine.from_pretrained(str(d), progress=False)
    msg = str(err.value)
    assert str(d) in msg
    assert "missing keys (2)" in msg and "img_txt_bridge.0.bias" in msg and "llm.model.norm.weight" in msg
    assert "unexpected keys (1)" in msg and "totally.unknown.weight" in msg
    assert "shape mismatches (1)" in msg and "extra_lm_head.weight: checkpoint (3, 3)" in msg


def test_safetensors_with_wrong_shape_is_one_clear_error(model_dir, tmp_path):
    from safetensors.torch import save_file

    d = _copy_without_weights(model_dir, tmp_path / "st")
    state = torch.load(model_dir / "pytorch_model.bin", weights_only=True)
    state["llm.lm_head.weight"] = torch.zeros(7, 5)
    save_file({k: v.clone().contiguous() for k, v in state.items()}, str(d / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"shape mismatches \(1\).*llm.lm_head.weight"):
        GromaEngine.from_pretrained(str(d), progress=False)


def test_loading_makes_no_network_access(model_dir, monkeypatch):
    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted while loading: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: refuse(None, host))
    engine = GromaEngine.from_pretrained(str(model_dir), progress=False)
    import numpy as np

    answer = engine.ask(np.zeros((48, 64, 3), np.uint8), "where is the mug?", max_new_tokens=2)
    assert answer.completion_tokens >= 1
    assert attempts == []


def test_loader_forces_hf_offline_in_a_fresh_process(model_dir, tmp_path):
    """Even with HF_HUB_OFFLINE=0 in the environment, loading must not be able to reach a hub."""
    code = f"""
import os, socket
calls = []
def refuse(self, address, *a, **k):
    calls.append(address)
    raise OSError("network")
socket.socket.connect = refuse
from groma_ros.engine import GromaEngine
e = GromaEngine.from_pretrained({str(model_dir)!r}, progress=False)
import huggingface_hub.constants as c
print("OFFLINE", os.environ.get("HF_HUB_OFFLINE"), bool(c.HF_HUB_OFFLINE), "CALLS", len(calls))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HUB_OFFLINE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("OFFLINE")][-1]
    assert line.endswith("CALLS 0"), line
    print(line)


def test_hf_offline_is_enforced_even_when_the_environment_disables_it(model_dir):
    code = f"""
from groma_ros.engine import GromaEngine
GromaEngine.from_pretrained({str(model_dir)!r}, progress=False)
import huggingface_hub.constants as c
print("OFFLINE", bool(c.HF_HUB_OFFLINE))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "OFFLINE True" in out.stdout, out.stdout + out.stderr[-2000:]
