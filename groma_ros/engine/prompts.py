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

_RESERVED = special_tokens.RESERVED_RE  # text that must never reach the model from user input


def sanitize(text: str) -> str:
    """User text with every Groma/LLaMA control token removed and whitespace collapsed."""
    return " ".join(_RESERVED.sub(" ", text).split())


# ---------------------------------------------------------------- spoken command -> expression
_POLITE_HEAD = re.compile(
    r"^(?:(?:hey|hi|ok(?:ay)?|so|now|robot|groma|please|kindly|"
    r"(?:can|could|would|will)\s+you(?:\s+please)?|i\s+(?:want|need|would\s+like)\s+you\s+to|"
    r"i\s+(?:want|need)|let'?s|try\s+to|go\s+and|and)\b[\s,:;!]*)+",
    re.I,
)
_POLITE_TAIL = re.compile(
    r"(?:[\s,]+(?:please|for\s+me|now|thanks|thank\s+you|"
    r"in\s+(?:the|this)\s+(?:image|picture|photo|photograph|scene|frame|view))\b)+\s*$",
    re.I,
)
# Command verbs whose object is the referring expression. Longest first (so "pick up" beats "pick").
_REFER_VERBS = (
    "point out",
    "point to",
    "point at",
    "pick up",
    "pick out",
    "look at",
    "look for",
    "search for",
    "show me where",
    "show me",
    "tell me where",
    "hand me",
    "give me",
    "bring me",
    "go to",
    "move to",
    "navigate to",
    "reach for",
    "find me",
    "get me",
    "pass me",
    "pick",
    "grab",
    "take",
    "get",
    "fetch",
    "bring",
    "find",
    "locate",
    "detect",
    "spot",
    "identify",
    "highlight",
    "mark",
    "ground",
    "touch",
    "push",
    "select",
    "track",
    "follow",
    "segment",
)
_VERB_RE = re.compile(r"^(?:" + "|".join(re.escape(v) for v in _REFER_VERBS) + r")\b\s*", re.I)
_WHERE_RE = re.compile(
    r"^(?:where(?:'s|\s+is|\s+are|'re|\s+was|\s+were|\s+can\s+i\s+find|\s+do\s+i\s+find)?|"
    r"which\s+(?:one|object|thing|item|region)\s+is)\b\s*",
    re.I,
)
_WHERE_PLURAL = re.compile(r"^where(?:\s+are|'re|\s+were)\b", re.I)
_TAIL_LOC = re.compile(r"\s+(?:is|are)\s*(?:located|placed|situated)?\s*$", re.I)  # "where the mug is"
_QUANT_RE = re.compile(r"^(?:all\s+of\s+|all\s+|every\s+|each\s+(?:of\s+)?|both\s+(?:of\s+)?)", re.I)
_COUNT_RE = re.compile(
    r"^(?:the\s+)?(?:two|three|four|five|six|seven|eight|nine|ten|several|many|\d+)\s+", re.I
)
_NOT_PLURAL_ENDINGS = ("ss", "us", "is", "ous", "'s")


def _looks_plural(expr: str) -> bool:
    """Crude English plural test on the head noun (the last word): ``cups`` yes, ``glass``/``bus`` no."""
    words = re.findall(r"[A-Za-z']+", expr)
    if not words:
        return False
    last = words[-1].lower()
    return len(last) > 3 and last.endswith("s") and not last.endswith(_NOT_PLURAL_ENDINGS)


@dataclass(frozen=True)
class ReferTarget:
    """What a referring command asks for: the expression and whether all instances are wanted."""

    expression: str
    multi: bool


def normalize_command(query: str) -> ReferTarget:
    """Turn a spoken-style command into a referring expression; never fails.

    Rules, in order: strip control tokens; drop a polite head ("please", "can you", "robot,") and
    tail ("please", "for me", "in the image", "?", "."); drop one command verb ("pick up", "grab",
    "find", "point to", "show me", ...) or question head ("where is/are", "which one is"); drop a
    trailing "is"/"are located"; then a quantifier ("all (of) the", "every", "each", "both") or a
    count makes it multi-object and is dropped ("all the cups" -> "the cups"), as does "where are"
    or a plural head noun. If nothing is left, the whole (sanitized) query is the expression.
    """
    original = sanitize(query)
    text = original.strip(" \t.?!,;:")
    text = _POLITE_HEAD.sub("", text)
    text = _POLITE_TAIL.sub("", text).strip(" .?!,;:")
    plural_verb = bool(_WHERE_PLURAL.match(text))
    m = _VERB_RE.match(text) or _WHERE_RE.match(text)
    if m:
        text = text[m.end() :]
        text = _POLITE_TAIL.sub("", text)
    text = _TAIL_LOC.sub("", text).strip(" .?!,;:")
    multi = plural_verb
    q = _QUANT_RE.match(text)
    if q:
        text, multi = text[q.end() :], True
    elif _COUNT_RE.match(text):
        multi = True
    text = text.strip(" .?!,;:")
    if not text:
        return ReferTarget(original.strip(" .?!") or original, False)
    return ReferTarget(text, multi or _looks_plural(text))


