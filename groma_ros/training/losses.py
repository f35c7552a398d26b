"""Stage-2 losses: answer CE with weighted ``<rK>``, region-list CE, pointer contrast, attention supervision
of the pointer circuit, and region-token/word-embedding alignment (see each function for why)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from groma_ros.model.modeling_groma import GromaForConditionalGeneration

from . import data
from .recipe import PHRASE_POINTER_HEAD, REFERENT_HEAD, Stage2Config
from .sequences import Sequence, sequence_embeds


class Stage2Aux(nn.Module):
    """Training-only parts (not exported): the pointer-contrastive projection, the region-box regressor and
    the token ids of every attribute word (for aligning region tokens with word embeddings)."""

    def __init__(self, hidden: int, word_ids: dict[str, list[list[int]]] | None = None) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden, bias=False)
        self.box = nn.Linear(hidden, 4)
        self.word_ids = word_ids or {}


# Extreme words and the box coordinate (index into cx, cy, w, h) and direction they order regions by.
POSITION_WORDS: tuple[tuple[str, int, float], ...] = (("leftmost", 0, -1.0), ("rightmost", 0, 1.0),
                                                      ("topmost", 1, -1.0), ("bottommost", 1, 1.0))
POSITION_AMPLITUDE = 0.3  # target cosine at the image border (0 at the centre), small beside attribute alignment


def attribute_word_ids(tokenizer) -> dict[str, list[list[int]]]:
    """Token ids of " red", " square", " small"... (as they appear inside a sentence) per attribute, and of the
    extreme words under ``"position"`` (``POSITION_WORDS`` order)."""
    words = {**data.attribute_names(), "position": tuple(w for w, _, _ in POSITION_WORDS)}
    return {name: [tokenizer.encode(" " + v, add_bos=False, continuation=True) for v in values]
            for name, values in words.items()}


def position_align_loss(emb: torch.Tensor, reg: torch.Tensor, boxes: torch.Tensor, aux: Stage2Aux) -> torch.Tensor:
    """Cosine of a region token with "leftmost" (etc.) should fall linearly with its box centre's x (etc.).

    Why: "the leftmost red shape" is one attention step if the query built from the phrase's words scores
    regions by colour *and* position; attribute words are aligned with region tokens (``align_loss``), this
    gives the position words the same footing. Relations failed in-class (right colour/shape, wrong position)."""
    r = F.normalize(reg, dim=-1)
    loss = reg.sum() * 0
    for ids, (_, axis, sign) in zip(aux.word_ids["position"], POSITION_WORDS, strict=True):
        word = F.normalize(emb[torch.tensor(ids, device=emb.device)].mean(0), dim=-1)
        target = sign * POSITION_AMPLITUDE * (2 * boxes[:, axis] - 1)
        loss = loss + F.mse_loss(r @ word, target) / POSITION_AMPLITUDE ** 2
    return loss / len(POSITION_WORDS)


def align_loss(model: GromaForConditionalGeneration, seqs: list[Sequence], regions: list[torch.Tensor],
               aux: Stage2Aux) -> torch.Tensor:
    """Region tokens should point where the words naming their attributes point (cosine CE over values) and
    should carry their box (L1). Why: matching a phrase to a region then needs little more than W_Q W_K ≈ I."""
    emb = model.llm.get_input_embeddings().weight
    reg = torch.cat(regions)
    labels = torch.cat([s.region_attrs for s in seqs])
    boxes = torch.cat([s.region_boxes for s in seqs])
    loss = F.l1_loss(torch.sigmoid(aux.box(reg)), boxes)
    valid = labels[:, 0] >= 0
    if bool(valid.any()):
        r = F.normalize(reg[valid], dim=-1)
        for col, name in enumerate(("color", "shape", "size")):
            words = torch.stack([emb[torch.tensor(ids, device=emb.device)].mean(0) for ids in aux.word_ids[name]])
            logits = 10.0 * r @ F.normalize(words, dim=-1).T
            loss = loss + F.cross_entropy(logits, labels[valid, col])
    return loss


def attention_losses(attentions, seqs: list[Sequence], t, s2: Stage2Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Supervise a few heads to form the pointer circuit Groma needs (why: from scratch the LLM plateaus at
    chance for thousands of steps before such a circuit appears; the trial collapsed, and our first run's
    pointer heads matched only a quarter of the phrases because nothing brought the phrase to the answer):

    * ``prev_token_layer`` head 0: each ``<region>`` token attends to the ``<rK>`` right before it, so the
      region's position learns its index;
    * ``gather_layers`` head 1: the position that must emit ``<rK>`` attends (uniformly) to the words of its
      phrase (``<p>..</p>``), bringing the description to where the pointer query is formed;
    * ``pointer_layers`` head 0: that position attends to region K's token;
    * ``phrase_pointer_layers`` head ``PHRASE_POINTER_HEAD``: in a caption, the positions that write a phrase attend
      to the region the phrase will be tied to (the phrase precedes its ``<rK>``);
    * ``exists_pointer_layers`` head ``exists_pointer_head``: the answer position of "is there a red circle?"
      attends to the regions showing one (any of them), else to position 0; head 1 of ``gather_layers`` brings
      it the colour and shape words;
    * ``referent_layers`` head ``REFERENT_HEAD``: in a dialogue, a follow-up's answer position attends to the
      earlier answer's ``<rK>`` that named its referent ("it"); with ``referent_phrase``, head 3 of
      ``anchor_gather_layers`` brings it the words that described the referent in the first query.
    Loss: mean negative log attention weight on the targets. Also returns the pointer heads' argmax accuracy.
    """
    terms, hits = [], []
    dev = attentions[0].device
    for b, s in enumerate(seqs):
        region_pos = torch.nonzero(s.ids == t.region).flatten()
        if len(region_pos):
            a = attentions[s2.prev_token_layer][b, 0, region_pos, region_pos - 1]
            terms.append(-(a + 1e-6).log())
        if s.phrase_pointer and s2.phrase_pointer_layers:
            q = torch.tensor([p for p, _ in s.phrase_pointer], device=dev)
            k = region_pos[torch.tensor([r for _, r in s.phrase_pointer], device=dev)]
            for layer in s2.phrase_pointer_layers:
                terms.append(-(attentions[layer][b, PHRASE_POINTER_HEAD, q, k] + 1e-6).log())
        if s.exists is not None and s2.exists_pointer_layers:
            pos, regions, words = s.exists
            keys = region_pos[torch.tensor(regions, device=dev)] if regions else torch.zeros(1, dtype=torch.long,
                                                                                              device=dev)
            for layer in s2.exists_pointer_layers:
                terms.append(-(attentions[layer][b, s2.exists_pointer_head, pos, keys].sum() + 1e-6).log()[None])
            for layer in s2.gather_layers:
                terms.append(-(attentions[layer][b, 1, pos, torch.tensor(words, device=dev)] + 1e-6).log().mean()[None])
        for p, words in s.referent_words:
            for layer in s2.anchor_gather_layers:
                terms.append(-(attentions[layer][b, 3, p, torch.tensor(words, device=dev)] + 1e-6).log().mean()[None])
        if s.referents and s2.referent_layers:
            q = torch.tensor([p for p, _ in s.referents], device=dev)
            k = torch.tensor([k for _, k in s.referents], device=dev)
            for layer in s2.referent_layers:
                terms.append(-(attentions[layer][b, REFERENT_HEAD, q, k] + 1e-6).log())
        if not s.pointer:
            continue
        q = torch.tensor([p for p, _ in s.pointer], device=dev)
        target = torch.tensor([k for _, k in s.pointer], device=dev)
        k = region_pos[target]
        for layer in s2.pointer_layers:
            terms.append(-(attentions[layer][b, 0, q, k] + 1e-6).log())
            hits.append(attentions[layer][b, 0, q][:, region_pos].argmax(-1) == target)
        opens = torch.nonzero(s.ids == t.by_name("<p>")).flatten().tolist()
        closes = torch.nonzero(s.ids == t.by_name("</p>")).flatten().tolist()
        for p, _ in s.pointer:
            start = max((o for o in opens if o < p), default=None)
            end = min((c for c in closes if start is not None and c > start), default=None)
            if start is None or end is None or end - start < 2 or end > p:
                continue
            # Binary relations: the target's words and the relation only ("the square below"); a bag of the whole
            # phrase cannot tell "the square below the star" from "the star below the square". The anchor's
            # words go to head 3 of ``anchor_gather_layers`` (the anchor head's query).
            split = s.anchor_split if s.anchor_split is not None and start < s.anchor_split < end else None
            target_end = split if split is not None and s2.anchor_gather_layers else end
            for layer in s2.gather_layers:
                terms.append(-(attentions[layer][b, 1, p, start + 1:target_end] + 1e-6).log().mean()[None])
            if target_end != end:
                for layer in s2.anchor_gather_layers:
                    terms.append(-(attentions[layer][b, 3, p, split:end] + 1e-6).log().mean()[None])
        for p, k in s.anchors:
            for layer in s2.anchor_layers:
                terms.append(-(attentions[layer][b, 2, p, region_pos[k]] + 1e-6).log()[None])
    loss = torch.cat(terms).mean() if terms else attentions[0].sum() * 0
    acc = torch.cat(hits).float().mean() if hits else torch.tensor(float("nan"), device=dev)
    return loss, acc


