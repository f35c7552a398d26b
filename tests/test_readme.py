"""The README's reference stays true: every parameter, message and the two commands are documented."""

from __future__ import annotations

from pathlib import Path

from groma_ros.ros.params import SPECS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_parameter_is_in_the_readme_table_with_its_default():
    for spec in SPECS:
        default = str(spec.default).lower() if isinstance(spec.default, bool) else spec.default
        shown = '""' if default == "" else str(default)
        if isinstance(spec.default, list):
            shown = "[" + ", ".join(f'"{v}"' for v in spec.default) + "]"
        assert f"| `{spec.name}` | `{shown}` |" in README, spec.name


def test_every_interface_is_listed():
    for path in sorted((ROOT / "msg").glob("*.msg")) + sorted((ROOT / "action").glob("*.action")):
        assert f"`{path.stem}`" in README or f"`{path.name}`" in README, path.name


def test_two_commands_and_ci_agree():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
