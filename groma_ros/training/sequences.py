"""Stage-2 training sequences: a scene's cached features + a text sample -> ids, loss weights, pointers.

Mirrors inference exactly (tested against ``GromaEngine``): candidates = proposals ∪ ground-truth boxes (score
0.2, Groma's ``ground_boxes``) ∪ the user box for region QA (score 1.0) -> the model's NMS -> kept regions (in a
random order during training, so "<r0>" carries no meaning) -> each object maps to its best kept region
(IoU >= 0.5) -> the sample is rendered with that map and encoded with the engine's prompt builder.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass

import torch

from groma_ros.model.modeling_groma import GromaForConditionalGeneration
from groma_ros.model.ops import box_iou, cxcywh_to_xyxy, first_argmax, nms
from groma_ros.synthetic.dialogue import Dialogue
from groma_ros.synthetic.scenes import Scene
from groma_ros.synthetic.texts import RELATIONS, TextSample, caption_sample, referenced_objects, resolve

from . import data
from .cache import SceneCache
from .recipe import RELATION_TASK, Stage2Config

_BINARY_RELATION = re.compile(rf"^the .+? (?:{'|'.join(RELATIONS)}) (the .+)$")
_EXISTS_QUESTION = re.compile(r"^is there an? (\w+) (\w+)\?$")


@dataclass
class Sequence:
    ids: torch.Tensor  # [T] expanded LLM ids
    weights: torch.Tensor  # [T] loss weight of predicting ids[t] (0 = no loss)
    region_rows: torch.Tensor  # [K] candidate rows of the regions, in <r> order
    refer_rows: torch.Tensor  # [r] candidate rows feeding <refer_feat>
    pointer: list[tuple[int, int]]  # (position whose next token is <rK>, K) for answer region tokens
    scene: SceneCache
    region_attrs: torch.Tensor  # [K, 3] colour/shape/size index of the object a region shows, -1 if none
    region_boxes: torch.Tensor  # [K, 4] kept boxes (cx, cy, w, h)
    anchors: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (pointer position, anchor region)
    # Binary relations: position of the anchor phrase's first token inside the query's <p>..</p> ("the purple
    # star" of "the square below the purple star"); the target words and relation come before it.
    anchor_split: int | None = None
    # Grounded captions: (position predicting a phrase token, region K the phrase is tied to), one per position from
    # the answer phrase's <p> to the token before its </p>, for phrases tied to exactly one region.
    phrase_pointer: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    # VQA "is there a <colour> <shape>?": (answer position, regions showing one, positions of the colour and shape
    # words in the question); no regions = the answer is "no" (the position then targets the sink, position 0).
    exists: tuple[int, list[int], list[int]] | None = None
    # Dialogues: (position answering a follow-up, position of the history's <rK> naming the referent).
    referents: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    # Dialogues: (position answering a follow-up, positions of the words inside the <p>..</p> that described the
    # referent in an earlier query), for the anchor-gather head.
    referent_words: list[tuple[int, list[int]]] = dataclasses.field(default_factory=list)

    def to(self, device: torch.device | str) -> Sequence:
        """The tensors the forward reads on ``device`` (built on the CPU: region selection there is cheaper)."""
        return dataclasses.replace(self, ids=self.ids.to(device), weights=self.weights.to(device),
                                   region_rows=self.region_rows.to(device), refer_rows=self.refer_rows.to(device),
                                   region_attrs=self.region_attrs.to(device),
                                   region_boxes=self.region_boxes.to(device))


def anchor_object(sample: TextSample, scene: Scene | None) -> int | None:
    """The anchor object of a binary relation expression ("the square below the purple shape"), if unique."""
    if scene is None or sample.task != "refer" or sample.kind != "relation":
        return None
    m = _BINARY_RELATION.match(sample.query)
    if m is None:
        return None
    try:
        found = resolve(m.group(1), scene)
    except ValueError:
        return None
    return found[0] if len(found) == 1 else None


def anchor_phrase_start(ids: list[int], tokenizer, anchor_words: int, t) -> int | None:
    """Position of the first token of the last ``anchor_words`` words inside the first ``<p>..</p>`` of ``ids``.

    SentencePiece pieces never span a space, so words start at the token after ``<p>`` and at every "▁" piece.
    """
    try:
        start = ids.index(t.by_name("<p>"))
        end = ids.index(t.by_name("</p>"), start)
    except ValueError:
        return None
    word_starts = [start + 1 + i for i in _word_starts(tokenizer.convert_ids_to_tokens(ids[start + 1:end]))]
    return word_starts[-anchor_words] if 0 < anchor_words < len(word_starts) else None


def _word_starts(pieces: list[str]) -> list[int]:
    """Indices of the pieces that start a word: the first, and every "▁" piece (pieces never span a space)."""
    return [i for i, piece in enumerate(pieces) if i == 0 or piece.startswith("▁")]


def select(scene: SceneCache, cfg, user_row: int | None,
           rng: random.Random | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept candidate rows as ``select_regions`` would keep them (+ optional user box), shuffled with ``rng``
    (``None``: score order, as the engine)."""
    boxes, scores = scene.boxes, scene.scores.clone()
    if user_row is not None:
        boxes = torch.cat([boxes, boxes[user_row:user_row + 1]])
        scores = torch.cat([scores, torch.ones(1)])
    keep = nms(cxcywh_to_xyxy(boxes), scores, cfg.nms_thres, cfg.box_score_thres, cfg.max_region_num)
    if rng is not None:
        keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))]
    rows = keep.clone()
    if user_row is not None:
        rows[keep == len(scene.boxes)] = user_row  # the user box has the GT row's feature
    return rows, boxes[keep]


