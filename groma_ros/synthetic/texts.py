"""Texts for every Groma task, generated from a scene's exact attributes, with object-level references.

Why object references: the ``<rK>`` a box maps to depends on which regions the proposer keeps (known only at
training/eval time).  So samples carry placeholders and object indices, and ``render`` substitutes them:

* ``{roiI}`` (in answers) -> ``<roi><rA><rB>...</roi>`` for the objects ``answer_objects[I]`` (in order);
* ``{referI}`` (in queries) -> ``<roi><refer_box></roi><refer_feat>``; the user box is ``query_objects[I]``.

What ``query`` is, per task (the prompt builder, ``engine/prompts.py``, owns the wording around it):

=================  ===========================================  ==============================================
task               query                                        answer
=================  ===========================================  ==============================================
refer              expression only: ``the large blue square``   ``{roi0}``  (kind ``attribute``/``relation``)
                   (wrap: ``Locate <p>{expr}</p> in the image.``)
refer_multi        expression only: ``all the red shapes``      ``{roi0}``, objects sorted left to right
grounded_caption   ``describe the image briefly.``              ``a <p>red circle</p>{roi0} above a <p>...``
                   (prefix ``[grounding]``, no space)
region_qa          ``what colour is {refer0}?``                 ``yellow`` / ``a small yellow triangle``
vqa                ``how many circles are there?``              ``2`` / ``yes`` / ``no``
=================  ===========================================  ==============================================

Semantics (also used by ``resolve``, which re-evaluates any expression against a scene):

* attributes: size (``small|medium|large``), colour, shape; a noun phrase is
  ``[size] [colour] (shape-kind|shape)`` in that fixed order; ``shape`` matches any kind.
* ``A left of B``: A's centre is left of B's and the offset is mostly horizontal (``dx > |dy|``); likewise
  ``right of``, ``above``, ``below``.  Extremes (``leftmost``...) compare centres; ``largest``/``smallest``
  compare size classes.  Generated expressions hold with a margin (``TextConfig.margin``) and every other
  candidate fails with that margin, so they stay unambiguous to the eye.
* Words used are exactly ``VOCABULARY`` (see VOCABULARY.md); ``corpus_texts`` is the tokenizer's corpus.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np

from .scenes import COLORS as _COLORS
from .scenes import SHAPES, SIZE_RANK, SIZES, Scene, SceneConfig, SceneObject, generate_scene, split_seeds

COLORS: tuple[str, ...] = tuple(_COLORS)
TASKS: tuple[str, ...] = ("refer", "refer_multi", "grounded_caption", "region_qa", "vqa")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
EXTREMES: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost")
SUPERLATIVES: tuple[str, ...] = ("largest", "smallest")
CAPTION_QUERY = "describe the image briefly."
REFER_TOKEN_TEXT = "<roi><refer_box></roi><refer_feat>"

_PLURAL = {s: s + "es" if s.endswith("ss") else s + "s" for s in (*SHAPES, "shape")}
_QUESTION_WORDS = ("what", "is", "colour", "shape", "size", "how", "many", "are", "there", "yes", "no")
DIALOGUE_WORDS: frozenset[str] = frozenset({"other", "one", "it", "and", "bigger", "smaller"})
"""Words only the follow-up turns of ``dialogue`` use ("the other one", "and the bigger one?")."""
VOCABULARY: frozenset[str] = frozenset(
    {"the", "a", "an", "all", "of", "left", "right", "above", "below", "describe", "image", "briefly",
     *SHAPES, "shape", *_PLURAL.values(), *COLORS, *SIZES, *EXTREMES, *SUPERLATIVES, *_QUESTION_WORDS,
     *DIALOGUE_WORDS, *(str(i) for i in range(10))})
"""Every word in any query/answer, dialogues included (after removing placeholders, ``<p>``/``</p>`` and ``?.``)."""


@dataclass(frozen=True)
class TextConfig:
    margin: float = 0.05  # relation/extreme margin, fraction of the image size (6.4 px at 128)
    overspecify_prob: float = 0.3  # attribute refs: sometimes more attributes than needed, as users do
    absent_count_questions: int = 1  # "how many X" with answer 0, per scene and per attribute kind


@dataclass(frozen=True)
class TextSample:
    """One query/answer pair; placeholders refer to objects (see module docstring)."""

    task: str
    query: str
    answer: str
    query_objects: list[int] = field(default_factory=list)
    answer_objects: list[list[int]] = field(default_factory=list)
    kind: str = ""


# ---------------------------------------------------------------------------------- rendering

_PLACEHOLDER = re.compile(r"\{(roi|refer)(\d+)\}")


def render(sample: TextSample, object_to_region: dict[int, int]) -> tuple[str, str]:
    """(query, answer) with placeholders replaced by Groma's tokens; KeyError if an object has no region."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) == "refer":
            return REFER_TOKEN_TEXT
        objs = sample.answer_objects[int(m.group(2))]
        missing = [o for o in objs if o not in object_to_region]
        if missing:
            raise KeyError(f"objects {missing} have no kept region")
        return "<roi>" + "".join(f"<r{object_to_region[o]}>" for o in objs) + "</roi>"

    return _PLACEHOLDER.sub(sub, sample.query), _PLACEHOLDER.sub(sub, sample.answer)


