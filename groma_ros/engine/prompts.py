"""Prompts in the exact format Groma was trained on, split so the per-frame part can be cached.

Every original prompt (run_groma.py:64-73, conv_templates['llava'], style 'two') is::

    {SYSTEM} USER: Here is an image with region crops from it. Image: <image>. Regions: <region>.
    ASSISTANT: Thank you for the image! How can I assist you with it?</s>USER: {query} ASSISTANT:

(one line, BOS prepended by the tokenizer). Everything up to and including ``</s>`` is the same for every
query on a frame, so it is ``PREFIX``; the engine keeps the LLM's KV cache of it. ``</s>`` strips no
whitespace, so ``encode(PREFIX + suffix) == encode(PREFIX) + encode(suffix, add_bos=False)``.

Query formats come from the original training data (one fixed template each, so answers are repeatable):

=================  ============================================================  =====================
task               user message                                                  source
=================  ============================================================  =====================
REFER              ``Locate <p>{expr}</p> in the image.``                        refcoco_rec.py:12-19
REFER (multi)      ``Locate all <p>{cls}</p> in this image.``                    coco.py:12-19
GROUNDED_CAPTION   ``[grounding]Give me a concise description of the image.``    flickr.py:14-22,227
grounded chat      ``[grounding]{question}``                                     datasets/groma.py:50
REGION_QA          ``Please briefly describe <roi><refer_box></roi><refer_feat>.``  visual_genome.py:15-20
VQA                ``{question}``                                                model_vqa.py:28-38
DETECT             no LLM                                                        --
=================  ============================================================  =====================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from groma_ros.engine import intents
from groma_ros.engine.types import Task
from groma_ros.model import special_tokens

# ---------------------------------------------------------------- conversation template
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROLES = ("USER", "ASSISTANT")
SEP, SEP2 = " ", "</s>"  # conv_llava: sep after user turns, sep2 after assistant turns

IMAGE_TOKEN = special_tokens.IMAGE
REGION_TOKEN = special_tokens.REGION
GROUNDING_TOKEN = special_tokens.GROUNDING
REFER_MARKER = (  # one user box (visual_genome.py:197-200)
    f"{special_tokens.ROI_OPEN}{special_tokens.REFER_BOX}{special_tokens.ROI_CLOSE}{special_tokens.REFER_FEAT}")

FIRST_INSTRUCTION = (
    f"Here is an image with region crops from it. Image: {IMAGE_TOKEN}. Regions: {REGION_TOKEN}."
)
FIRST_ANSWER = "Thank you for the image! How can I assist you with it?"


def format_conversation(turns: list[tuple[str, str]], system: str = SYSTEM) -> str:
    """conv_llava.get_prompt (conversation.py, style 'two'); an empty message leaves ``"ROLE:"`` open."""
    seps = (SEP, SEP2)
    out = system + SEP
    for i, (role, message) in enumerate(turns):
        out += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
    return out


PREFIX = format_conversation([(ROLES[0], FIRST_INSTRUCTION), (ROLES[1], FIRST_ANSWER)])


def suffix_for(user_message: str) -> str:
    """The per-query part: ``USER: {message} ASSISTANT:``."""
    return f"{ROLES[0]}: {user_message}{SEP}{ROLES[1]}:"


# ---------------------------------------------------------------- query templates
REFER_TEMPLATES = (  # refcoco_rec.py:12-19; the first is used
    "Locate {} in the image.",
    "Can you spot {} in the photograph?",
    "Identify where {} is located in the picture.",
    "Please detect {} in the picture.",
    "Which region matches the description {}?",
    "Please identify the object that corresponds to {}.",
)
MULTI_TEMPLATES = (  # coco.py:12-19
    "Locate all {} in this image.",
    "Identify all instances of {} in the photo.",
    "Find all instances of {} in the image.",
    "Point out all the {} visible in this picture.",
    "Detect and list each {} that appears in this photo.",
    "What is the position of each {} in the image?",
)
CAPTION_INSTRUCTIONS = (  # flickr.py:14-22
    "Give me a concise description of the image.",
    "Please briefly summarize the content of this image.",
    "What does this picture show? Please summarize briefly.",
    "Can you give me a quick overview of what's depicted in this image?",
    "Could you describe the key elements in this photograph?",
    "Offer a brief explanation of what this image represents.",
    "Sum up the contents of this picture in one or two sentences.",
)
REGION_BRIEF_TEMPLATES = (  # visual_genome.py:15-20
    "What is {}?",
    "Please briefly describe {}.",
    "Provide a short description for {}.",
    "Please give a concise description of region {}.",
)
REGION_DETAIL_TEMPLATES = (  # refcoco_cap.py:12-18
    "Can you provide me with a detailed description of {}?",
    "Please describe {} in details.",
    "I'm curious about {} in the photo. Can you describe it in detail?",
    "Please give a comprehensive description of the object {}.",
    "What does the object {} in the picture look like? Could you give me a detailed description?",
)

# Default generation budgets. The original evals used REC 3 (one ``<roi><rN></roi>``), LVIS 10, captions
# 100, chat 1024. REFER gets room for a few ``<r>`` (plus ``</s>``); multi-object 13 regions.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    "refer": 8,
    "refer_multi": 16,
    "grounded_caption": 100,
    "region_qa": 40,
    "vqa": 40,
    "detect": 0,
}

sanitize = special_tokens.strip_reserved  # user text never carries a control token into the model


# ---------------------------------------------------------------- region QA messages
_PLACEHOLDER_RE = re.compile(r"<box>|\{box\}|\{\}")
def _join_refs(refs: list[str]) -> str:
    return refs[0] if len(refs) == 1 else ", ".join(refs[:-1]) + " and " + refs[-1]


def region_qa_message(question: str, num_boxes: int) -> str:
    """User message for REGION_QA: each box becomes ``<roi><refer_box></roi><refer_feat>``, in order.

    * explicit placeholders ``<box>``, ``{box}`` or ``{}`` (exactly ``num_boxes`` of them) are replaced;
    * an empty or generic request ("describe", "what is this?") -> "Please briefly describe {}." (or the
      detailed form "Please describe {} in details." when "detail" is asked for); several boxes are
      joined "A, B and C";
    * otherwise deictic words ("this object", "this", "that", "it") are replaced in order; boxes left
      over are put in front: "Regarding A and B, {question}".
    """
    n = max(int(num_boxes), 0)
    if n == 0:
        return sanitize(question)
    refs = [REFER_MARKER] * n
    raw = question.strip()
    if len(_PLACEHOLDER_RE.findall(raw)) == n:
        parts = _PLACEHOLDER_RE.split(raw)
        parts = [re.sub(r"\s+", " ", special_tokens.RESERVED_RE.sub(" ", p)) for p in parts]
        out = parts[0]
        for ref, part in zip(refs, parts[1:], strict=True):
            out += ref + part
        return out.strip()
    text = sanitize(_PLACEHOLDER_RE.sub(" ", raw))
    if intents.is_generic_region_request(text):
        template = REGION_DETAIL_TEMPLATES[1] if intents.wants_detail(text) else REGION_BRIEF_TEMPLATES[1]
        return template.format(_join_refs(refs))
    text, remaining = intents.replace_deictic(text, refs)
    if remaining:
        text = f"Regarding {_join_refs(remaining)}, {text[:1].lower()}{text[1:]}"
    return text[:1].upper() + text[1:]  # training questions are capitalised


# ---------------------------------------------------------------- builder
@dataclass(frozen=True)
class BuiltPrompt:
    """Everything the engine needs to run one query on a frame.

    ``prefix`` is shared by all queries on a frame (cache it); ``prefix + suffix`` is the full prompt,
    encoded as ``tokenizer.encode(prefix) + tokenizer.encode(suffix, add_bos=False)``. ``expression`` is
    the REFER phrase (the parser uses it for bare ``<roi>`` answers); ``uses_llm`` is False for DETECT.
    """

    task: Task
    prefix: str
    suffix: str
    user_message: str
    expression: str | None
    multi: bool
    max_new_tokens: int
    num_boxes: int
    uses_llm: bool = True

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


class PromptBuilder:
    """Builds ``BuiltPrompt`` s; the templates and token budgets are configurable, the format is not."""

    def __init__(
        self,
        refer_template: str = REFER_TEMPLATES[0],
        multi_template: str = MULTI_TEMPLATES[0],
        caption_instruction: str = CAPTION_INSTRUCTIONS[0],
        max_new_tokens: Mapping[str, int] | None = None,
    ) -> None:
        self.refer_template = refer_template
        self.multi_template = multi_template
        self.caption_instruction = caption_instruction
        self.max_new_tokens = {**DEFAULT_MAX_NEW_TOKENS, **(max_new_tokens or {})}

    def build(
        self,
        task: Task | str | int,
        query: str,
        num_boxes: int = 0,
        max_new_tokens: int | None = None,
    ) -> BuiltPrompt:
        """Prompt for ``query``; AUTO is resolved with ``resolve_task``. Never raises on odd text."""
        task = Task.parse(task)
        if task == Task.AUTO:
            task = intents.resolve_task(query, num_boxes > 0)
        expression: str | None = None
        multi = False
        if task == Task.DETECT:
            return BuiltPrompt(task, PREFIX, "", "", None, False, 0, num_boxes, uses_llm=False)
        if task == Task.REFER:
            target = intents.normalize_command(query)
            expression, multi = target.expression, target.multi
            template = self.multi_template if multi else self.refer_template
            message = template.format(f"<p>{expression}</p>")
            budget = "refer_multi" if multi else "refer"
        elif task == Task.GROUNDED_CAPTION:
            text = sanitize(query)
            if not text or intents.is_generic_caption(text):
                text = self.caption_instruction
            message = GROUNDING_TOKEN + text
            budget = "grounded_caption"
        elif task == Task.REGION_QA:
            message = region_qa_message(query, num_boxes)
            budget = "region_qa"
        else:  # VQA
            message = sanitize(query) or "What is in the image?"
            budget = "vqa"
        limit = self.max_new_tokens[budget] if max_new_tokens is None else int(max_new_tokens)
        return BuiltPrompt(task, PREFIX, suffix_for(message), message, expression, multi, limit, num_boxes)