def make_sequence(scene: SceneCache, samples, task: str, encoder: data.PromptEncoder, model_cfg, s2: Stage2Config,
                  rng: random.Random, shuffle: bool = True, sample=None,
                  attrs: torch.Tensor | None = None, scene_obj: Scene | None = None) -> Sequence | None:
    """One training sequence of ``task`` from ``scene`` (None if the scene has no such sample)."""
    if sample is None:
        if task == RELATION_TASK:  # relational referring expressions only (a task weight of their own)
            pool = [s for s in samples if s.task == "refer" and s.kind == "relation"]
        else:
            pool = [s for s in samples if s.task == task]
        if not pool:
            return None
        sample = rng.choice(pool)
    q = len(scene.boxes) - scene.num_objects
    user_row = q + sample.query_objects[0] if sample.query_objects else None
    rows, kept = select(scene, model_cfg, user_row, rng if shuffle else None)
    gt = scene.boxes[q:]
    iou = box_iou(cxcywh_to_xyxy(gt), cxcywh_to_xyxy(kept))
    best = iou.max(1)
    obj_to_region = {j: int(best.indices[j]) for j in range(len(gt)) if float(best.values[j]) >= 0.5}
    if not referenced_objects(sample) <= set(obj_to_region):
        return None
    if sample.task == "grounded_caption" and s2.caption_order == "regions" and scene_obj is not None:
        sample = caption_sample(scene_obj, sorted(range(len(gt)), key=lambda j: (obj_to_region[j], j)))
    refer_regions: list[int] = []
    if user_row is not None:
        refer_regions = [int(first_argmax(box_iou(cxcywh_to_xyxy(scene.boxes[user_row:user_row + 1]),
                                                  cxcywh_to_xyxy(kept)))[0])]
    enc = encoder.encode(sample, obj_to_region)
    t = model_cfg.token_ids
    ids, offset = data.expand_ids(enc.ids, t, model_cfg.num_image_tokens, len(rows), refer_regions)
    ids_t = torch.tensor(ids, dtype=torch.long)
    weights = torch.zeros(len(ids))
    start = enc.answer_start + offset
    weights[start:] = 1.0
    pointer = []
    for pos in range(start, len(ids)):
        k = t.region_of(ids[pos])
        if k is not None:
            weights[pos] = s2.region_weight
            pointer.append((pos - 1, k))
    list_pos = [p for p in range(start) if t.region_of(ids[p]) is not None and ids[p + 1] == t.region]
    weights[torch.tensor(list_pos, dtype=torch.long)] = s2.list_weight
    region_attrs = torch.full((len(rows), 3), -1, dtype=torch.long)
    if attrs is not None:
        for j, k in obj_to_region.items():
            region_attrs[k] = attrs[j]
    anchors, split = [], None
    a = anchor_object(sample, scene_obj)
    if a is not None and a in obj_to_region:
        anchors = [(p, obj_to_region[a]) for p, _ in pointer]
        anchor_np = _BINARY_RELATION.match(sample.query).group(1)
        split = anchor_phrase_start(ids, encoder.tok, len(anchor_np.split()), t)
    phrase_pointer = answer_phrase_pointers(ids, start, pointer, t) if sample.task == "grounded_caption" else []
    exists = exists_targets(sample, scene_obj, obj_to_region, ids, start, encoder.tok) if s2.exists_pointer_layers \
        else None
    return Sequence(ids_t, weights, rows, torch.tensor([int(rows[k]) for k in refer_regions], dtype=torch.long),
                    pointer, scene, region_attrs, kept.float(), anchors, split, phrase_pointer, exists)