# ---------------------------------------------------------------- task resolution (AUTO)
_CAPTION_RE = re.compile(
    r"^(?:describe|caption|summari[sz]e|narrate)\b|"
    r"\bwhat\s+(?:do|can|did)\s+you\s+see\b|\bwhat\s+is\s+(?:in|on)\s+(?:the|this)\s+(?:image|picture|photo|scene|view)\b|"
    r"\bwhat(?:'s|\s+is)\s+(?:happening|going\s+on)\b|\btell\s+me\s+(?:about|what)\s+(?:the|this|you)\b|"
    r"\b(?:describe|caption)\s+(?:the|this)\s+(?:image|picture|photo|scene|view)\b",
    re.I,
)
_GENERIC_CAPTION_RE = re.compile(
    r"^(?:(?:please\s+)?(?:describe|caption|summari[sz]e)(?:\s+(?:the|this)\s+(?:image|picture|photo|scene|view))?|"
    r"what\s+(?:do|can)\s+you\s+see|what(?:'s|\s+is)\s+in\s+(?:the|this)\s+(?:image|picture|photo|scene|view))"
    r"[\s.?!]*$",
    re.I,
)
_VQA_RE = re.compile(
    r"^(?:how\s+many|how\s+much|is|are|was|were|am|do|does|did|can|could|will|would|should|shall|has|have|had|"
    r"what|why|how|who|whose|when|which)\b",
    re.I,
)


def resolve_task(query: str, has_boxes: bool) -> Task:
    """Pick a task for AUTO, in this order (the first that matches wins):

    1. a user box is given -> REGION_QA;
    2. a description request ("describe ...", "caption", "what do you see", "what is in the image")
       -> GROUNDED_CAPTION;
    3. a command or where-question after an optional polite head ("pick up", "find", "show me",
       "where is", "can you find ...") -> REFER;
    4. "how many" or another question form (yes/no auxiliaries, what/why/how/who/which) -> VQA;
    5. anything else (a bare noun phrase such as "the red mug", "all the cups") -> REFER.
    Multi-object REFER ("all the X", plurals) is decided later by ``normalize_command``.
    """
    if has_boxes:
        return Task.REGION_QA
    text = sanitize(query).strip()
    if not text:
        return Task.GROUNDED_CAPTION
    if _CAPTION_RE.search(text):
        return Task.GROUNDED_CAPTION
    if re.match(r"^how\s+many\b", text, re.I):
        return Task.VQA
    head = _POLITE_HEAD.sub("", text)
    if _VERB_RE.match(head) or _WHERE_RE.match(head):
        return Task.REFER
    if _VQA_RE.match(text):
        return Task.VQA
    return Task.REFER


# ---------------------------------------------------------------- region QA messages
_PLACEHOLDER_RE = re.compile(r"<box>|\{box\}|\{\}")
_DEICTIC_RE = re.compile(
    r"\b(?:this|that)\s+(?:object|region|thing|item|area|one)\b|\b(?:this|that|it)\b", re.I
)
_DESCRIBE_DEFAULT_RE = re.compile(
    r"^(?:(?:please\s+)?(?:describe|caption)(?:\s+(?:it|this|that|the\s+box|the\s+region|this\s+region|"
    r"this\s+object|them|these))?)?[\s.?!]*$",
    re.I,
)
_DETAIL_RE = re.compile(r"\b(?:in\s+detail|detailed|details)\b", re.I)


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
        parts = [re.sub(r"\s+", " ", _RESERVED.sub(" ", p)) for p in parts]
        out = parts[0]
        for ref, part in zip(refs, parts[1:], strict=True):
            out += ref + part
        return out.strip()
    text = sanitize(_PLACEHOLDER_RE.sub(" ", raw))
    if _DESCRIBE_DEFAULT_RE.match(text) or (_DETAIL_RE.search(text) and len(text.split()) <= 6):
        template = REGION_DETAIL_TEMPLATES[1] if _DETAIL_RE.search(text) else REGION_BRIEF_TEMPLATES[1]
        return template.format(_join_refs(refs))
    remaining = list(refs)

    def place(m: re.Match[str]) -> str:
        return remaining.pop(0) if remaining else m.group(0)

    text = _DEICTIC_RE.sub(place, text)
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
            task = resolve_task(query, num_boxes > 0)
        expression: str | None = None
        multi = False
        if task == Task.DETECT:
            return BuiltPrompt(task, PREFIX, "", "", None, False, 0, num_boxes, uses_llm=False)
        if task == Task.REFER:
            target = normalize_command(query)
            expression, multi = target.expression, target.multi
            template = self.multi_template if multi else self.refer_template
            message = template.format(f"<p>{expression}</p>")
            budget = "refer_multi" if multi else "refer"
        elif task == Task.GROUNDED_CAPTION:
            text = sanitize(query)
            if not text or _GENERIC_CAPTION_RE.match(text):
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


def build_prompt(task: Task | str | int, query: str, num_boxes: int = 0) -> BuiltPrompt:
    """``PromptBuilder().build`` with the default templates."""
    return _DEFAULT_BUILDER.build(task, query, num_boxes)


_DEFAULT_BUILDER = PromptBuilder()
