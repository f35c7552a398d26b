"""SentencePiece tokenizer that reproduces the ids of Groma's original tokenizer.

The released model was trained and evaluated with the *slow* ``LlamaTokenizer`` of transformers 4.32
(``use_fast=False``) plus 114 added tokens. Newer transformers tokenize text next to added tokens
differently (whitespace next to added tokens, ``legacy`` prefixes), and the model only understands the ids
it was trained with, so this module re-implements the 4.32 algorithm on top of ``sentencepiece`` alone:

1. ``legacy=False`` only: replace every "▁" in the text by " " and prepend one "▁"; the SentencePiece
   model is loaded with ``add_dummy_prefix`` switched off.
2. Split the text on added/special tokens (leftmost, longest match).
3. Strip whitespace next to tokens: the 4 special tokens (``<s> </s> <unk> [PAD]``) follow their
   ``AddedToken`` ``lstrip``/``rstrip`` flags (``False`` unless the config says otherwise); every other
   added token strips whitespace on BOTH sides.
4. Encode each text segment: ``legacy=True`` -> plain ``sp.encode`` (dummy prefix adds "▁" to every
   segment); ``legacy=False`` -> encode ``"<unk>" + segment`` and drop the pieces of ``"<unk>"`` (so no "▁"
   is added after a token).
5. ``legacy=False`` only: drop a leading lone "▁" piece if the next token is special.
6. Pieces -> ids (added tokens first, then the SentencePiece vocabulary); prepend ``<s>``.

Decoding renders pieces one by one ("▁" -> " ", byte pieces merged into UTF-8) and drops one leading
space at the very start of the output, so token-by-token decoding gives the same text as decoding at once.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from .special_tokens import GROMA_TOKEN_NAMES, GROMA_TOKENS, NUM_REGION_TOKENS, region_tokens

SPIECE_UNDERLINE = "▁"
# added to the LLaMA vocabulary in this order (after any of <s>, </s>, <unk> the vocabulary lacks)
GROMA_ADDED_TOKENS: tuple[str, ...] = GROMA_TOKENS + region_tokens(NUM_REGION_TOKENS)

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
# Appending this to a serialized ModelProto merges ``normalizer_spec { add_dummy_prefix: false }`` into
# it (protobuf merges repeated embedded messages): what 4.32's ``get_spm_processor`` does with protobuf.
_NO_DUMMY_PREFIX_PATCH = bytes([0x1A, 0x02, 0x18, 0x00])


@dataclass(frozen=True)
class SpecialToken:
    """A special token (bos/eos/unk/pad) as 4.32 holds it.

    ``plain=False``: an ``AddedToken``, whose ``lstrip``/``rstrip`` flags decide the whitespace stripping.
    ``plain=True``: a bare ``str`` (e.g. ``tokenizer.pad_token = "[PAD]"`` in train.py, or a string in
    special_tokens_map.json), which 4.32 strips on both sides like any added token.
    """

    content: str
    lstrip: bool = False
    rstrip: bool = False
    plain: bool = False


def _special_from_config(value: object, default: str, plain_str: bool) -> SpecialToken:
    """A special-token entry of tokenizer_config.json / special_tokens_map.json -> ``SpecialToken``.

    4.32 turns a dict into an ``AddedToken``. A string passed to ``LlamaTokenizer.__init__`` (from
    tokenizer_config.json) is wrapped as ``AddedToken(lstrip=False, rstrip=False)``, but a string from
    special_tokens_map.json is ``setattr`` as a bare ``str`` (tokenization_utils_base.py:2030-2043).
    """
    if isinstance(value, dict):
        return SpecialToken(
            str(value.get("content", default)), bool(value.get("lstrip")), bool(value.get("rstrip"))
        )
    if isinstance(value, str):
        return SpecialToken(value, plain=plain_str)
    return SpecialToken(default)


class GromaTokenizer:
    """LLaMA SentencePiece tokenizer + Groma's added tokens, ids identical to transformers 4.32 slow.

    ``len(tok)`` is the total vocabulary (base + added); ``tok.vocab_size`` the SentencePiece part.
    ``added_tokens=None`` adds the 114 Groma tokens in release order (after any special token missing
    from the SentencePiece vocabulary, as 4.32 does when loading); ``[]`` adds nothing.
    """

    def __init__(
        self,
        model_proto: bytes,
        added_tokens: Sequence[str] | None = None,
        *,
        legacy: bool = True,
        add_bos: bool = True,
        bos: SpecialToken | str = "<s>",
        eos: SpecialToken | str = "</s>",
        unk: SpecialToken | str = "<unk>",
        pad: SpecialToken | str | None = "[PAD]",
        additional_special_tokens: Sequence[str] = (),
    ) -> None:
        self._proto = bytes(model_proto)
        self.legacy = bool(legacy)
        self.add_bos = bool(add_bos)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        # The legacy=False path loads the model with add_dummy_prefix off (4.32 get_spm_processor).
        self._sp_enc = (
            self._sp
            if self.legacy
            else spm.SentencePieceProcessor(model_proto=self._proto + _NO_DUMMY_PREFIX_PATCH)
        )
        self._specials = {
            name: (tok if isinstance(tok, SpecialToken) else SpecialToken(tok))
            for name, tok in (("bos", bos), ("eos", eos), ("unk", unk), ("pad", pad))
            if tok is not None
        }
        self.additional_special_tokens = tuple(additional_special_tokens)
        self._unk_len = len(self._sp_enc.encode(self._specials["unk"].content))

        self._added: dict[str, int] = {}
        self._added_by_id: dict[int, str] = {}
        if added_tokens is None or len(added_tokens):
            self._add_missing_specials()
        for token in GROMA_ADDED_TOKENS if added_tokens is None else added_tokens:
            self._add_token(token)
        self._rebuild()

    # ------------------------------------------------------------------ construction / files
    def _add_token(self, token: str) -> None:
        """4.32 ``_add_tokens``: a token already known (added or in the SP vocab) is not added again."""
        if token in self._added or self._sp_piece_id(token) is not None:
            return
        new_id = len(self)
        self._added[token] = new_id
        self._added_by_id[new_id] = token

    def _add_missing_specials(self) -> None:
        """4.32 ``sanitize_special_tokens``: special tokens missing from the vocabulary get new ids."""
        for s in self._specials.values():
            self._add_token(s.content)
        for t in self.additional_special_tokens:
            self._add_token(t)

    def _rebuild(self) -> None:
        self._all_special = [s.content for s in self._specials.values()] + list(
            self.additional_special_tokens
        )
        # 4.32's unique_no_split_tokens: all added tokens + all special tokens.
        self._no_split = set(self._added) | set(self._all_special)
        self._split_re = re.compile(
            "|".join(re.escape(t) for t in sorted(self._no_split, key=lambda t: (-len(t), t)))
        )
        # Only AddedToken specials have flags (4.32 all_special_tokens_extended filtered on AddedToken);
        # everything else in the split set strips whitespace on both sides.
        self._strip: dict[str, tuple[bool, bool]] = {t: (True, True) for t in self._no_split}
        for s in self._specials.values():  # bos, eos, unk, pad: later ones win, as in 4.32
            if not s.plain:
                self._strip[s.content] = (s.lstrip, s.rstrip)
        self.special_ids: dict[str, int] = {
            name: self._added[tok] for name, tok in GROMA_TOKEN_NAMES.items() if tok in self._added
        }
        for name in ("bos", "eos", "unk"):
            self.special_ids[name] = self.token_to_id(self._specials[name].content)
        self._region_ids = tuple(self._added.get(t, -1) for t in region_tokens(NUM_REGION_TOKENS))
        self._region_index = {i: n for n, i in enumerate(self._region_ids) if i >= 0}

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> GromaTokenizer:
        """Load a transformers-style tokenizer directory (``tokenizer.model`` + optional json files).

        ``added_tokens.json`` ids must continue the SentencePiece vocabulary (4.32 slow-tokenizer rule);
        any of the 114 Groma tokens it lacks is appended in release order, as ``train.py`` does.
        """
        d = Path(directory)
        model_file = d / "tokenizer.model"
        if not model_file.is_file():
            raise FileNotFoundError(f"no tokenizer.model in {d}")
        config = _read_json(d / "tokenizer_config.json")
        smap = _read_json(d / "special_tokens_map.json")
        specials = {}
        for name, default in (("bos", "<s>"), ("eos", "</s>"), ("unk", "<unk>"), ("pad", "[PAD]")):
            key = f"{name}_token"
            if key in smap:
                specials[name] = _special_from_config(smap[key], default, plain_str=True)
            elif key in config and config[key] is not None:
                specials[name] = _special_from_config(config[key], default, plain_str=False)
            else:
                specials[name] = SpecialToken(default)
        extra = smap.get("additional_special_tokens", config.get("additional_special_tokens", [])) or []
        extra = [t["content"] if isinstance(t, dict) else str(t) for t in extra]
        legacy = config.get("legacy")
        tok = cls(
            model_file.read_bytes(),
            added_tokens=[],
            legacy=True if legacy is None else bool(legacy),
            add_bos=bool(config.get("add_bos_token", True)),
            additional_special_tokens=extra,
            **specials,
        )
        added = _read_json(d / "added_tokens.json")
        for token, index in sorted(added.items(), key=lambda kv: kv[1]):
            if index != len(tok):
                raise ValueError(
                    f"added_tokens.json: {token!r} has id {index}, expected {len(tok)} "
                    f"(ids must be consecutive after the SentencePiece vocabulary of {tok.vocab_size})"
                )
            tok._add_token(token)
        tok._add_missing_specials()  # after added_tokens.json, as in 4.32 _from_pretrained
        for token in GROMA_ADDED_TOKENS:
            tok._add_token(token)
        tok._rebuild()
        return tok

    @classmethod
    def from_model_file(cls, path: str | os.PathLike, **kwargs: object) -> GromaTokenizer:
        """A tokenizer from a bare ``tokenizer.model`` with the 114 Groma tokens added in release order."""
        return cls(Path(path).read_bytes(), **kwargs)  # type: ignore[arg-type]

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the four files that both ``from_pretrained`` and transformers 4.32 read back."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "tokenizer.model").write_bytes(self._proto)
        _write_json(d / "added_tokens.json", dict(self._added))

        def entry(s: SpecialToken) -> dict[str, object]:
            return {
                "content": s.content,
                "lstrip": s.lstrip,
                "normalized": False,
                "rstrip": s.rstrip,
                "single_word": False,
            }

        smap: dict[str, object] = {
            f"{n}_token": s.content if s.plain else entry(s) for n, s in self._specials.items()
        }
        if self.additional_special_tokens:
            smap["additional_special_tokens"] = list(self.additional_special_tokens)
        _write_json(d / "special_tokens_map.json", smap)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "add_bos_token": self.add_bos,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "legacy": self.legacy,
            "model_max_length": 2048,
            "padding_side": "right",
            "sp_model_kwargs": {},
        }
        for n, s in self._specials.items():
            config[f"{n}_token"] = s.content if s.plain else {"__type": "AddedToken", **entry(s)}
        _write_json(d / "tokenizer_config.json", config)

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """Size of the SentencePiece (base LLaMA) vocabulary; added tokens start here."""
        return self._sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size + len(self._added)

    @property
    def added_tokens(self) -> dict[str, int]:
        return dict(self._added)

    @property
    def all_special_tokens(self) -> list[str]:
        """4.32 ``all_special_tokens``: bos, eos, unk, pad + additional (NOT the Groma tags)."""
        return list(self._all_special)

    @property
    def bos_id(self) -> int:
        return self.special_ids["bos"]

    @property
    def eos_id(self) -> int:
        return self.special_ids["eos"]

    @property
    def pad_id(self) -> int:
        """``[PAD]`` (Groma's pad, train.py); the configured pad token if ``[PAD]`` is absent."""
        if "pad" in self.special_ids:
            return self.special_ids["pad"]
        return self.token_to_id(self._specials["pad"].content) if "pad" in self._specials else self.eos_id

    @property
    def region_ids(self) -> tuple[int, ...]:
        """Ids of ``<r0>``..``<r99>`` (index n -> id of ``<rn>``)."""
        return self._region_ids

    def region_id(self, n: int) -> int:
        """Id of ``<r{n}>``, the token naming kept region ``n``."""
        if not 0 <= n < NUM_REGION_TOKENS or self._region_ids[n] < 0:
            raise ValueError(f"no region token <r{n}> (0..{NUM_REGION_TOKENS - 1})")
        return self._region_ids[n]

    def region_of(self, token_id: int) -> int | None:
        """``n`` if ``token_id`` is ``<rn>``, else ``None``."""
        return self._region_index.get(token_id)

    def _sp_piece_id(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        return i if self._sp.id_to_piece(i) == piece else None

    def token_to_id(self, token: str) -> int:
        """Id of an added token or SentencePiece piece; ``KeyError`` if neither."""
        if token in self._added:
            return self._added[token]
        i = self._sp_piece_id(token)
        if i is None:
            raise KeyError(f"unknown token {token!r}")
        return i

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Piece strings (``"▁the"``, ``"<0x0A>"``, ``"<p>"``); ``ValueError`` on an id outside the vocab."""
        if isinstance(ids, int):
            return self._id_to_token(ids)
        return [self._id_to_token(int(i)) for i in ids]

    def _id_to_token(self, i: int) -> str:
        if 0 <= i < self.vocab_size:
            return self._sp.id_to_piece(i)
        if i in self._added_by_id:
            return self._added_by_id[i]
        raise ValueError(f"token id {i} outside the vocabulary (0..{len(self) - 1})")

    def is_added_id(self, i: int) -> bool:
        """True for the Groma tokens (``[PAD]``, ``<p>``, ``<r3>``...), which are not SentencePiece pieces."""
        return i in self._added_by_id

    # ------------------------------------------------------------------ encoding
    def tokenize(self, text: str, continuation: bool = False) -> list[str]:
        """4.32 ``LlamaTokenizer.tokenize`` (pieces, no BOS).

        ``continuation=True`` encodes ``text`` as the segment it would be right after a no-strip special
        token (such as ``</s>``) of a longer string: no "▁" is prepended (``legacy=False``). That makes
        ``encode(a + b) == encode(a) + encode(b, add_bos=False)`` when ``a`` ends with such a token.
        """
        if not text:
            return []
        if not self.legacy:
            text = text.replace(SPIECE_UNDERLINE, " ")
            if not continuation:
                text = SPIECE_UNDERLINE + text
        segments = self._split(text)
        pieces: list[str] = []
        for seg in segments:
            if not seg:
                continue
            if seg in self._no_split:
                pieces.append(seg)
            else:
                pieces.extend(self._encode_segment(seg))
        if (
            not self.legacy
            and not continuation
            and len(pieces) > 1
            and pieces[0] == SPIECE_UNDERLINE
            and pieces[1] in self._all_special
        ):
            pieces = pieces[1:]
        return pieces

    def _split(self, text: str) -> list[str]:
        """Trie split on no-split tokens, then the 4.32 whitespace stripping around them."""
        parts: list[str] = []
        pos = 0
        for m in self._split_re.finditer(text):
            if m.start() > pos:
                parts.append(text[pos : m.start()])
            parts.append(m.group())
            pos = m.end()
        if pos < len(text):
            parts.append(text[pos:])
        # In 4.32 every segment is either a token or text, and text never matches a token, so a segment
        # "is a token" exactly when it equals one; the loop order does not matter (strip is idempotent).
        is_tok = [p in self._no_split for p in parts]
        for i, p in enumerate(parts):
            if not is_tok[i]:
                continue
            lstrip, rstrip = self._strip[p]
            if rstrip and i + 1 < len(parts) and not is_tok[i + 1]:
                parts[i + 1] = parts[i + 1].lstrip()
            if lstrip and i > 0 and not is_tok[i - 1]:
                parts[i - 1] = parts[i - 1].rstrip()
        return parts

    def _encode_segment(self, seg: str) -> list[str]:
        if self.legacy:
            return self._sp_enc.encode(seg, out_type=str)
        pieces = self._sp_enc.encode(self._specials["unk"].content + seg, out_type=str)
        return pieces[self._unk_len :]

    def _piece_to_id(self, piece: str) -> int:
        if piece in self._added:
            return self._added[piece]
        return self._sp.piece_to_id(piece)  # unknown piece -> unk id, as sp does

    def encode(self, text: str, add_bos: bool = True, continuation: bool | None = None) -> list[int]:
        """Token ids of ``text`` as the 4.32 slow tokenizer gives them (``tokenizer(text).input_ids``).

        ``continuation`` defaults to ``not add_bos``: text encoded without BOS is taken to continue a
        sequence right after a special token (see ``tokenize``), which is what prompt-prefix caching needs.
        """
        if continuation is None:
            continuation = not add_bos
        ids = [self._piece_to_id(p) for p in self.tokenize(text, continuation=continuation)]
        if add_bos and self.add_bos:
            ids.insert(0, self.bos_id)
        return ids

    def __call__(self, text: str, add_bos: bool = True) -> list[int]:
        return self.encode(text, add_bos=add_bos)

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``: pieces rendered in order, tags verbatim, no spaces added around tags.

        ``skip_special_tokens`` drops ``<s> </s> <unk> [PAD]`` (4.32's ``all_special_ids``); the Groma tags
        (``<p>``, ``<roi>``, ``<r3>``...) stay, as in the original. ``ValueError`` on ids outside the vocab.
        """
        dec = IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)
        out = [dec.push(int(i)) for i in ids]
        out.append(dec.flush())
        return "".join(out)

    def incremental_decoder(self, skip_special_tokens: bool = False) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)

    def _render(self, i: int) -> tuple[str, bytes | None, bool]:
        """(text, raw byte or None, is_special) for one id; the unit both decoders share."""
        if i in self._added_by_id:
            tok = self._added_by_id[i]
            return tok, None, tok in self._all_special
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} outside the vocabulary (0..{len(self) - 1})")
        piece = self._sp.id_to_piece(i)
        if self._sp.is_byte(i):
            m = _BYTE_PIECE.match(piece)
            return "", bytes([int(m.group(1), 16)]) if m else b"", False
        if self._sp.is_control(i) or self._sp.is_unknown(i):
            return piece, None, True
        return piece.replace(SPIECE_UNDERLINE, " "), None, False


