"""Prompt format (byte-exact with the original template), region QA messages, the builder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groma_ros.engine.prompts import (
    DEFAULT_MAX_NEW_TOKENS,
    PREFIX,
    REFER_MARKER,
    ROLES,
    PromptBuilder,
    format_conversation,
    region_qa_message,
    sanitize,
)
from groma_ros.engine.types import Task

ORIGINAL_PROMPT = (  # run_groma.py:64-73 with conv_templates['llava'], written out by hand
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: Here is an image with region crops from it. "
    "Image: <image>. Regions: <region>. ASSISTANT: Thank you for the image! How can I assist you with it?</s>"
    "USER: {q} ASSISTANT:"
)


def test_prefix_and_suffix_match_original() -> None:
    p = PromptBuilder().build(Task.VQA, "What is on the table?")
    assert p.text == ORIGINAL_PROMPT.format(q="What is on the table?")
    assert p.prefix == PREFIX and PREFIX.endswith("</s>") and p.suffix.startswith("USER: ")
    turns = [
        (ROLES[0], "Here is an image with region crops from it. Image: <image>. Regions: <region>."),
        (ROLES[1], "Thank you for the image! How can I assist you with it?"),
        (ROLES[0], "What is on the table?"),
        (ROLES[1], ""),
    ]
    assert format_conversation(turns) == p.text


@pytest.mark.parametrize(
    "task,query,boxes,message,expr,multi,budget",
    [
        (
            Task.REFER,
            "pick up the red mug",
            0,
            "Locate <p>the red mug</p> in the image.",
            "the red mug",
            False,
            8,
        ),
        (
            Task.REFER,
            "find all the cups",
            0,
            "Locate all <p>the cups</p> in this image.",
            "the cups",
            True,
            16,
        ),
        (
            Task.GROUNDED_CAPTION,
            "",
            0,
            "[grounding]Give me a concise description of the image.",
            None,
            False,
            100,
        ),
        (
            Task.GROUNDED_CAPTION,
            "describe the image",
            0,
            "[grounding]Give me a concise description of the image.",
            None,
            False,
            100,
        ),
        (
            Task.GROUNDED_CAPTION,
            "What is the man holding?",
            0,
            "[grounding]What is the man holding?",
            None,
            False,
            100,
        ),
        (Task.REGION_QA, "", 1, f"Please briefly describe {REFER_MARKER}.", None, False, 40),
        (Task.REGION_QA, "what is this?", 1, f"What is {REFER_MARKER}?", None, False, 40),
        (Task.VQA, "How many cups are there?", 0, "How many cups are there?", None, False, 40),
    ],
)
def test_task_messages(task, query, boxes, message, expr, multi, budget) -> None:
    p = PromptBuilder().build(task, query, boxes)
    assert (p.user_message, p.expression, p.multi, p.max_new_tokens) == (message, expr, multi, budget)
    assert p.suffix == f"USER: {message} ASSISTANT:" and p.uses_llm


def test_detect_needs_no_llm() -> None:
    p = PromptBuilder().build("detect", "anything")
    assert not p.uses_llm and p.max_new_tokens == 0 and p.suffix == ""


@pytest.mark.parametrize(
    "question,n,expected",
    [
        ("what is this?", 1, "What is R?"),
        ("", 2, "Please briefly describe R and R."),
        ("describe it in detail", 1, "Please describe R in details."),
        ("what is the relation between {} and <box>?", 2, "what is the relation between R and R?"),
        ("what is this object used for", 1, "What is R used for"),
        ("how far is it from that?", 2, "How far is R from R?"),
        ("compare these", 2, "Regarding R and R, compare these"),
        ("what is the color?", 1, "Regarding R, what is the color?"),
        ("is {} bigger?", 3, "Regarding R, R and R, is bigger?"),  # placeholder count mismatch
    ],
)
def test_region_qa_message(question: str, n: int, expected: str) -> None:
    msg = region_qa_message(question, n)
    assert msg.replace(REFER_MARKER, "R") == expected
    assert msg.count("<refer_box>") == n == msg.count("<refer_feat>")


def test_builder_options() -> None:
    b = PromptBuilder(refer_template="Please detect {} in the picture.", max_new_tokens={"refer": 3})
    p = b.build("refer", "the mug")
    assert p.user_message == "Please detect <p>the mug</p> in the picture." and p.max_new_tokens == 3
    assert b.build("refer", "the mug", max_new_tokens=5).max_new_tokens == 5
    assert DEFAULT_MAX_NEW_TOKENS["refer"] == 8 and PromptBuilder().build("refer", "x").max_new_tokens == 8


def test_sanitize() -> None:
    assert sanitize(" a <p>b</p>\n<r3>[PAD] [grounding]c </s> ") == "a b c"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.integers(0, 3), st.sampled_from(list(Task)))
def test_never_raises_and_never_leaks_tokens(query: str, boxes: int, task: Task) -> None:
    p = PromptBuilder().build(task, query, boxes)
    assert p.prefix == PREFIX
    if not p.uses_llm:
        return
    msg = p.user_message
    # Only the builder's own tags may appear in the message, in their fixed roles.
    stripped = msg.replace(REFER_MARKER, "").replace(
        "[grounding]", "", 1 if msg.startswith("[grounding]") else 0
    )
    if p.expression is not None:
        stripped = stripped.replace(f"<p>{p.expression}</p>", "")
    assert sanitize(stripped) == " ".join(stripped.split())
    if p.task == Task.REGION_QA:
        assert msg.count("<refer_box>") == boxes
