"""Lenient parser of Groma's generated output into plain text + grounded phrases.

The model answers with tags: ``<p>phrase</p><roi><r3><r7></roi>`` (grounded caption/chat), a bare
``<roi><r3></roi>`` (REFER: the phrase is the query's expression) and ``</s>`` at the end. The original
has no phrase parser; its caption post-processing (model_vg.py:112-116) removes ``<...>`` tags and
collapses spaces. We do the same, plus:

* a tag is a word boundary: text on both sides of it is joined with one space, but never with a space
  before closing punctuation (``.,;:!?)'"%``). (4.32's decode put a space around every added token,
  giving "table ." in the original; the ``legacy=False`` tokenizer dropped the "▁" after tags, so without
  the boundary rule "</roi>is" would glue words together.)
* all whitespace runs (newlines included) become one space; the text is stripped.

Parsing never raises. Anything odd is repaired as below and reported in ``warnings``: an unclosed
``<p>`` before ``<roi>`` ends there; an unclosed ``<roi>`` ends at the next text/tag that cannot be inside
it or at the end; ``<rN>`` outside a ``<roi>`` opens one; ``<rN>`` with N >= the number of kept regions
is dropped; a repeated ``<rN>`` in one ``<roi>`` is kept once; stray ``</p>``/``</roi>`` are ignored;
anything after ``</s>`` is ignored; invalid token ids are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from groma_ros.model.special_tokens import (
    GROMA_TOKENS,
    LLAMA_TOKENS,
    NUM_REGION_TOKENS,
    PHRASE_CLOSE,
    PHRASE_OPEN,
    ROI_CLOSE,
    ROI_OPEN,
)

# Never glued with "]" or ">": that could rebuild a tag ("[PAD" + tag + "]") in the plain text.
_CLOSING_PUNCT = frozenset(".,;:!?)'\"%…")
# Known tags first; then anything tag-like (the original strips every ``<...>``).
_KNOWN_TAGS = GROMA_TOKENS + LLAMA_TOKENS
_STRUCTURE_TAGS = (PHRASE_OPEN, PHRASE_CLOSE, ROI_OPEN, ROI_CLOSE, "</s>")  # matched by their own groups
_TAG_RE = re.compile(
    r"<(?P<close>/?)(?P<name>p|roi)>|<r(?P<region>0|[1-9]\d{0,5})>|(?P<eos></s>)|(?P<other>"
    + "|".join(re.escape(t) for t in _KNOWN_TAGS if t not in _STRUCTURE_TAGS)
    + r"|<[A-Za-z/][^<>\s]{0,31}>)"
)
_PARTIAL_REGION = re.compile(r"<(?:r\d{0,6})?$")


@dataclass(frozen=True)
class ParsedItem:
    """A grounded phrase: ``text[start:end] == phrase``; ``start == end == -1`` for a bare ``<roi>``."""

    phrase: str
    start: int
    end: int
    region_indices: tuple[int, ...]


@dataclass
class ParsedOutput:
    text: str
    raw_text: str
    items: list[ParsedItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stopped: bool = False  # ``</s>`` was seen

    @property
    def region_indices(self) -> list[int]:
        """All region indices in answer order, without repeats (what the original scripts collect)."""
        seen: dict[int, None] = {}
        for item in self.items:
            for i in item.region_indices:
                seen.setdefault(i, None)
        return list(seen)


class _TokenizerLike(Protocol):
    def __len__(self) -> int: ...
    def is_added_id(self, i: int) -> bool: ...
    def convert_ids_to_tokens(self, ids: int) -> str: ...
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str: ...
    def incremental_decoder(self, skip_special_tokens: bool = False): ...  # noqa: ANN201


# Segments: ("text", str) | ("tag", kind, arg) with kind in p, /p, roi, /roi, r, eos, other.
_Segment = tuple


def _lex(raw: str, warnings: list[str], final: bool) -> list[_Segment]:
    segs: list[_Segment] = []
    pos = 0
    for m in _TAG_RE.finditer(raw):
        if m.start() > pos:
            segs.append(("text", raw[pos : m.start()]))
        pos = m.end()
        if m.group("name"):
            segs.append(("tag", ("/" if m.group("close") else "") + m.group("name"), None))
        elif m.group("region") is not None:
            segs.append(("tag", "r", int(m.group("region"))))
        elif m.group("eos"):
            segs.append(("tag", "eos", None))
        else:
            segs.append(("tag", "other", m.group("other")))
    tail = raw[pos:]
    cut = max(tail.rfind("<"), tail.rfind("["))
    if cut >= 0 and ">" not in tail[cut:] and "]" not in tail[cut:]:
        frag = tail[cut:]
        if len(frag) >= (2 if final else 1) and (
            any(t.startswith(frag) for t in _KNOWN_TAGS) or _PARTIAL_REGION.match(frag)
        ):
            if final:
                warnings.append(f"dropped truncated tag {frag!r} at the end")
            tail = tail[:cut]
    if tail:
        segs.append(("text", tail))
    return segs


class _Builder:
    """The state machine over segments; builds the plain text and the items together."""

    def __init__(self, num_regions: int | None, expression: str | None, warnings: list[str]) -> None:
        self.limit = NUM_REGION_TOKENS if num_regions is None else max(0, int(num_regions))
        self.expression = (expression or "").strip()
        self.warnings = warnings
        self.out = ""
        self.boundary = False  # a tag was passed since the last text: acts as a space
        self.phrase_open = False
        self.phrase_start: int | None = None
        self.pending: tuple[str, int, int] | None = None  # closed phrase waiting for its <roi>
        self.roi_open = False
        self.roi_implicit = False  # opened by a bare <rN>: ends quietly at the next text
        self.roi_phrase: tuple[str, int, int] | None = None
        self.roi_regions: list[int] = []
        self.items: list[ParsedItem] = []

    # -- text
    def text(self, t: str) -> None:
        t = re.sub(r"\s+", " ", t)
        if not t.strip():
            if t and self.out and not self.out.endswith(" "):
                self.boundary = True
            return
        if self.roi_open:
            if not self.roi_implicit:
                self.warn("unclosed <roi> before text")
            self.close_roi()
        if self.pending is not None:
            self.warn(f"phrase {self.pending[0]!r} has no <roi>")
            self.pending = None
        if self.boundary:
            if t.lstrip(" ")[0] in _CLOSING_PUNCT:  # "table </p><roi>..</roi> ." -> "table."
                t = t.lstrip(" ")
                self.out = self.out.rstrip(" ")  # spans end before this space: they stay valid
            elif t[0] != " ":
                t = " " + t
        self.boundary = False
        if not self.out or self.out.endswith(" "):
            t = t.lstrip(" ")
        if self.phrase_open and self.phrase_start is None:
            self.phrase_start = len(self.out) + (len(t) - len(t.lstrip(" ")))
        self.out += t

    # -- tags
    def tag(self, kind: str, arg: object) -> None:
        self.boundary = True
        if kind == "p":
            if self.roi_open:
                if not self.roi_implicit:
                    self.warn("unclosed <roi> before <p>")
                self.close_roi()
            if self.phrase_open:
                self.warn("<p> inside an open <p>: restarting the phrase")
            elif self.pending is not None:
                self.warn(f"phrase {self.pending[0]!r} has no <roi>")
            self.pending = None
            self.phrase_open, self.phrase_start = True, None
        elif kind == "/p":
            if not self.phrase_open:
                self.warn("stray </p>")
                return
            self.close_phrase()
        elif kind == "roi":
            if self.roi_open:
                self.warn("<roi> inside an open <roi>: merged")
                return
            self.open_roi()
        elif kind == "/roi":
            if not self.roi_open:
                self.warn("stray </roi>")
                return
            self.close_roi()
        elif kind == "r":
            n = int(arg)  # type: ignore[arg-type]
            if not self.roi_open:
                self.warn(f"<r{n}> outside <roi>")
                self.open_roi()
                self.roi_implicit = True
            if n >= self.limit:
                self.warn(f"dropped <r{n}>: only {self.limit} regions")
            elif n in self.roi_regions:
                self.warn(f"repeated <r{n}> dropped")
            else:
                self.roi_regions.append(n)

    def close_phrase(self) -> None:
        self.phrase_open = False
        start = self.phrase_start
        phrase = self.out[start:].rstrip() if start is not None else ""
        if not phrase:
            self.warn("empty <p></p> phrase")
            self.pending = None
        else:
            self.pending = (phrase, start, start + len(phrase))  # type: ignore[operator]

    def open_roi(self) -> None:
        if self.phrase_open:
            self.warn("unclosed <p> before <roi>")
            self.close_phrase()
        self.roi_open, self.roi_implicit, self.roi_regions = True, False, []
        self.roi_phrase, self.pending = self.pending, None

    def close_roi(self) -> None:
        self.roi_open = False
        if not self.roi_regions:
            self.warn("<roi> without a valid region")
            return
        if self.roi_phrase is not None:
            phrase, start, end = self.roi_phrase
            self.items.append(ParsedItem(phrase, start, end, tuple(self.roi_regions)))
        else:
            self.items.append(ParsedItem(self.expression, -1, -1, tuple(self.roi_regions)))
        self.roi_phrase, self.roi_regions = None, []

    def finish(self) -> str:
        if self.roi_open:
            if not self.roi_implicit:
                self.warn("unclosed <roi> at the end")
            self.close_roi()
        if self.phrase_open:
            self.warn("unclosed <p> at the end")
        elif self.pending is not None:
            self.warn(f"phrase {self.pending[0]!r} has no <roi>")
        return self.out.rstrip(" ")

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def _parse_segments(
    segments: Sequence[_Segment],
    raw_text: str,
    num_regions: int | None,
    expression: str | None,
    warnings: list[str],
) -> ParsedOutput:
    b = _Builder(num_regions, expression, warnings)
    stopped = False
    for seg in segments:
        if seg[0] == "text":
            b.text(seg[1])
        elif seg[1] == "eos":
            stopped = True
            break
        else:
            b.tag(seg[1], seg[2])
    text = b.finish()
    return ParsedOutput(text=text, raw_text=raw_text, items=b.items, warnings=warnings, stopped=stopped)


def parse_text(
    raw: str, num_regions: int | None = None, expression: str | None = None, final: bool = True
) -> ParsedOutput:
    """Parse decoded model output (a string with tags).

    ``num_regions``: how many regions the frame kept (``<rN>`` with N >= it are dropped; default 100).
    ``expression``: phrase given to a bare ``<roi>`` (the REFER query's expression).
    ``final=False`` (streaming) silently holds back a tag cut at the end of ``raw`` (``"<ro"``).
    """
    warnings: list[str] = []
    try:
        raw = "" if raw is None else str(raw)
        return _parse_segments(_lex(raw, warnings, final), raw, num_regions, expression, warnings)
    except Exception as exc:  # pragma: no cover - last-resort guarantee of "never raises"
        return ParsedOutput(text="", raw_text=str(raw), warnings=[*warnings, f"parser error: {exc!r}"])


def parse_ids(
    ids: Iterable[int],
    tokenizer: _TokenizerLike,
    num_regions: int | None = None,
    expression: str | None = None,
) -> ParsedOutput:
    """Parse generated token ids (without the prompt); tags come from ids, so text never fakes a tag."""
    warnings: list[str] = []
    valid: list[int] = []
    try:
        total = len(tokenizer)
        for i in ids:
            try:
                v = int(i)
            except (TypeError, ValueError):
                warnings.append(f"dropped non-integer token {i!r}")
                continue
            if 0 <= v < total:
                valid.append(v)
            else:
                warnings.append(f"dropped invalid token id {v}")
        segments: list[_Segment] = []
        dec = tokenizer.incremental_decoder()
        for v in valid:
            token = tokenizer.convert_ids_to_tokens(v)
            if tokenizer.is_added_id(v) or token in ("<s>", "</s>", "<unk>"):
                pending = dec.flush()
                if pending:
                    segments.append(("text", pending))
                segments.extend(_lex(token, warnings, final=True))
            else:
                piece = dec.push(v)
                if piece:
                    segments.append(("text", piece))
        pending = dec.flush()
        if pending:
            segments.append(("text", pending))
        raw = tokenizer.decode(valid)
        return _parse_segments(segments, raw, num_regions, expression, warnings)
    except Exception as exc:  # pragma: no cover - last-resort guarantee of "never raises"
        return ParsedOutput(text="", raw_text="", warnings=[*warnings, f"parser error: {exc!r}"])


class StreamParser:
    """Re-parses the text streamed so far; ``snapshot()`` hides a tag that is still being received."""

    def __init__(self, num_regions: int | None = None, expression: str | None = None) -> None:
        self.num_regions = num_regions
        self.expression = expression
        self._chunks: list[str] = []

    def feed(self, chunk: str) -> None:
        self._chunks.append(chunk)

    def snapshot(self) -> ParsedOutput:
        return parse_text("".join(self._chunks), self.num_regions, self.expression, final=False)

    def finish(self) -> ParsedOutput:
        return parse_text("".join(self._chunks), self.num_regions, self.expression, final=True)
