"""English intent rules: a spoken command's referring expression, the task an AUTO query means."""

from __future__ import annotations

import pytest

from groma_ros.engine.intents import normalize_command, resolve_task
from groma_ros.engine.prompts import PromptBuilder
from groma_ros.engine.types import Task


@pytest.mark.parametrize(
    "query,expr,multi",
    [
        ("pick up the red mug", "the red mug", False),
        ("Where is the red mug?", "the red mug", False),
        ("find all the cups", "the cups", True),
        ("Please grab the bottle for me.", "the bottle", False),
        ("robot, can you pick up the blue cup please?", "the blue cup", False),
        ("where are the apples", "the apples", True),
        ("show me the dog in the image", "the dog", False),
        ("point to the glass", "the glass", False),  # "glass" is not a plural
        ("locate every chair", "chair", True),
        ("the red mug", "the red mug", False),
        ("tell me where the keys are", "the keys", True),
        ("which one is the tallest bottle?", "the tallest bottle", False),
        ("two people", "two people", True),
        ("find", "find", False),  # nothing left: the whole query
        ("<image> grab <r3> the mug", "the mug", False),  # control tokens never pass through
        ("", "", False),
    ],
)
def test_normalize_command(query: str, expr: str, multi: bool) -> None:
    t = normalize_command(query)
    assert (t.expression, t.multi) == (expr, multi)


@pytest.mark.parametrize(
    "query,boxes,task",
    [
        ("what is this?", True, Task.REGION_QA),
        ("describe the scene", False, Task.GROUNDED_CAPTION),
        ("What do you see?", False, Task.GROUNDED_CAPTION),
        ("caption", False, Task.GROUNDED_CAPTION),
        ("", False, Task.GROUNDED_CAPTION),
        ("how many cups are there?", False, Task.VQA),
        ("is the mug red?", False, Task.VQA),
        ("what color is the mug?", False, Task.VQA),
        ("where is the red mug?", False, Task.REFER),
        ("could you find the keys", False, Task.REFER),
        ("pick up the red mug", False, Task.REFER),
        ("all the cups", False, Task.REFER),
        ("the red mug", False, Task.REFER),
    ],
)
def test_resolve_task(query: str, boxes: bool, task: Task) -> None:
    assert resolve_task(query, boxes) == task
    assert PromptBuilder().build(Task.AUTO, query, int(boxes)).task == task
