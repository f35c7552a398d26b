"""Metrics for the synthetic Groma (numpy only) and the table ``python -m groma_ros.evaluate`` prints.

Boxes are xyxy in any consistent unit.  Region indices ``N`` in generated text index the model's kept regions
(in score order); an index ``>= K`` is dropped, as in Groma's own eval scripts.  REC is always reported
next to two baselines -- a random kept region and always ``<r0>`` -- because kept regions are
score-ordered and a constant answer can look good.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .scenes import COLORS, SHAPES

IOU_THRESHOLD = 0.5
TARGETS: dict[str, float] = {  # held-out test split
    "proposal_recall": 0.98, "rec_attribute": 0.95, "rec_relation": 0.85,
    "caption_f1": 0.90, "region_qa": 0.90, "dialogue_refer": 0.90,
}

BoxLike = Sequence[float] | np.ndarray


def _as_boxes(x: BoxLike | Sequence[BoxLike] | None) -> np.ndarray:
    return np.asarray([] if x is None else x, dtype=np.float64).reshape(-1, 4)


def box_iou(a: BoxLike | Sequence[BoxLike], b: BoxLike | Sequence[BoxLike]) -> np.ndarray:
    """Pairwise IoU, [N, M], of xyxy boxes; degenerate boxes give 0, not NaN."""
    a, b = _as_boxes(a), _as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _hit(pred: BoxLike | None, gt: BoxLike, thr: float) -> bool:
    return pred is not None and len(_as_boxes(pred)) > 0 and box_iou(pred, gt)[0, 0] >= thr


def _mean(x: Sequence[float]) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


# ---------------------------------------------------------------------------------- REC / proposals

def rec_accuracy(pred_boxes: Sequence[BoxLike | None], gt_boxes: Sequence[BoxLike],
                 thr: float = IOU_THRESHOLD) -> float:
    """Acc@thr: fraction of expressions whose predicted box (None = no answer) has IoU >= thr with the GT."""
    return _mean([_hit(p, g, thr) for p, g in zip(pred_boxes, gt_boxes, strict=True)])


def random_region_hit(kept: BoxLike | Sequence[BoxLike], gt: BoxLike, thr: float = IOU_THRESHOLD) -> float:
    """Expected hit of picking a uniformly random kept region (exact expectation, no sampling noise)."""
    kept = _as_boxes(kept)
    return float(np.mean(box_iou(kept, gt)[:, 0] >= thr)) if len(kept) else 0.0


def first_region_hit(kept: BoxLike | Sequence[BoxLike], gt: BoxLike, thr: float = IOU_THRESHOLD) -> float:
    """Hit of always answering ``<r0>`` (the top-scoring kept region)."""
    kept = _as_boxes(kept)
    return float(box_iou(kept[:1], gt)[0, 0] >= thr) if len(kept) else 0.0


def rec_baselines(kept_boxes: Sequence[BoxLike], gt_boxes: Sequence[BoxLike],
                  thr: float = IOU_THRESHOLD) -> dict[str, float]:
    """The two REC baselines: ``random_region`` (expected) and ``first_region`` (always ``<r0>``)."""
    pairs = list(zip(kept_boxes, gt_boxes, strict=True))
    return {"random_region": _mean([random_region_hit(k, g, thr) for k, g in pairs]),
            "first_region": _mean([first_region_hit(k, g, thr) for k, g in pairs])}


def proposal_hits(kept: BoxLike | Sequence[BoxLike], gt: BoxLike | Sequence[BoxLike],
                  thr: float = IOU_THRESHOLD) -> np.ndarray:
    """Per GT object: does some kept region reach IoU >= thr?"""
    iou = box_iou(gt, kept)
    return iou.max(axis=1) >= thr if iou.shape[1] else np.zeros(len(iou), dtype=bool)


def proposal_recall(kept_boxes: Sequence[BoxLike], gt_boxes: Sequence[BoxLike],
                    thr: float = IOU_THRESHOLD) -> float:
    """Fraction of all GT objects (over images) covered by some kept region at IoU >= thr."""
    hits = [proposal_hits(k, g, thr) for k, g in zip(kept_boxes, gt_boxes, strict=True)]
    return _mean(np.concatenate(hits)) if hits else float("nan")


# ---------------------------------------------------------------------------------- multi-object

def match_boxes(pred: BoxLike | Sequence[BoxLike], gt: BoxLike | Sequence[BoxLike],
                thr: float = IOU_THRESHOLD, allowed: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by descending IoU (ties: lower indices first); IoU < thr never matches."""
    iou = box_iou(pred, gt)
    if allowed is not None:
        iou = np.where(allowed, iou, -1.0)
    order = np.argsort(-iou, axis=None, kind="stable")
    used_p, used_g, out = set(), set(), []
    for flat in order:
        p, g = divmod(int(flat), iou.shape[1])
        if iou[p, g] < thr:
            break
        if p not in used_p and g not in used_g:
            used_p.add(p)
            used_g.add(g)
            out.append((p, g))
    return out


