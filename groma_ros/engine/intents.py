"""English intent rules: what a spoken command or question asks for, before any prompt is built.

The prompt format is Groma's (``prompts``); these rules are ours and English-only: which task a free-form
query means (``resolve_task``), which referring expression a command names and whether it wants every instance
(``normalize_command``), and how a question about user boxes names them (``replace_deictic``). They never
fail: odd text falls through to the most literal reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from groma_ros.engine.types import Task
from groma_ros.model.special_tokens import strip_reserved as sanitize

# ------------------------------------------------------------------- spoken command -> expression
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


# ------------------------------------------------------------------------ task resolution (AUTO)
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


def is_generic_caption(text: str) -> bool:
    """A bare description request ("describe the image", "what do you see?"): the trained caption instruction
    replaces it."""
    return bool(_GENERIC_CAPTION_RE.match(text))


# ------------------------------------------------------------------------ questions about user boxes
_DEICTIC_RE = re.compile(
    r"\b(?:this|that)\s+(?:object|region|thing|item|area|one)\b|\b(?:this|that|it)\b", re.I
)
_DESCRIBE_DEFAULT_RE = re.compile(
    r"^(?:(?:please\s+)?(?:describe|caption)(?:\s+(?:it|this|that|the\s+box|the\s+region|this\s+region|"
    r"this\s+object|them|these))?)?[\s.?!]*$",
    re.I,
)
_DETAIL_RE = re.compile(r"\b(?:in\s+detail|detailed|details)\b", re.I)




def is_generic_region_request(text: str) -> bool:
    """"describe", "what is this?", "describe it in detail": the trained region templates fit better."""
    return bool(_DESCRIBE_DEFAULT_RE.match(text) or (_DETAIL_RE.search(text) and len(text.split()) <= 6))


def wants_detail(text: str) -> bool:
    return bool(_DETAIL_RE.search(text))


def replace_deictic(text: str, refs: list[str]) -> tuple[str, list[str]]:
    """Deictic words ("this object", "this", "that", "it") replaced by ``refs`` in order; returns the text and
    the refs left over."""
    remaining = list(refs)

    def place(m: re.Match[str]) -> str:
        return remaining.pop(0) if remaining else m.group(0)

    return _DEICTIC_RE.sub(place, text), remaining
