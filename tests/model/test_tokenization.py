"""GromaTokenizer reproduces transformers 4.32's slow LlamaTokenizer ids.

The test SentencePiece model gets whole words as ``user_defined_symbols`` ("▁the", "the", ...), which
SentencePiece always emits as single pieces, so every expectation below can be derived by hand from the
4.32 algorithm (module docstring of tokenization_groma): split on tokens, strip whitespace, encode each
segment (legacy: with SentencePiece's dummy "▁" prefix; non-legacy: without), prepend <s>.
Characters absent from the training text ("?", "€") fall back to byte pieces.
"""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from groma_ros.engine.prompts import PREFIX, PromptBuilder
from groma_ros.model.tokenization_groma import (
    GROMA_ADDED_TOKENS,
    GromaTokenizer,
    train_sentencepiece,
)

WORDS = [
    "▁the",
    "the",
    "▁mug",
    "mug",
    "▁red",
    "red",
    "▁Locate",
    "▁in",
    "in",
    "▁image",
    "image",
    "▁USER",
    "USER",
    "▁ASSISTANT",
    "ASSISTANT",
    "▁what",
    "what",
    "▁is",
    "is",
    "▁this",
    "▁a",
    "▁cup",
    "cup",
]
CORPUS = ["the red mug is in the image. USER: ASSISTANT: what is this a cup, Thank you! How"] * 8


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    train_sentencepiece(CORPUS, 320, path, user_defined_symbols=WORDS)
    return str(path)


@pytest.fixture(scope="module")
def tok(sp_model: str) -> GromaTokenizer:
    return GromaTokenizer.from_model_file(sp_model, legacy=True)


@pytest.fixture(scope="module")
def tok_nl(sp_model: str) -> GromaTokenizer:
    return GromaTokenizer.from_model_file(sp_model, legacy=False)


def ids(t: GromaTokenizer, pieces: list[str]) -> list[int]:
    return [t.token_to_id(p) for p in pieces]


# ------------------------------------------------------------------ model + vocabulary
def test_trained_model_is_llama_shaped(sp_model: str) -> None:
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert all(sp.is_byte(sp.piece_to_id(f"<0x{b:02X}>")) for b in range(256))  # byte fallback
    assert sp.encode("the mug", out_type=str) == ["▁the", "▁mug"]  # dummy prefix on


def test_added_tokens_release_order(tok: GromaTokenizer) -> None:
    v = tok.vocab_size
    assert len(tok) == v + 114
    assert [tok.token_to_id(t) for t in GROMA_ADDED_TOKENS] == list(range(v, v + 114))
    assert tok.token_to_id("[PAD]") == v and tok.token_to_id("[grounding]") == v + 13
    assert tok.region_id(0) == v + 14 and tok.region_id(99) == v + 113
    assert tok.region_of(v + 17) == 3 and tok.region_of(5) is None
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, v)
    assert tok.special_ids["boe"] == tok.token_to_id("<p>") and tok.special_ids["unk"] == 0
    assert tok.convert_ids_to_tokens([1, 2, v + 6]) == ["<s>", "</s>", "<p>"]
    with pytest.raises(ValueError):
        tok.region_id(100)
    with pytest.raises(ValueError):
        tok.convert_ids_to_tokens(len(tok))
    with pytest.raises(KeyError):
        tok.token_to_id("not-a-piece")