def make_dialogue_sequence(scene: SceneCache, dialogues: list[Dialogue], encoder: data.PromptEncoder, model_cfg,
                           s2: Stage2Config, rng: random.Random, shuffle: bool = True, dialogue: Dialogue | None = None,
                           attrs: torch.Tensor | None = None) -> Sequence | None:
    """One multi-turn training sequence (None if the scene has no dialogue or its objects lack kept regions).

    Every answer is trained. A follow-up's answer position (the one before each ``<rK>``, or before the first word
    of a text answer) gets the referent as its anchor (``anchor_layers``), as ``referents`` the position of the
    ``<rK>`` by which an earlier answer named the referent (``referent_layers``) and, with ``referent_phrase``, as
    ``referent_words`` the words that described it in an earlier query (``anchor_gather_layers``)."""
    if dialogue is None:
        if not dialogues:
            return None
        dialogue = rng.choice(dialogues)
    rows, kept = select(scene, model_cfg, None, rng if shuffle else None)
    q = len(scene.boxes) - scene.num_objects
    iou = box_iou(cxcywh_to_xyxy(scene.boxes[q:]), cxcywh_to_xyxy(kept))
    best = iou.max(1)
    obj_to_region = {j: int(best.indices[j]) for j in range(len(best.values)) if float(best.values[j]) >= 0.5}
    needed = {o for turn in dialogue.turns for o in referenced_objects(turn)}
    if not needed <= set(obj_to_region):
        return None
    enc = encoder.encode_dialogue(list(dialogue.turns), obj_to_region)
    t = model_cfg.token_ids
    ids, offset = data.expand_ids(enc.ids, t, model_cfg.num_image_tokens, len(rows), [])
    weights = torch.zeros(len(ids))
    pointer: list[tuple[int, int]] = []
    anchors: list[tuple[int, int]] = []
    referents: list[tuple[int, int]] = []
    named_at: dict[int, int] = {}  # object -> position of the latest answer <rK> naming it
    described_at: dict[int, list[int]] = {}  # object -> positions of the phrase words that described it
    referent_words: list[tuple[int, list[int]]] = []
    opens, closes = t.by_name("<p>"), t.by_name("</p>")
    for (a, b), turn, referent in zip(enc.answers, dialogue.turns, dialogue.referents, strict=True):
        a, b = a + offset, b + offset
        if turn.task == "refer" and turn.kind == "attribute" and s2.referent_phrase:  # "the red circle"
            start = max(i for i in range(a) if ids[i] == opens)
            described_at[turn.answer_objects[0][0]] = list(range(start + 1, ids.index(closes, start)))
        weights[a:b] = 1.0
        answer_positions = []
        for pos in range(a, b):
            k = t.region_of(ids[pos])
            if k is not None:
                weights[pos] = s2.region_weight
                pointer.append((pos - 1, k))
                answer_positions.append(pos - 1)
        if not answer_positions:  # a text answer: the position before its first word piece
            first = a
            while first < b - 1 and encoder.tok.convert_ids_to_tokens([ids[first]])[0] == "▁":
                first += 1
            answer_positions = [first - 1]
        if referent is not None:
            anchors += [(p, obj_to_region[referent]) for p in answer_positions]
            if referent in named_at:
                referents += [(p, named_at[referent]) for p in answer_positions]
            if referent in described_at:
                referent_words += [(p, described_at[referent]) for p in answer_positions]
        if turn.task == "refer":
            for obj, pos in zip(turn.answer_objects[0], (p + 1 for p in answer_positions), strict=False):
                named_at[obj] = pos
    list_pos = [p for p in range(enc.answers[0][0] + offset) if t.region_of(ids[p]) is not None
                and ids[p + 1] == t.region]
    weights[torch.tensor(list_pos, dtype=torch.long)] = s2.list_weight
    region_attrs = torch.full((len(rows), 3), -1, dtype=torch.long)
    if attrs is not None:
        for j, k in obj_to_region.items():
            region_attrs[k] = attrs[j]
    return Sequence(torch.tensor(ids, dtype=torch.long), weights, rows, torch.empty(0, dtype=torch.long), pointer,
                    scene, region_attrs, kept.float(), anchors, None, [], None, referents, referent_words)


