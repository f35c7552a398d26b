"""The output parser: a table of tricky answers, token-id input, streaming, and a never-raises fuzz."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groma_ros.engine.parsing import ParsedOutput, StreamParser, parse_ids, parse_text
from groma_ros.model.tokenization_groma import GromaTokenizer, train_sentencepiece

# (raw, num_regions, expression, text, [(phrase, start, end, regions)], warning substrings, stopped)
CASES = [
    # REFER answer: bare roi -> the query expression, no span.
    ("<roi><r3></roi></s>", 10, "the red mug", "", [("the red mug", -1, -1, (3,))], [], True),
    # Grounded caption, several regions in one roi; "</roi>is" (legacy=False, no "▁") gets a space.
    (
        "<p>A man</p><roi><r1><r4></roi>is riding <p>a horse</p><roi><r2></roi>.</s>",
        10,
        None,
        "A man is riding a horse.",
        [("A man", 0, 5, (1, 4)), ("a horse", 16, 23, (2,))],
        [],
        True,
    ),
    # 4.32-decode style spacing ("<p> the cup </p> <roi> <r3> </roi>"): same result, no " ." at the end.
    (
        "<p> the cup </p> <roi> <r3> </roi> is on <p> the table </p> <roi> <r5> </roi> .",
        10,
        None,
        "the cup is on the table.",
        [("the cup", 0, 7, (3,)), ("the table", 14, 23, (5,))],
        [],
        False,
    ),
    # Unclosed <p> at the end: text kept, nothing grounded.
    ("<p>a dog", 10, None, "a dog", [], ["unclosed <p> at the end"], False),
    # Unclosed <p> before <roi>: the phrase ends there.
    (
        "<p>a dog<roi><r1></roi> runs",
        10,
        None,
        "a dog runs",
        [("a dog", 0, 5, (1,))],
        ["unclosed <p> before <roi>"],
        False,
    ),
    # Repeated <rN> in one roi: kept once, order kept.
    ("<roi><r2><r1><r2></roi>", 10, "x", "", [("x", -1, -1, (2, 1))], ["repeated <r2>"], False),
    # <rN> beyond the kept regions: dropped; an roi left empty makes no item.
    ("<roi><r12></roi>", 10, "x", "", [], ["dropped <r12>", "without a valid region"], False),
    ("<roi><r1><r12></roi>", 10, "x", "", [("x", -1, -1, (1,))], ["dropped <r12>"], False),
    # Stray closing tags are ignored.
    ("a</p> b</roi> c", 10, None, "a b c", [], ["stray </p>", "stray </roi>"], False),
    # <rN> without <roi>: an implicit roi per run of <r>s.
    (
        "<r3><r4> and <r5>",
        10,
        "mugs",
        "and",
        [("mugs", -1, -1, (3, 4)), ("mugs", -1, -1, (5,))],
        ["<r3> outside <roi>", "<r5> outside <roi>"],
        False,
    ),
    # Phrase directly followed by a bare <rN>: the phrase is kept.
    ("<p>cup</p><r2>", 10, None, "cup", [("cup", 0, 3, (2,))], ["<r2> outside <roi>"], False),
    # Empty output.
    ("", 10, None, "", [], [], False),
    # Unclosed roi at the end is closed.
    ("<roi><r3>", 10, "m", "", [("m", -1, -1, (3,))], ["unclosed <roi> at the end"], False),
    # Everything after </s> is ignored.
    ("<roi><r3></roi></s><p>junk</p><roi><r4></roi>", 10, "m", "", [("m", -1, -1, (3,))], [], True),
    # Possessive after a tag: no space before the apostrophe.
    ("<p>the man</p><roi><r1></roi>'s hat", 10, None, "the man's hat", [("the man", 0, 7, (1,))], [], False),
    # Whitespace (newlines too) collapses to single spaces, text is stripped.
    ("  a\n\nb \t c  ", None, None, "a b c", [], [], False),
    # Empty phrase: the roi becomes a bare item.
    ("<p></p><roi><r1></roi>", 10, "e", "", [("e", -1, -1, (1,))], ["empty <p></p> phrase"], False),
    ("<roi></roi>", 10, None, "", [], ["<roi> without a valid region"], False),
    # Nested <p>: the phrase restarts at the inner one.
    ("<p>a<p>b</p><roi><r0></roi>", 10, None, "a b", [("b", 2, 3, (0,))], ["restarting the phrase"], False),
    # A tag cut at the end of the text is dropped.
    ("x <ro", None, None, "x", [], ["truncated tag"], False),
    # Other control tokens are removed (and separate words).
    ("<image>[grounding]<unk>hi[PAD]there<sep>", None, None, "hi there", [], [], False),
    # A phrase never followed by an roi is not an item.
    ("<p>lonely</p> text", 10, None, "lonely text", [], ["has no <roi>"], False),
    # Two rois after one phrase: the second is bare (expression).
    (
        "<p>two</p><roi><r1></roi><roi><r2></roi>",
        10,
        "e",
        "two",
        [("two", 0, 3, (1,)), ("e", -1, -1, (2,))],
        [],
        False,
    ),
    # Not a region token (leading zero) -> stripped like any tag, nothing grounded.
    ("<r0099> ok", 10, None, "ok", [], [], False),
    # num_regions = 0 (nothing kept): every region dropped.
    ("<roi><r0></roi>", 0, "e", "", [], ["dropped <r0>"], False),
    # Unclosed roi followed by text: closed there.
    (
        "<p>cat</p><roi><r1> sleeps",
        10,
        None,
        "cat sleeps",
        [("cat", 0, 3, (1,))],
        ["unclosed <roi> before text"],
        False,
    ),
    # Text that merely looks like a comparison is kept.
    ("a < b and c > d", None, None, "a < b and c > d", [], [], False),
    # Unicode phrase spans index characters.
    (
        "<p>café crème</p><roi><r1></roi> ☕",
        5,
        None,
        "café crème ☕",
        [("café crème", 0, 10, (1,))],
        [],
        False,
    ),
]


@pytest.mark.parametrize("raw,n,expr,text,items,warns,stopped", CASES)
def test_table(raw, n, expr, text, items, warns, stopped) -> None:
    out = parse_text(raw, num_regions=n, expression=expr)
    assert out.text == text
    assert [(i.phrase, i.start, i.end, i.region_indices) for i in out.items] == items
    for w in warns:
        assert any(w in x for x in out.warnings), (w, out.warnings)
    if not warns:
        assert out.warnings == []
    assert out.stopped is stopped and out.raw_text == raw
    _check_invariants(out, 100 if n is None else n)


def test_region_indices_property() -> None:
    out = parse_text("<p>a</p><roi><r3><r1></roi> <p>b</p><roi><r1><r7></roi>")
    assert out.region_indices == [3, 1, 7]


def test_streaming_hides_partial_tags() -> None:
    sp = StreamParser(num_regions=10)
    seen = []
    for chunk in ["<p>the", " mug</", "p><r", "oi><r", "3></ro", "i> is red", "</s>"]:
        sp.feed(chunk)
        snap = sp.snapshot()
        assert "<" not in snap.text  # a half-received tag never shows up as text
        seen.append(snap.text)
    assert seen[1] == "the mug"
    final = sp.finish()
    assert final.text == "the mug is red" and final.stopped
    assert [(i.phrase, i.region_indices) for i in final.items] == [("the mug", (3,))]


# ------------------------------------------------------------------ token ids
@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> GromaTokenizer:
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    train_sentencepiece(
        ["a man is riding a horse on the beach. the red mug."] * 8,
        300,
        path,
        user_defined_symbols=["▁a", "▁man", "man", "▁is", "is", "▁riding", "▁horse", "▁the"],
    )
    return GromaTokenizer.from_model_file(path, legacy=False)


def _ids(tok: GromaTokenizer, text: str) -> list[int]:
    return tok.encode(text, add_bos=False)


def test_parse_ids_grounded(tok: GromaTokenizer) -> None:
    ids = _ids(tok, "<p>a man</p><roi><r1><r4></roi>is riding <p>a horse</p><roi><r2></roi>.</s>")
    out = parse_ids(ids, tok, num_regions=10)
    assert out.text == "a man is riding a horse."
    assert [(i.phrase, i.start, i.end, i.region_indices) for i in out.items] == [
        ("a man", 0, 5, (1, 4)),
        ("a horse", 16, 23, (2,)),
    ]
    assert out.stopped and out.warnings == []
    assert out.raw_text == tok.decode(ids)
    # Same answer as parsing the decoded string.
    again = parse_text(out.raw_text, num_regions=10)
    assert (again.text, again.items) == (out.text, out.items)


def test_parse_ids_garbage(tok: GromaTokenizer) -> None:
    ids = [-1, tok.token_to_id("<roi>"), 10**9, tok.region_id(3), "x", None, tok.token_to_id("</roi>")]
    out = parse_ids(ids, tok, num_regions=5, expression="the mug")
    assert [(i.phrase, i.region_indices) for i in out.items] == [("the mug", (3,))]
    assert sum("dropped" in w for w in out.warnings) == 4


def test_parse_ids_literal_angle_text_is_not_a_tag(tok: GromaTokenizer) -> None:
    """Bytes spelling "<p>" are text in the id path: only real token ids are tags."""
    fake = [tok.token_to_id(f"<0x{b:02X}>") for b in b"<p>"]
    out = parse_ids(fake + [tok.token_to_id("▁man")], tok)
    assert out.items == [] and out.text == "<p> man"


def test_parse_ids_multibyte_and_empty(tok: GromaTokenizer) -> None:
    euro = [tok.token_to_id(f"<0x{b:02X}>") for b in "€".encode()]
    out = parse_ids(
        [tok.token_to_id("<p>")]
        + euro
        + [
            tok.token_to_id("</p>"),
            tok.token_to_id("<roi>"),
            tok.region_id(0),
            tok.token_to_id("</roi>"),
        ],
        tok,
        num_regions=1,
    )
    assert out.text == "€" and out.items[0].phrase == "€"
    assert parse_ids([], tok).text == ""


# ------------------------------------------------------------------ fuzz
ATOMS = [
    "[PAD",
    "]",
    "<p>",
    "</p>",
    "<roi>",
    "</roi>",
    "</s>",
    "<s>",
    "<image>",
    "[grounding]",
    " ",
    "  ",
    "\n",
    "a",
    "dog",
    "café",
    ".",
    ",",
    "'",
    "<",
    ">",
    "[",
    "<ro",
    "i>",
    "p>",
    "<r",
    "1>",
    "</",
    "\t",
] + [f"<r{i}>" for i in range(13)]


GROMA_TAG = re.compile(
    r"</?(?:p|roi|img)>|<r\d+>|</?s>|<(?:unk|sep|image|region|refer_box|ground_box|refer_feat)>|\[(?:PAD|grounding)\]"
)


def _check_invariants(out: ParsedOutput, limit: int) -> None:
    t = out.text
    assert t == t.strip() and "  " not in t and "\n" not in t and "\t" not in t
    assert GROMA_TAG.search(t) is None, t
    for item in out.items:
        assert item.region_indices and len(set(item.region_indices)) == len(item.region_indices)
        assert all(0 <= r < limit for r in item.region_indices)
        if item.start == -1:
            assert item.end == -1
        else:
            assert 0 <= item.start < item.end <= len(t)
            assert t[item.start : item.end] == item.phrase == item.phrase.strip()


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(ATOMS), max_size=30),
    st.one_of(st.none(), st.integers(0, 12)),
    st.one_of(st.none(), st.text(max_size=5)),
)
def test_fuzz_tag_soup(atoms: list[str], n: int | None, expr: str | None) -> None:
    raw = "".join(atoms)
    out = parse_text(raw, num_regions=n, expression=expr)
    _check_invariants(out, 100 if n is None else n)
    for k in range(0, len(raw), 7):  # every streamed prefix parses too
        _check_invariants(parse_text(raw[:k], num_regions=n, final=False), 100 if n is None else n)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_any_text(raw: str) -> None:
    _check_invariants(parse_text(raw), 100)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 500), max_size=30), st.one_of(st.none(), st.integers(0, 12)))
def test_fuzz_ids(tok: GromaTokenizer, ids: list[int], n: int | None) -> None:
    out = parse_ids(ids, tok, num_regions=n)
    assert isinstance(out, ParsedOutput)
    for item in out.items:
        assert all(0 <= r < (100 if n is None else n) for r in item.region_indices)
        if item.start >= 0:
            assert out.text[item.start : item.end] == item.phrase