def multi_object_pr(pred_boxes: Sequence[BoxLike], gt_boxes: Sequence[BoxLike],
                    thr: float = IOU_THRESHOLD) -> tuple[float, float]:
    """Micro precision and recall over all samples (NaN when there is nothing to divide by)."""
    tp = n_pred = n_gt = 0
    for p, g in zip(pred_boxes, gt_boxes, strict=True):
        p, g = _as_boxes(p), _as_boxes(g)
        tp += len(match_boxes(p, g, thr))
        n_pred += len(p)
        n_gt += len(g)
    return (tp / n_pred if n_pred else float("nan")), (tp / n_gt if n_gt else float("nan"))


# ---------------------------------------------------------------------------------- text parsing

_REGION = re.compile(r"<r(\d+)>")
_GROUNDED = re.compile(r"<p>\s*(.*?)\s*</p>\s*<roi>\s*((?:<r\d+>\s*)*)</roi>", re.S)
_SINGULAR = {s + "es" if s.endswith("ss") else s + "s": s for s in (*SHAPES, "shape")}
_KEEP = set(COLORS) | set(SHAPES)


def region_indices(text: str, num_regions: int | None = None) -> list[int]:
    """All ``<rN>`` indices in order; indices >= num_regions are dropped (they name no kept region)."""
    idx = [int(m) for m in _REGION.findall(text)]
    return [i for i in idx if num_regions is None or i < num_regions]


def parse_grounded(text: str) -> list[tuple[str, list[int]]]:
    """``<p>phrase</p><roi><rA><rB></roi>`` pairs, tolerant to decoded spaces (``<roi> <r5> </roi>``)."""
    return [(phrase, region_indices(rois)) for phrase, rois in _GROUNDED.findall(text)]


def caption_pairs(text: str, region_boxes: BoxLike | Sequence[BoxLike]) -> list[tuple[str, np.ndarray]]:
    """(phrase, box) for each region of each grounded phrase; unknown region indices are dropped."""
    boxes = _as_boxes(region_boxes)
    return [(phrase, boxes[i]) for phrase, idx in parse_grounded(text) for i in idx if i < len(boxes)]


def normalize_phrase(phrase: str) -> str:
    """Colour and shape words only (sizes, articles dropped; plurals singular): the caption-F1 identity."""
    ws = [_SINGULAR.get(w, w) for w in re.findall(r"[a-z]+", phrase.lower())]
    return " ".join(w for w in ws if w in _KEEP)


_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def normalize_answer(text: str) -> str:
    """Lower case, markup and punctuation dropped, number words as digits: what exact match compares."""
    text = re.sub(r"<[^>]*>", " ", text.lower())
    ws = re.sub(r"[^a-z0-9 ]", " ", text).split()
    return " ".join(_NUMBERS.get(w, w) for w in ws)


# ---------------------------------------------------------------------------------- caption F1, QA

def caption_counts(pred: Sequence[tuple[str, BoxLike]], gt: Sequence[tuple[str, BoxLike]],
                   thr: float = IOU_THRESHOLD) -> tuple[int, int, int]:
    """(TP, #pred, #GT): a pred pair is a TP when it matches an unmatched GT pair, same phrase, IoU >= thr."""
    if not pred or not gt:
        return 0, len(pred), len(gt)
    same = np.array([[normalize_phrase(p) == normalize_phrase(g) for g, _ in gt] for p, _ in pred])
    tp = len(match_boxes([b for _, b in pred], [b for _, b in gt], thr, allowed=same))
    return tp, len(pred), len(gt)