def exists_targets(sample: TextSample, scene: Scene | None, obj_to_region: dict[int, int], ids: list[int],
                   start: int, tokenizer) -> tuple[int, list[int], list[int]] | None:
    """``Sequence.exists`` of a VQA existence sample (None for other samples, or when an object that answers
    "yes" has no kept region, so the regions the question is about are not all visible)."""
    m = _EXISTS_QUESTION.match(sample.query) if sample.task == "vqa" and sample.kind == "exists" else None
    if m is None or scene is None:
        return None
    color, shape = m.groups()
    objects = [j for j, o in enumerate(scene.objects) if o.color == color and o.shape == shape]
    if (sample.answer == "yes") != bool(objects) or not set(objects) <= set(obj_to_region):
        return None
    words = question_word_positions(ids[:start], tokenizer, [color, shape])
    if not words:
        return None
    first = start  # the answer's first word piece (a lone "▁" space piece carries no answer yet)
    while first < len(ids) - 1 and tokenizer.convert_ids_to_tokens([ids[first]])[0] == "▁":
        first += 1
    return first - 1, sorted({obj_to_region[j] for j in objects}), words


def question_word_positions(prompt: list[int], tokenizer, words: list[str]) -> list[int]:
    """Positions of the tokens of the last occurrence of consecutive ``words`` in ``prompt``; [] when absent."""
    pieces = tokenizer.convert_ids_to_tokens(prompt)
    starts = _word_starts(pieces) + [len(pieces)]
    spans = list(zip(starts, starts[1:], strict=False))
    text = ["".join(pieces[a:b]).lstrip("▁").rstrip("?.,").lower() for a, b in spans]
    for w in range(len(spans) - len(words), -1, -1):
        if text[w:w + len(words)] == words:
            a, b = spans[w][0], spans[w + len(words) - 1][1]
            tail = pieces[b - 1]
            return list(range(a, b - 1 if tail in ("?", ".", ",") else b))
    return []


def answer_phrase_pointers(ids: list[int], start: int, pointer: list[tuple[int, int]], t) -> list[tuple[int, int]]:
    """(position, K) for every position from an answer phrase's ``<p>`` to the token before its ``</p>`` (each
    predicts the phrase's next token), K the region of the phrase's roi when it names exactly one region."""
    opens, closes = t.by_name("<p>"), t.by_name("</p>")
    out = []
    for o in (i for i in range(start, len(ids)) if ids[i] == opens):
        try:
            c = ids.index(closes, o)
        except ValueError:
            continue
        nxt = next((i for i in range(c, len(ids)) if ids[i] == opens), len(ids))
        regions = [k for p, k in pointer if c < p < nxt]
        if len(regions) == 1:
            out.extend((q, regions[0]) for q in range(o, c))
    return out


def sequence_embeds(model: GromaForConditionalGeneration, s: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings of one sequence (as ``build_inputs_embeds``) and its region tokens."""
    t = model.config.token_ids
    updims = model.region_encoder.roi_align.updims
    emb = model.embed_tokens(s.ids[None])[0]
    reg = updims(s.scene.feats.float()[s.region_rows])
    emb = emb.masked_scatter((s.ids == t.image)[:, None], model.img_txt_bridge(s.scene.merged.float()))
    emb = emb.masked_scatter((s.ids == t.region)[:, None], reg)
    if len(s.refer_rows):
        emb = emb.masked_scatter((s.ids == t.refer_feat)[:, None], updims(s.scene.feats.float()[s.refer_rows]))
    return emb, reg


def sequence_hidden(model: GromaForConditionalGeneration, s: Sequence) -> torch.Tensor:
    """Final hidden states [T, H] of one sequence (tests compare them with the engine)."""
    return model.llm.model(inputs_embeds=sequence_embeds(model, s)[0][None]).last_hidden_state[0]
