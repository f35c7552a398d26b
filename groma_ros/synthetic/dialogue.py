"""Referential dialogues about one scene: a referring first turn, then follow-ups that refer back to it.

A dialogue is what a user holds with the robot about one frame: "the red circle" -> ``<roi><r3></roi>``, then
"the other one", "the one left of it", "and the bigger one?" or "what colour is it?". Every follow-up refers to
the **referent**: the object the latest referring answer pointed at (a question about it does not change it).

Follow-up forms (``kind``) and their semantics, with R the referent (``resolve_followup`` implements them):

=============  ===================================  =============================================================
kind           query                                answer
=============  ===================================  =============================================================
other          ``the other one``                    the one other object of R's shape (exactly two exist)
relation       ``the one (left of|right of|above    the object in that relation to R (dominant-direction
               |below) it``                         semantics as in ``texts``); generated with the margin, every
                                                    other object failing by the margin
comparative    ``and the (bigger|smaller) one?``    the one object of R's shape whose size class is larger
                                                    (smaller) than R's
attribute      ``what (colour|shape|size) is it?``  R's colour / shape / size (a VQA answer, no box)
=============  ===================================  =============================================================

"other" and "comparative" say "one" for "a shape like it", so they follow only a referring expression that
named R's shape ("the red circle" -> "the other one" is the other circle). The first turn is an attribute
referring expression (``texts``' rule, seeded by the scene). The answers use ``texts``' placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .scenes import SIZE_RANK, Scene, SceneObject
from .texts import RELATIONS, TextConfig, TextSample, _attr_expression, _rel_score

FOLLOWUP_KINDS: tuple[str, ...] = ("other", "relation", "comparative", "attribute")
COMPARATIVES: dict[str, int] = {"bigger": 1, "smaller": -1}  # word -> sign of the size-rank difference to R
ATTRIBUTE_WORDS: dict[str, str] = {"colour": "color", "shape": "shape", "size": "size"}
THIRD_TURN_PROB = 0.5  # dialogues that get a third turn (about the second turn's referent)

_OTHER_RE = re.compile(r"^the other one$")
_RELATION_RE = re.compile(rf"^the one (?P<rel>{'|'.join(RELATIONS)}) it$")
_COMPARATIVE_RE = re.compile(rf"^(?:and )?the (?P<cmp>{'|'.join(COMPARATIVES)}) one$")
_ATTRIBUTE_RE = re.compile(rf"^what (?P<attr>{'|'.join(ATTRIBUTE_WORDS)}) is it$")


@dataclass(frozen=True)
class Dialogue:
    """Turns of one conversation; ``referents[i]`` is the object turn ``i`` refers back to (None on turn 0)."""

    turns: tuple[TextSample, ...]
    referents: tuple[int | None, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(t.kind for t in self.turns)


def _names_shape(expression: str, o: SceneObject) -> bool:
    return expression.split()[-1] == o.shape


def _same_shape(objects: list[SceneObject], r: int) -> list[int]:
    return [i for i, o in enumerate(objects) if i != r and o.shape == objects[r].shape]


def _followups(objects: list[SceneObject], r: int, named_shape: bool, margin: float) -> dict[str, list[TextSample]]:
    """Every valid follow-up about referent ``r``, by kind."""
    out: dict[str, list[TextSample]] = {k: [] for k in FOLLOWUP_KINDS}
    same = _same_shape(objects, r)
    if named_shape and len(same) == 1:
        out["other"].append(TextSample("refer", "the other one", "{roi0}", [], [[same[0]]], "other"))
    for rel in RELATIONS:
        scores = {i: _rel_score(o, objects[r], rel) for i, o in enumerate(objects) if i != r}
        hits = [i for i, s in scores.items() if s >= margin]
        if len(hits) == 1 and all(s <= -margin for i, s in scores.items() if i != hits[0]):
            out["relation"].append(TextSample("refer", f"the one {rel} it", "{roi0}", [], [hits], "relation"))
    if named_shape:
        for word, sign in COMPARATIVES.items():
            hits = [i for i in same if (SIZE_RANK[objects[i].size] - SIZE_RANK[objects[r].size]) * sign > 0]
            if len(hits) == 1:
                out["comparative"].append(TextSample("refer", f"and the {word} one?", "{roi0}", [], [hits],
                                                     "comparative"))
    for word, attr in ATTRIBUTE_WORDS.items():
        out["attribute"].append(TextSample("vqa", f"what {word} is it?", getattr(objects[r], attr), [], [],
                                           "attribute"))
    return out


def _next_referent(sample: TextSample, referent: int) -> int:
    return sample.answer_objects[0][0] if sample.task == "refer" else referent


def generate_dialogues(scene: Scene, config: TextConfig | None = None,
                       image_size: int | None = None) -> list[Dialogue]:
    """Dialogues about ``scene``: per object with an attribute expression, one per follow-up kind that applies
    (a random instance of it), half of them with a third turn about the new referent. Deterministic per seed."""
    cfg = config or TextConfig()
    size = image_size or scene.image.shape[1]
    margin = cfg.margin * size
    objs = scene.objects
    rng = np.random.default_rng([scene.seed, 0xD1A10])
    out: list[Dialogue] = []
    for t in range(len(objs)):
        expr = _attr_expression(rng, objs, t, cfg)
        if expr is None:
            continue
        first = TextSample("refer", expr, "{roi0}", [], [[t]], "attribute")
        options = _followups(objs, t, _names_shape(expr, objs[t]), margin)
        for kind in FOLLOWUP_KINDS:
            if not options[kind]:
                continue
            second = options[kind][rng.integers(len(options[kind]))]
            turns, referents = [first, second], [None, t]
            if rng.random() < THIRD_TURN_PROB:
                r2 = _next_referent(second, t)
                named = second.kind == "attribute" and _names_shape(expr, objs[t])
                more = [s for ss in _followups(objs, r2, named, margin).values() for s in ss
                        if s.query != second.query]
                if more:
                    turns.append(more[rng.integers(len(more))])
                    referents.append(r2)
            out.append(Dialogue(tuple(turns), tuple(referents)))
    return out


def resolve_followup(text: str, referent: int, scene: Scene) -> list[int] | str:
    """What a follow-up about object ``referent`` means under the plain semantics (no margins): the objects it
    refers to ([] if none), or the answer word of an attribute question. ValueError outside the forms above."""
    objs, r = scene.objects, referent
    e = " ".join(text.lower().strip().rstrip("?.").split())
    if _OTHER_RE.match(e):
        return _same_shape(objs, r)
    if m := _RELATION_RE.match(e):
        return [i for i, o in enumerate(objs) if i != r and _rel_score(o, objs[r], m.group("rel")) > 0]
    if m := _COMPARATIVE_RE.match(e):
        sign = COMPARATIVES[m.group("cmp")]
        return [i for i in _same_shape(objs, r) if (SIZE_RANK[objs[i].size] - SIZE_RANK[objs[r].size]) * sign > 0]
    if m := _ATTRIBUTE_RE.match(e):
        return str(getattr(objs[r], ATTRIBUTE_WORDS[m.group("attr")]))
    raise ValueError(f"follow-up outside the dialogue forms: {text!r}")