def referenced_objects(sample: TextSample) -> set[int]:
    """Objects that need a kept region for ``render`` to succeed (else the trainer skips the sample)."""
    return {o for objs in sample.answer_objects for o in objs}


def plain_text(text: str, keep_markup: bool = False) -> str:
    """Text with placeholders (and ``<p>``/``</p>`` unless keep_markup) removed, spaces collapsed."""
    text = _PLACEHOLDER.sub(" ", text)
    if not keep_markup:
        text = re.sub(r"</?p>", " ", text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------------- phrases

_ATTRS = ("size", "color", "shape")


def _attr(o: SceneObject, name: str) -> str:
    return getattr(o, name)


def noun_phrase(attrs: dict[str, str], plural: bool = False) -> str:
    """``[size] [colour] (kind|shape)``, fixed order so phrases are canonical."""
    noun = attrs.get("shape", "shape")
    words = [attrs[a] for a in ("size", "color") if a in attrs] + [_PLURAL[noun] if plural else noun]
    return " ".join(words)


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _matches(o: SceneObject, attrs: dict[str, str]) -> bool:
    return all(_attr(o, k) == v for k, v in attrs.items())


def _select(objects: list[SceneObject], attrs: dict[str, str]) -> list[int]:
    return [i for i, o in enumerate(objects) if _matches(o, attrs)]


def _left_to_right(objects: list[SceneObject], idx: list[int]) -> list[int]:
    return sorted(idx, key=lambda i: (objects[i].center[0], objects[i].center[1]))


def describe(o: SceneObject) -> str:
    """Canonical full description, ``a small yellow triangle`` (size colour shape)."""
    return with_article(noun_phrase({"size": o.size, "color": o.color, "shape": o.shape}))


# ---------------------------------------------------------------------------------- relations

def relation_kind(query: str) -> str:
    """Which reasoning a relational expression needs: ``extreme`` ("the leftmost red shape"), ``superlative``
    ("the largest circle") or ``binary`` ("the square left of the green star")."""
    first = query.split(" ")[1] if query.startswith("the ") else ""
    return "extreme" if first in EXTREMES else "superlative" if first in SUPERLATIVES else "binary"


def _rel_score(t: SceneObject, a: SceneObject, rel: str) -> float:
    """> 0 when ``t rel a`` holds (dominant-direction semantics); the value is the slack in pixels."""
    dx = a.center[0] - t.center[0]  # > 0: t is left of a
    dy = a.center[1] - t.center[1]  # > 0: t is above a
    main, other = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[rel]
    return main - abs(other)


def _coord(o: SceneObject, extreme: str) -> float:
    """Smaller is 'more extreme'."""
    x, y = o.center
    return {"leftmost": x, "rightmost": -x, "topmost": y, "bottommost": -y}[extreme]


def _size_key(o: SceneObject, sup: str) -> int:
    return -SIZE_RANK[o.size] if sup == "largest" else SIZE_RANK[o.size]


# ---------------------------------------------------------------------------------- refer

def _subsets(keys: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [c for r in range(len(keys) + 1) for c in itertools.combinations(keys, r)]


def _unique_attr_sets(objects: list[SceneObject], t: int) -> list[tuple[str, ...]]:
    """Attribute subsets (non-empty) that select only object ``t``."""
    o = objects[t]
    return [s for s in _subsets(_ATTRS)[1:] if _select(objects, {k: _attr(o, k) for k in s}) == [t]]


def _attr_expression(rng: np.random.Generator, objects: list[SceneObject], t: int,
                     cfg: TextConfig) -> str | None:
    sets = _unique_attr_sets(objects, t)
    if not sets:
        return None
    smallest = min(len(s) for s in sets)
    minimal = [s for s in sets if len(s) == smallest]
    longer = [s for s in sets if len(s) > smallest]
    if longer and rng.random() < cfg.overspecify_prob:
        # Half the time the everyday form "the red circle" (when it is unique), else any longer unique set.
        natural = ("color", "shape") in longer and rng.random() < 0.5
        chosen = ("color", "shape") if natural else longer[rng.integers(len(longer))]
    else:
        chosen = minimal[rng.integers(len(minimal))]
    return "the " + noun_phrase({k: _attr(objects[t], k) for k in chosen})


def _noun_classes(o: SceneObject) -> list[dict[str, str]]:
    """Noun phrases (no size) that include ``o``: shape, circle, red shape, red circle."""
    return [{k: _attr(o, k) for k in s} for s in _subsets(("color", "shape"))]


def _extreme_candidates(objects: list[SceneObject], t: int, margin: float) -> list[str]:
    out = []
    for attrs in _noun_classes(objects[t]):
        members = _select(objects, attrs)
        if len(members) < 2:
            continue
        others = [objects[i] for i in members if i != t]
        for ext in EXTREMES:
            if all(_coord(o, ext) - _coord(objects[t], ext) >= margin for o in others):
                out.append(f"the {ext} {noun_phrase(attrs)}")
        for sup in SUPERLATIVES:
            if all(_size_key(o, sup) > _size_key(objects[t], sup) for o in others):
                out.append(f"the {sup} {noun_phrase(attrs)}")
    return out


def _anchor_phrase(objects: list[SceneObject], a: int) -> str | None:
    """Minimal unique attribute phrase of the anchor, chosen deterministically (shortest, colour first)."""
    sets = _unique_attr_sets(objects, a)
    if not sets:
        return None
    best = min(sets, key=lambda s: (len(s), "color" not in s, "shape" not in s))
    return noun_phrase({k: _attr(objects[a], k) for k in best})


def _binary_candidates(objects: list[SceneObject], t: int, margin: float) -> list[str]:
    out = []
    for a in range(len(objects)):
        anchor = _anchor_phrase(objects, a) if a != t else None
        if anchor is None:
            continue
        for attrs in _noun_classes(objects[t]):
            cands = [i for i in _select(objects, attrs) if i != a]
            if len(cands) < 2:  # the relation must be what disambiguates
                continue
            for rel in RELATIONS:
                if _rel_score(objects[t], objects[a], rel) < margin:
                    continue
                if all(_rel_score(objects[i], objects[a], rel) <= -margin for i in cands if i != t):
                    out.append(f"the {noun_phrase(attrs)} {rel} the {anchor}")
    return out


def _refer_samples(rng: np.random.Generator, scene: Scene, cfg: TextConfig,
                   margin: float) -> list[TextSample]:
    objs, out = scene.objects, []
    for t in range(len(objs)):
        expr = _attr_expression(rng, objs, t, cfg)
        if expr:
            out.append(TextSample("refer", expr, "{roi0}", [], [[t]], "attribute"))
        rel = _extreme_candidates(objs, t, margin) + _binary_candidates(objs, t, margin)
        if rel:
            out.append(TextSample("refer", rel[rng.integers(len(rel))], "{roi0}", [], [[t]], "relation"))
    return out


def _multi_samples(scene: Scene) -> list[TextSample]:
    objs, out, seen = scene.objects, [], set()
    for o in objs:
        for kind, attrs in (("colour", {"color": o.color}), ("shape", {"shape": o.shape}),
                            ("colour_shape", {"color": o.color, "shape": o.shape})):
            key = tuple(sorted(attrs.items()))
            members = _select(objs, attrs)
            if key in seen or (kind == "colour_shape" and len(members) < 2):
                continue
            seen.add(key)
            out.append(TextSample("refer_multi", "all the " + noun_phrase(attrs, plural=True), "{roi0}", [],
                                  [_left_to_right(objs, members)], kind))
    return out


# ---------------------------------------------------------------------------------- captions, QA

def _caption_phrase(objects: list[SceneObject], i: int) -> str:
    o = objects[i]
    attrs = {"color": o.color, "shape": o.shape}
    if len(_select(objects, attrs)) > 1:
        attrs["size"] = o.size
    return noun_phrase(attrs)


def _connector(a: SceneObject, b: SceneObject) -> str:
    """How ``a`` relates to the next object ``b``: above/below when mostly vertical, else left/right of (left to
    right, ``a`` is never right of ``b``)."""
    for rel in ("above", "below"):
        if _rel_score(a, b, rel) > 0:
            return rel
    return "right of" if a.center[0] > b.center[0] else "left of"


def caption_sample(scene: Scene, order: list[int] | None = None) -> TextSample:
    """The grounded caption: every object once, left to right unless ``order`` (object indices) is given
    (its phrase-box pairs, which the caption F1 scores, do not depend on the order)."""
    objs = scene.objects
    order = _left_to_right(objs, list(range(len(objs)))) if order is None else list(order)
    parts = []
    for k, i in enumerate(order):
        phrase = _caption_phrase(objs, i)
        parts.append(f"{'a' if phrase[0] not in 'aeiou' else 'an'} <p>{phrase}</p>{{roi{k}}}")
        if k + 1 < len(order):
            parts.append(_connector(objs[i], objs[order[k + 1]]))
    return TextSample("grounded_caption", CAPTION_QUERY, " ".join(parts), [], [[i] for i in order], "caption")


def _region_samples(scene: Scene) -> list[TextSample]:
    out = []
    for i, o in enumerate(scene.objects):
        out.append(TextSample("region_qa", "what is {refer0}?", describe(o), [i], [], "what"))
        for word, value in (("colour", o.color), ("shape", o.shape), ("size", o.size)):
            out.append(TextSample("region_qa", f"what {word} is {{refer0}}?", value, [i], [], word))
    return out


def _pick_absent(rng: np.random.Generator, values: tuple[str, ...], present: set[str], k: int) -> list[str]:
    absent = [v for v in values if v not in present]
    return [absent[j] for j in rng.permutation(len(absent))[:k]]


def _vqa_samples(rng: np.random.Generator, scene: Scene, cfg: TextConfig) -> list[TextSample]:
    objs = scene.objects
    out = [TextSample("vqa", "how many shapes are there?", str(len(objs)), kind="count")]
    shapes, colors = {o.shape for o in objs}, {o.color for o in objs}
    n = cfg.absent_count_questions
    for s in sorted(shapes) + _pick_absent(rng, SHAPES, shapes, n):
        count = sum(o.shape == s for o in objs)
        out.append(TextSample("vqa", f"how many {_PLURAL[s]} are there?", str(count), kind="count"))
    for c in sorted(colors) + _pick_absent(rng, COLORS, colors, n):
        count = sum(o.color == c for o in objs)
        out.append(TextSample("vqa", f"how many {c} shapes are there?", str(count), kind="count"))
    present = sorted({(o.color, o.shape) for o in objs})
    # Near misses (a present colour or shape) make "no" answers require binding colour to shape.
    near = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present and (c in colors or s in shapes)]
    absent = [near[j] for j in rng.permutation(len(near))[:len(present)]]
    for (c, s), yes in [(p, True) for p in present] + [(p, False) for p in absent]:
        out.append(TextSample("vqa", f"is there {with_article(c + ' ' + s)}?", "yes" if yes else "no",
                              kind="exists"))
    return out


def generate_samples(scene: Scene, config: TextConfig | None = None,
                     image_size: int | None = None) -> list[TextSample]:
    """All samples of every task for ``scene``; deterministic (rng derived from the scene seed)."""
    cfg = config or TextConfig()
    size = image_size or scene.image.shape[1]
    rng = np.random.default_rng([scene.seed, 0x7E575])
    if not scene.objects:
        return []
    return (_refer_samples(rng, scene, cfg, cfg.margin * size) + _multi_samples(scene)
            + [caption_sample(scene)] + _region_samples(scene) + _vqa_samples(rng, scene, cfg))


def corpus_texts(n_scenes: int, split: str = "train", scene_config: SceneConfig | None = None,
                 keep_markup: bool = False) -> list[str]:
    """Query/answer texts of the first ``n_scenes`` of ``split``, placeholders removed (tokenizer corpus)."""
    texts: list[str] = []
    for seed in split_seeds(split, n_scenes):
        for s in generate_samples(generate_scene(seed, scene_config)):
            pair = (plain_text(s.query, keep_markup), plain_text(s.answer, keep_markup))
            texts.extend(t for t in pair if t)
    return texts


def words(text: str) -> list[str]:
    """Words of a plain text (punctuation ``?.`` dropped), for vocabulary checks."""
    return re.sub(r"[?.]", " ", text).split()


# ---------------------------------------------------------------------------------- resolve

_SIZE_RE = "|".join(SIZES)
_COLOR_RE = "|".join(COLORS)
_NOUN_RE = "|".join(sorted({*SHAPES, "shape"}, key=len, reverse=True))
_NP = rf"(?:(?P<{{p}}size>{_SIZE_RE}) )?(?:(?P<{{p}}color>{_COLOR_RE}) )?(?P<{{p}}noun>{_NOUN_RE})"
_SINGLE_NP = _NP.format(p="t")
_ANCHOR_NP = _NP.format(p="a")
_REL_RE = re.compile(rf"^the {_SINGLE_NP} (?P<rel>{'|'.join(RELATIONS)}) the {_ANCHOR_NP}$")
_SUP_RE = re.compile(rf"^the (?P<sup>{'|'.join(EXTREMES + SUPERLATIVES)}) {_SINGLE_NP}$")
_ATTR_RE = re.compile(rf"^the {_SINGLE_NP}$")
_MULTI_RE = re.compile(rf"^all the (?:(?P<color>{_COLOR_RE}) )?(?P<noun>{'|'.join(_PLURAL.values())})$")


def _np_attrs(m: re.Match[str], p: str) -> dict[str, str]:
    attrs = {k: m.group(p + k) for k in ("size", "color") if m.group(p + k)}
    if m.group(p + "noun") != "shape":
        attrs["shape"] = m.group(p + "noun")
    return attrs


def resolve(expression: str, scene: Scene) -> list[int]:
    """Objects an expression refers to under the plain semantics (no margins); [] if none or anchor ambiguous.

    Independent of how expressions are generated, so tests and demos can check any text against a scene.
    Multi-object results are sorted left to right.  ValueError on text outside the grammar.
    """
    objs, e = scene.objects, " ".join(expression.lower().strip().rstrip(".").split())
    if m := _MULTI_RE.match(e):
        noun = {v: k for k, v in _PLURAL.items()}[m.group("noun")]
        attrs = {"color": m.group("color")} if m.group("color") else {}
        if noun != "shape":
            attrs["shape"] = noun
        return _left_to_right(objs, _select(objs, attrs))
    if m := _REL_RE.match(e):
        anchors = _select(objs, _np_attrs(m, "a"))
        if len(anchors) != 1:
            return []
        a = anchors[0]
        return [i for i in _select(objs, _np_attrs(m, "t"))
                if i != a and _rel_score(objs[i], objs[a], m.group("rel")) > 0]
    if m := _SUP_RE.match(e):
        members, sup = _select(objs, _np_attrs(m, "t")), m.group("sup")
        key = (lambda i: _size_key(objs[i], sup)) if sup in SUPERLATIVES else (lambda i: _coord(objs[i], sup))
        best = min((key(i) for i in members), default=None)
        return [i for i in members if key(i) == best]
    if m := _ATTR_RE.match(e):
        return _select(objs, _np_attrs(m, "t"))
    raise ValueError(f"expression outside the grammar: {expression!r}")