def batch_forward(model: GromaForConditionalGeneration, seqs: list[Sequence], aux: Stage2Aux,
                  s2: Stage2Config) -> dict[str, torch.Tensor]:
    t = model.config.token_ids
    dev = model.llm.device
    seqs = [s.to(dev) for s in seqs]
    embeds, masks = [], []
    region_tokens_all = []
    T = max(len(s.ids) for s in seqs)
    for s in seqs:
        emb, reg = sequence_embeds(model, s)
        region_tokens_all.append(reg)
        pad = T - len(s.ids)
        embeds.append(F.pad(emb, (0, 0, 0, pad)))
        masks.append(torch.cat([torch.ones(len(s.ids), dtype=torch.long, device=dev),
                                torch.zeros(pad, dtype=torch.long, device=dev)]))
    out = model.llm.model(inputs_embeds=torch.stack(embeds), attention_mask=torch.stack(masks),
                          output_attentions=s2.attn_weight > 0)
    hidden = out.last_hidden_state
    # next-token loss only where a weight is set: gather those positions before the (cheap) heads
    rows, cols, targets, weights = [], [], [], []
    for b, s in enumerate(seqs):
        pos = torch.nonzero(s.weights[1:]).flatten()
        rows.append(torch.full_like(pos, b))
        cols.append(pos)
        targets.append(s.ids[pos + 1])
        weights.append(s.weights[pos + 1])
    rows, cols, targets, weights = map(torch.cat, (rows, cols, targets, weights))
    logits = model.lm_logits(hidden[rows, cols])
    ce = F.cross_entropy(logits, targets, reduction="none")
    is_list = weights == s2.list_weight
    answer_w = torch.where(is_list, torch.zeros_like(weights), weights)
    lm = (ce * answer_w).sum() / answer_w.sum().clamp(min=1)
    lst = ce[is_list].mean() if bool(is_list.any()) else ce.sum() * 0
    # pointer contrast: hidden state predicting <rK> vs this sequence's region tokens
    con, n_con = ce.sum() * 0, 0
    for b, s in enumerate(seqs):
        if not s.pointer:
            continue
        pos = torch.tensor([p for p, _ in s.pointer], device=dev)
        tgt = torch.tensor([k for _, k in s.pointer], device=dev)
        q = aux.query(hidden[b, pos])
        sim = q @ region_tokens_all[b].T / q.shape[-1] ** 0.5
        con = con + F.cross_entropy(sim, tgt, reduction="sum")
        n_con += len(pos)
    con = con / max(1, n_con)
    with torch.no_grad():
        region_mask = torch.tensor([t.region_of(int(x)) is not None for x in targets.tolist()], device=dev) & ~is_list
        pred = logits.argmax(-1)
        ptr_acc = (pred[region_mask] == targets[region_mask]).float().mean() if bool(region_mask.any()) else None
    zero = ce.sum() * 0
    attn, attn_acc = attention_losses(out.attentions, seqs, t, s2) if s2.attn_weight > 0 else (zero, zero)
    align = align_loss(model, seqs, region_tokens_all, aux) if s2.align_weight > 0 else ce.sum() * 0
    position = ce.sum() * 0
    if s2.position_weight > 0:
        position = position_align_loss(model.llm.get_input_embeddings().weight, torch.cat(region_tokens_all),
                                       torch.cat([s.region_boxes for s in seqs]), aux)
    total = (lm + s2.list_weight * lst + s2.contrast_weight * con + s2.attn_weight * attn + s2.align_weight * align
             + s2.position_weight * position)
    return {"loss": total, "lm": lm, "list": lst, "contrast": con, "attn": attn, "attn_acc": attn_acc,
            "align": align, "position": position,
            "pointer_acc": ptr_acc if ptr_acc is not None else torch.tensor(float("nan"), device=dev)}