# ------------------------------------------------------------------ encode: hand-derived expectations
LEGACY_CASES = [
    # Split -> ["Locate ", "<p>", "the red mug", "</p>", " in the image."]; <p>/</p> strip both sides ->
    # "Locate" | "the red mug" | "in the image."; each segment gets SentencePiece's dummy "▁".
    (
        "Locate <p>the red mug</p> in the image.",
        ["<s>", "▁Locate", "<p>", "▁the", "▁red", "▁mug", "</p>", "▁in", "▁the", "▁image", "."],
    ),
    # </s> is an AddedToken(lstrip=False, rstrip=False): nothing stripped, no space here anyway;
    # "USER: ..." after it still gets the dummy "▁" in legacy mode.
    (
        "a cup</s>USER: what is this? ASSISTANT:",
        ["<s>", "▁a", "▁cup", "</s>", "▁USER", ":", "▁what", "▁is", "▁this", "<0x3F>", "▁ASSISTANT", ":"],
    ),
    # Whitespace around </s> is kept: "a " -> ["▁a", "▁"], " the" -> dummy "▁" + "▁the" -> ["▁", "▁the"].
    ("a </s> the", ["<s>", "▁a", "▁", "</s>", "▁", "▁the"]),
    # ... but around an added token it is stripped on both sides, even several spaces / newlines.
    ("a  \n<roi>\t the", ["<s>", "▁a", "<roi>", "▁the"]),
    # Adjacent tokens: empty segments vanish; <r1> vs <r10> are different whole tokens.
    ("<roi><r1><r10></roi>", ["<s>", "<roi>", "<r1>", "<r10>", "</roi>"]),
    # A "▁" typed by the user is kept as is in legacy mode (a leading "▁" plus the dummy one).
    ("▁the", ["<s>", "▁", "▁the"]),
    # [grounding] + instruction with no space, as flickr.py builds it.
    ("[grounding]what is this", ["<s>", "[grounding]", "▁what", "▁is", "▁this"]),
]

NON_LEGACY_CASES = [
    # legacy=False: "▁" is prepended to the whole text (-> "▁Locate"), segments after a token are encoded
    # as "<unk>" + segment with the "<unk>" pieces removed, so they get NO "▁": "the", "in".
    (
        "Locate <p>the red mug</p> in the image.",
        ["<s>", "▁Locate", "<p>", "the", "▁red", "▁mug", "</p>", "in", "▁the", "▁image", "."],
    ),
    # After </s>: "USER" without "▁" (this is what the released model saw in every prompt).
    (
        "a cup</s>USER: what is this? ASSISTANT:",
        ["<s>", "▁a", "▁cup", "</s>", "USER", ":", "▁what", "▁is", "▁this", "<0x3F>", "▁ASSISTANT", ":"],
    ),
    # Text starting with a token: the prepended "▁" stays a piece, unless the token is special
    # (<s> </s> <unk> [PAD]), where 4.32 drops it ("tokens[0] == SPIECE_UNDERLINE and tokens[1] in
    # all_special_tokens"). <p> is not special in 4.32's sense.
    ("<p>the", ["<s>", "▁", "<p>", "the"]),
    ("</s>the", ["<s>", "</s>", "the"]),
    # Whitespace kept around </s>: " the" keeps its own space as "▁the" (no extra dummy "▁").
    ("a </s> the", ["<s>", "▁a", "▁", "</s>", "▁the"]),
    # A user "▁" becomes a space first: "▁the" -> "▁" + " the" -> "▁▁the" -> ["▁", "▁the"].
    ("▁the", ["<s>", "▁", "▁the"]),
    ("[grounding]what is this", ["<s>", "▁", "[grounding]", "what", "▁is", "▁this"]),
]


@pytest.mark.parametrize("text,pieces", LEGACY_CASES)
def test_encode_legacy(tok: GromaTokenizer, text: str, pieces: list[str]) -> None:
    assert tok.encode(text) == ids(tok, pieces)


@pytest.mark.parametrize("text,pieces", NON_LEGACY_CASES)
def test_encode_non_legacy(tok_nl: GromaTokenizer, text: str, pieces: list[str]) -> None:
    assert tok_nl.encode(text) == ids(tok_nl, pieces)


def test_empty_and_bos(tok: GromaTokenizer, tok_nl: GromaTokenizer) -> None:
    for t in (tok, tok_nl):
        assert t.encode("") == [1]
        assert t.encode("", add_bos=False) == []
        assert t.encode("the", add_bos=False)[0] != 1