def _prf(tp: int, n_pred: int, n_gt: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gt if n_gt else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def grounded_caption_prf(preds: Sequence[Sequence[tuple[str, BoxLike]]],
                         gts: Sequence[Sequence[tuple[str, BoxLike]]],
                         thr: float = IOU_THRESHOLD) -> tuple[float, float, float]:
    """Micro phrase-box precision, recall, F1 over captions."""
    counts = np.array([caption_counts(p, g, thr) for p, g in zip(preds, gts, strict=True)]).reshape(-1, 3)
    return _prf(*(int(c) for c in counts.sum(axis=0)))


def exact_match(preds: Sequence[str], gts: Sequence[str]) -> float:
    """Fraction equal after ``normalize_answer`` (region QA)."""
    return _mean([normalize_answer(p) == normalize_answer(g) for p, g in zip(preds, gts, strict=True)])


def vqa_accuracy(preds: Sequence[str], gts: Sequence[str]) -> float:
    """Short canonical answers ("2", "yes"), so accuracy is exact match after normalisation."""
    return exact_match(preds, gts)


# ---------------------------------------------------------------------------------- aggregation

class EvalAccumulator:
    """Collects per-sample results while evaluating; ``summary()`` gives numbers, ``table()`` the report."""

    def __init__(self, thr: float = IOU_THRESHOLD) -> None:
        self.thr = thr
        self.proposal: list[bool] = []
        self.rec: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # kind -> hit,rand,r0
        self.rec_detail: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # e.g. relation_binary
        self.multi = np.zeros(3, dtype=np.int64)  # tp, n_pred, n_gt
        self.caption = np.zeros(3, dtype=np.int64)
        self.qa: dict[str, dict[str, list[bool]]] = {"region_qa": defaultdict(list), "vqa": defaultdict(list)}
        # (turn from 1, kind) -> correct; turn 0: a second turn asked alone, without the conversation (baseline)
        self.dialogue: dict[tuple[int, str], list[bool]] = defaultdict(list)

    def add_proposals(self, kept: BoxLike | Sequence[BoxLike], gt: BoxLike | Sequence[BoxLike]) -> None:
        self.proposal.extend(proposal_hits(kept, gt, self.thr).tolist())

    def add_rec(self, kind: str, pred: BoxLike | None, gt: BoxLike,
                kept: BoxLike | Sequence[BoxLike], detail: str = "") -> None:
        """One referring expression; ``kind`` is TextSample.kind (attribute/relation); ``detail`` a sub-kind
        reported on its own row (``relation_binary``...), not counted twice in the totals."""
        row = (float(_hit(pred, gt, self.thr)), random_region_hit(kept, gt, self.thr),
               first_region_hit(kept, gt, self.thr))
        self.rec[kind].append(row)
        if detail:
            self.rec_detail[detail].append(row)

    def add_multi(self, pred: BoxLike | Sequence[BoxLike], gt: BoxLike | Sequence[BoxLike]) -> None:
        p, g = _as_boxes(pred), _as_boxes(gt)
        self.multi += (len(match_boxes(p, g, self.thr)), len(p), len(g))

    def add_caption(self, pred: Sequence[tuple[str, BoxLike]], gt: Sequence[tuple[str, BoxLike]]) -> None:
        self.caption += caption_counts(pred, gt, self.thr)

    def add_answer(self, task: str, pred: str, gt: str, kind: str = "") -> None:
        """``task`` is ``region_qa`` or ``vqa``; exact match after normalisation."""
        self.qa[task][kind].append(normalize_answer(pred) == normalize_answer(gt))

    def add_dialogue(self, turn: int, kind: str, pred: BoxLike | str | None, gt: BoxLike | str) -> None:
        """One dialogue turn: a referring turn (``gt`` a box; ``pred`` the first answer box or None) or a question
        (``gt`` the answer text, exact match after normalisation)."""
        if isinstance(gt, str):
            hit = normalize_answer(str(pred or "")) == normalize_answer(gt)
        else:
            hit = _hit(pred, gt, self.thr)
        self.dialogue[(turn, kind)].append(bool(hit))

    def _dialogue_summary(self) -> dict[str, float]:
        """``dialogue_refer``: second-turn referring accuracy (all follow-up kinds that point), with ``_n``, per
        kind and ``_alone`` (the same follow-ups asked without the conversation); ``dialogue_attribute``:
        second-turn questions; ``dialogue_first`` / ``dialogue_turn3``: the other turns."""
        if not self.dialogue:
            return {}
        d = self.dialogue
        second_refer = {k: v for (t, k), v in d.items() if t == 2 and k != "attribute"}
        s = {"dialogue_refer": _mean([x for v in second_refer.values() for x in v]),
             "dialogue_refer_n": float(sum(len(v) for v in second_refer.values()))}
        for kind, v in sorted(second_refer.items()):
            s[f"dialogue_refer_{kind}"] = _mean(v)
        alone = [x for (t, _), v in d.items() if t == 0 for x in v]
        if alone:
            s["dialogue_refer_alone"] = _mean(alone)
        s["dialogue_attribute"] = _mean(d.get((2, "attribute"), []))
        s["dialogue_first"] = _mean([x for (t, _), v in d.items() if t == 1 for x in v])
        s["dialogue_turn3"] = _mean([x for (t, _), v in d.items() if t == 3 for x in v])
        return s

    def summary(self) -> dict[str, float]:
        s: dict[str, float] = {"proposal_recall": _mean(self.proposal)}
        for name, rows in [("rec", [r for v in self.rec.values() for r in v])] + [
                (f"rec_{k}", v) for k, v in sorted(self.rec.items())] + [
                (f"rec_{k}", v) for k, v in sorted(self.rec_detail.items())]:
            arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
            means = [_mean(arr[:, j]) for j in range(3)]
            s[name], s[f"{name}_random_region"], s[f"{name}_first_region"] = means
            s[f"{name}_n"] = float(len(arr))
        tp, n_pred, n_gt = (int(v) for v in self.multi)
        s["multi_precision"], s["multi_recall"], _ = _prf(tp, n_pred, n_gt)
        s["caption_precision"], s["caption_recall"], s["caption_f1"] = _prf(*(int(v) for v in self.caption))
        for task, by_kind in self.qa.items():
            s[task] = _mean([x for v in by_kind.values() for x in v])
            for kind, v in sorted(by_kind.items()):
                if kind:
                    s[f"{task}_{kind}"] = _mean(v)
        s.update(self._dialogue_summary())
        return s

    def table(self) -> str:
        """Fixed-width table: value, target and, on REC rows, the two baselines."""
        s = self.summary()
        head = f"{'metric':<30}{'value':>8}{'target':>8}{'n':>7}{'random r':>10}{'<r0>':>8}"
        lines = [head, "-" * len(head)]
        pct = format_percent
        for key in _row_keys(s):
            target = pct(TARGETS[key]) if key in TARGETS else ""
            n = f"{int(s[key + '_n'])}" if key + "_n" in s else ""
            has_base = key + "_random_region" in s
            base = (pct(s[key + "_random_region"]), pct(s[key + "_first_region"])) if has_base else ("", "")
            lines.append(f"{_label(key):<30}{pct(s[key], TARGETS.get(key)):>8}{target:>8}{n:>7}{base[0]:>10}"
                         f"{base[1]:>8}")
        return "\n".join(lines)

    def print_table(self) -> None:
        print(self.table())


def format_percent(value: float, target: float | None = None) -> str:
    """``value`` as "87.9%" ("-" for NaN); with two decimals when it misses ``target`` yet would round to it
    (0.8996 of a 0.9 target reads "89.96%", not a "90.0%" that looks met)."""
    if value != value:
        return "   -"
    text = f"{100 * value:.1f}%"
    if target is not None and value < target and text == f"{100 * target:.1f}%":
        text = f"{100 * value:.2f}%"
    return text


def _row_keys(s: dict[str, float]) -> list[str]:
    skip = ("_n", "_random_region", "_first_region")
    return [k for k in s if not k.endswith(skip)]


def _label(key: str) -> str:
    fixed = {"proposal_recall": "proposal recall@0.5", "rec": "REC Acc@0.5 (all)",
             "multi_precision": "multi-object precision", "multi_recall": "multi-object recall",
             "caption_precision": "caption phrase-box precision",
             "caption_recall": "caption phrase-box recall", "caption_f1": "caption phrase-box F1",
             "region_qa": "region-QA exact match", "vqa": "VQA accuracy",
             "dialogue_refer": "dialogue: 2nd-turn REC Acc@0.5", "dialogue_attribute": "dialogue: 2nd-turn question",
             "dialogue_first": "dialogue: 1st turn", "dialogue_turn3": "dialogue: 3rd turn"}
    if key in fixed:
        return fixed[key]
    if key == "dialogue_refer_alone":
        return "  2nd turn asked alone"
    if key.startswith("dialogue_refer_"):
        return f"  2nd turn ({key[15:]})"
    if key.startswith("rec_relation_"):
        return f"  relation: {key[13:]}"
    if key.startswith("rec_"):
        return f"REC Acc@0.5 ({key[4:]})"
    task, _, kind = key.partition("_qa_") if key.startswith("region_qa_") else key.partition("_")
    return f"  {'region-QA' if task == 'region' else 'VQA'} ({kind})"
