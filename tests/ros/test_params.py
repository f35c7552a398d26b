"""The parameter list is one source of truth: YAML file, launch file and validation agree with it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from groma_ros.ros.params import SPECS, NodeParams, validate

ROOT = Path(__file__).resolve().parents[2]


def _yaml_params() -> dict:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load((ROOT / "config" / "groma.yaml").read_text())
    return data["/**"]["ros__parameters"]


def test_yaml_lists_every_parameter_with_its_default():
    values = _yaml_params()
    assert set(values) == {spec.name for spec in SPECS}
    for spec in SPECS:
        assert values[spec.name] == spec.default, spec.name
    assert NodeParams.from_values(values).model_path == ""


def test_validation_reports_every_problem_clearly():
    problems = validate({"queue_size": 0, "model.dtype": "int3", "max_image_age_s": float("nan"),
                         "model.device": "tpu9", "autostart": "yes"})
    text = "; ".join(problems)
    assert "queue_size=0 is below the minimum 1" in text
    assert "model.dtype='int3' is not one of float32, bfloat16, float16" in text
    assert "max_image_age_s must not be NaN" in text
    assert "model.device='tpu9' is not a torch device" in text
    assert "autostart must be a bool" in text
    with pytest.raises(ValueError, match="invalid parameters"):
        NodeParams.from_values({"queue_size": -3})


def test_launch_files_are_valid_python_using_only_launch_packages():
    for path in (ROOT / "launch").glob("*.launch.py"):
        tree = ast.parse(path.read_text())
        modules = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert modules <= {"launch", "launch_ros", "lifecycle_msgs"}, (path.name, modules)
    text = (ROOT / "launch" / "groma.launch.py").read_text()
    for argument in ("namespace", "params_file", "model_path", "device", "use_depth", "target_frame", "autostart"):
        assert f'("{argument}"' in text, argument