def test_plain_string_special_from_map_strips(tmp_path, sp_model: str) -> None:
    """A bare string in special_tokens_map.json is set as ``str`` by 4.32: it strips like an added token."""
    d = tmp_path / "tok"
    GromaTokenizer.from_model_file(sp_model, legacy=True).save_pretrained(d)
    smap = json.loads((d / "special_tokens_map.json").read_text())
    smap["eos_token"] = "</s>"
    (d / "special_tokens_map.json").write_text(json.dumps(smap))
    t = GromaTokenizer.from_pretrained(d)
    assert t.encode("a </s> the") == ids(t, ["<s>", "▁a", "</s>", "▁the"])


# ------------------------------------------------------------------ prompt-prefix caching
@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize(
    "task,query,boxes",
    [
        ("refer", "pick up the red mug", 0),
        ("grounded_caption", "", 0),
        ("region_qa", "what is this?", 1),
        ("vqa", "  is the mug red?  ", 0),
        ("refer", "find all the cups", 0),
        ("region_qa", "", 3),
    ],
)
def test_prefix_suffix_split(sp_model: str, legacy: bool, task: str, query: str, boxes: int) -> None:
    t = GromaTokenizer.from_model_file(sp_model, legacy=legacy)
    p = PromptBuilder().build(task, query, boxes)
    assert p.prefix == PREFIX and PREFIX.endswith("</s>")
    assert t.encode(p.prefix + p.suffix) == t.encode(p.prefix) + t.encode(p.suffix, add_bos=False)


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet="the mug<>/ps\n ▁?", max_size=12),
    st.sampled_from(["</s>", "<s>", "<image>", "<roi>", "<r5>", "[grounding]"]),
    st.text(alphabet="the mugin?▁<>/r5", min_size=0, max_size=12),
)
def test_split_after_token_property(
    tok: GromaTokenizer, tok_nl: GromaTokenizer, a: str, special: str, b: str
) -> None:
    """Splitting right after a token gives the same ids: always after ``<s>``/``</s>`` (they strip no
    whitespace; the engine splits after ``</s>``), after other tokens when the suffix does not start
    with whitespace (which they would strip; "▁" counts as a space for legacy=False)."""
    if special not in ("</s>", "<s>"):
        b = b.lstrip(" \n▁")
    for t in (tok, tok_nl):
        assert t.encode(a + special + b) == t.encode(a + special) + t.encode(b, add_bos=False)


# ------------------------------------------------------------------ decoding
def test_decode_round_trip(tok: GromaTokenizer, tok_nl: GromaTokenizer, sp_model: str) -> None:
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    for text in ["the red mug is in the image.", "what is this? €5 日本", "  two  spaces", "a\nnew line"]:
        for t in (tok, tok_nl):
            assert t.decode(t.encode(text), skip_special_tokens=True) == text
        assert tok.decode(tok.encode(text, add_bos=False)) == sp.decode(sp.encode(text))
    # With tags: legacy=False gives back the text with whitespace next to tags removed (that is what
    # the ids carry); legacy=True gives the dummy "▁" back as a space after each tag.
    text = "Locate <p>the red mug</p> in the image."
    assert tok_nl.decode(tok_nl.encode(text)) == "<s> Locate<p>the red mug</p>in the image."
    assert tok.decode(tok.encode(text)) == "<s> Locate<p> the red mug</p> in the image."
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == "Locate<p> the red mug</p> in the image."


def test_decode_skip_special(tok: GromaTokenizer) -> None:
    v = tok.vocab_size
    seq = [1, tok.token_to_id("▁the"), v + 4, v + 17, v + 5, 2, v]  # <s> the<roi><r3></roi></s>[PAD]
    assert tok.decode(seq) == "<s> the<roi><r3></roi></s>[PAD]"
    assert tok.decode(seq, skip_special_tokens=True) == "the<roi><r3></roi>"


def _byte_ids(t: GromaTokenizer, s: str) -> list[int]:
    return [t.token_to_id(f"<0x{b:02X}>") for b in s.encode("utf-8")]