class IncrementalDecoder:
    """Streaming decode: ``"".join(push(i) for i in ids) + flush() == tok.decode(ids)``.

    Holds back only an incomplete UTF-8 sequence of byte-fallback pieces (e.g. the 3 bytes of "€").
    """

    def __init__(self, tokenizer: GromaTokenizer, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True

    def push(self, token_id: int) -> str:
        """Feed one id; return the text that became final."""
        text, byte, special = self._tok._render(int(token_id))
        if byte is not None:
            return self._emit(self._utf8.decode(byte))
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        if special and self._skip:
            return self._emit(out)
        return self._emit(out) + self._emit(text)

    def flush(self) -> str:
        """End of stream: emit held-back bytes (invalid ones as U+FFFD)."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return self._emit(out)

    def _emit(self, text: str) -> str:
        # SentencePiece / 4.32 drop the space of the first piece's "▁" at the start of the output.
        if text and self._at_start:
            self._at_start = False
            if text.startswith(" "):
                text = text[1:]
        return text


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Mapping[str, object]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_path: str | os.PathLike,
    user_defined_symbols: Sequence[str] = (),
    model_type: str = "bpe",
) -> Path:
    """Train a small LLaMA-style SentencePiece model (for tests and the embedded demo model).

    Same layout as LLaMA's ``tokenizer.model``: BPE, byte fallback, ``<unk>``=0 ``<s>``=1 ``</s>``=2,
    no pad, identity normalisation, dummy prefix on, extra whitespace kept, digits split.
    ``vocab_size`` is an upper bound (``hard_vocab_limit`` off) and must exceed 259 (3 + 256 bytes).
    """
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t]),
        model_writer=buf,
        model_type=model_type,
        vocab_size=vocab_size,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=list(user_defined_symbols),
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    path = Path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path