def test_incremental_decode_multibyte(tok: GromaTokenizer) -> None:
    seq = [tok.token_to_id("▁the")] + _byte_ids(tok, "€日") + [tok.token_to_id("▁mug")]
    dec = tok.incremental_decoder()
    parts = [dec.push(i) for i in seq]
    assert parts[1:3] == ["", ""]  # first two bytes of "€" are held back
    assert "".join(parts) + dec.flush() == tok.decode(seq) == "the€日 mug"
    # A cut multibyte sequence becomes U+FFFD, identically in both paths.
    cut = _byte_ids(tok, "€")[:2] + [tok.token_to_id("▁a")]
    dec = tok.incremental_decoder()
    assert "".join(dec.push(i) for i in cut) + dec.flush() == tok.decode(cut) == "\ufffd a"


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_incremental_equals_batch(tok: GromaTokenizer, data: st.DataObject) -> None:
    # Bias towards byte pieces so multi-byte merges across tokens are exercised.
    pool = st.one_of(
        st.integers(0, len(tok) - 1),
        st.integers(3, 3 + 255),
        st.sampled_from(_byte_ids(tok, "€日é")),
    )
    seq = data.draw(st.lists(pool, max_size=25))
    skip = data.draw(st.booleans())
    dec = tok.incremental_decoder(skip_special_tokens=skip)
    streamed = "".join(dec.push(i) for i in seq) + dec.flush()
    assert streamed == tok.decode(seq, skip_special_tokens=skip)


# ------------------------------------------------------------------ files
def test_save_and_load(tmp_path, tok_nl: GromaTokenizer) -> None:
    d = tmp_path / "tok"
    tok_nl.save_pretrained(d)
    assert {p.name for p in d.iterdir()} == {
        "tokenizer.model",
        "added_tokens.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["legacy"] is False and cfg["tokenizer_class"] == "LlamaTokenizer"
    added = json.loads((d / "added_tokens.json").read_text())
    assert added["[PAD]"] == tok_nl.vocab_size and added["<r99>"] == tok_nl.vocab_size + 113
    again = GromaTokenizer.from_pretrained(d)
    text = "Locate <p>the red mug</p> in the image.</s>USER: what is this?"
    assert again.legacy is False and again.encode(text) == tok_nl.encode(text) and len(again) == len(tok_nl)


def test_load_bare_and_bad_dirs(tmp_path, sp_model: str) -> None:
    d = tmp_path / "bare"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(open(sp_model, "rb").read())
    t = GromaTokenizer.from_pretrained(d)  # no json at all: legacy default True, 114 tokens added
    assert t.legacy is True and len(t) == t.vocab_size + 114
    (d / "added_tokens.json").write_text(json.dumps({"[PAD]": t.vocab_size + 5}))
    with pytest.raises(ValueError, match="consecutive"):
        GromaTokenizer.from_pretrained(d)
    (d / "added_tokens.json").write_text(json.dumps({"[PAD]": t.vocab_size}))
    assert GromaTokenizer.from_pretrained(d).token_to_id("<r0>") == t.vocab_size + 14
    with pytest.raises(FileNotFoundError):
        GromaTokenizer.from_pretrained(tmp_path / "missing")


def test_token_ids_and_texts_are_inverse():
    from groma_ros.model.configuration_groma import GromaTokenIds
    from groma_ros.model.special_tokens import GROMA_TOKENS

    ids = GromaTokenIds(vocab=32000, num_regions=100)
    for text in (*GROMA_TOKENS, "<r0>", "<r99>"):
        assert ids.text_of(ids.by_name(text)) == text
    assert ids.region_of(ids.region_id(7)) == 7 and ids.region_of(ids.refer_box) is None
    with pytest.raises(KeyError):
        ids.text_of(5)
    with pytest.raises(KeyError):
        ids.by_name("<r01>")  # no leading zeros: the tokenizer has no such token either
