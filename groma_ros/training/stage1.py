"""Stage 1: vision encoder + Deformable-DETR proposer + region encoder, trained from scratch.

Losses: Hungarian-matched box L1 + GIoU and focal objectness on both heads (``coco``/``sa1b``) of every
decoder layer and on the two-stage encoder proposals; small auxiliary colour/shape/size heads on matched
queries and on region features of (jittered) ground-truth boxes. The latter is why the region encoder is
trained here rather than in stage 2: its features then carry the attributes the LLM must match phrases
against, and stage 2 can cache them (the trial found the LLM's pointing, not perception, to be the hard part).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from groma_ros.model.modeling_groma import GromaForConditionalGeneration
from groma_ros.model.ops import box_iou, cxcywh_to_xyxy
from groma_ros.synthetic.scenes import SHAPES, generate_scene, split_seeds

from . import common, data, forward
from .data import SIZE_NAMES
from .matching import box_losses, hungarian_match, sigmoid_focal_loss
from .recipe import Stage1Config

SMALL = SIZE_NAMES.index("small")  # the size whose shapes the attribute probe reports apart (hardest to read)


class AttributeHeads(nn.Module):
    """Training-only linear probes (not exported): colour, shape, size logits."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.color = nn.Linear(dim, len(data.COLOR_NAMES))
        self.shape = nn.Linear(dim, len(SHAPES))
        self.size = nn.Linear(dim, len(data.SIZE_NAMES))

    def loss(self, x: torch.Tensor, color: torch.Tensor, shape: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        ce = nn.functional.cross_entropy
        return ce(self.color(x), color) + ce(self.shape(x), shape) + ce(self.size(x), size)


class Stage1Heads(nn.Module):
    def __init__(self, model: GromaForConditionalGeneration) -> None:
        super().__init__()
        self.query = AttributeHeads(model.config.ddetr_config.d_model)
        self.region = AttributeHeads(model.config.region_feat_dim)


def trainable_stage1(model: GromaForConditionalGeneration) -> list[nn.Parameter]:
    return [*model.perceiver.parameters(), *model.region_encoder.parameters()]


def jitter_boxes(boxes: torch.Tensor, amount: float = 0.08) -> torch.Tensor:
    """Scale-relative jitter of cx, cy, w, h so region features tolerate imperfect proposals."""
    noise = (torch.rand_like(boxes) * 2 - 1) * amount
    cx = boxes[:, 0] + noise[:, 0] * boxes[:, 2]
    cy = boxes[:, 1] + noise[:, 1] * boxes[:, 3]
    w = boxes[:, 2] * (1 + noise[:, 2])
    h = boxes[:, 3] * (1 + noise[:, 3])
    return torch.stack([cx, cy, w, h], 1).clamp(1e-3, 1.0)


def detection_loss(trace: forward.ProposerTrace, targets: list[data.SceneTensors], cfg: Stage1Config,
                   heads: Stage1Heads) -> dict[str, torch.Tensor]:
    """Matched losses for every decoder layer and the encoder proposals, normalized by the box count."""
    num = max(1, sum(len(t.boxes) for t in targets))
    out = {"l1": 0.0, "giou": 0.0, "cls": 0.0, "attr": 0.0}
    outputs = [(trace.enc_logits, trace.enc_boxes, None)]
    for lvl in range(len(trace.layer_boxes)):
        outputs.append((trace.layer_coco[lvl], trace.layer_boxes[lvl], trace.layer_sa1b[lvl]))
    for i, tgt in enumerate(targets):
        for k, (logit, boxes, logit2) in enumerate(outputs):
            q, g = hungarian_match(logit[i], boxes[i], tgt.boxes, cfg.cost_class, cfg.cost_l1, cfg.cost_giou)
            labels = torch.zeros_like(logit[i])
            labels[q] = 1.0
            cls = sigmoid_focal_loss(logit[i], labels, cfg.focal_alpha)
            if logit2 is not None:
                q2, g2 = hungarian_match(logit2[i], boxes[i], tgt.boxes, cfg.cost_class, cfg.cost_l1, cfg.cost_giou)
                labels2 = torch.zeros_like(logit2[i])
                labels2[q2] = 1.0
                cls = cls + sigmoid_focal_loss(logit2[i], labels2, cfg.focal_alpha)
            out["cls"] = out["cls"] + cls
            if len(q):
                l1, giou = box_losses(boxes[i][q], tgt.boxes[g])
                out["l1"] = out["l1"] + l1
                out["giou"] = out["giou"] + giou
            if k == len(outputs) - 1 and len(q):
                out["attr"] = out["attr"] + heads.query.loss(trace.hidden[i][q], tgt.color[g], tgt.shape[g],
                                                             tgt.size[g]) * len(q)
    return {k: v / num for k, v in out.items()}


ATTRIBUTES = ("color", "shape", "size")


def object_region_features(model: GromaForConditionalGeneration, states: list[torch.Tensor],
                           items: list[data.SceneTensors],
                           boxes_of: Callable[[data.SceneTensors], torch.Tensor] = lambda t: t.boxes,
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Region features (before ``updims``) of every object of ``items`` (``states`` of exactly those images), at
    ``boxes_of(item)`` (e.g. jittered ground truth), and the objects' attribute labels."""
    maps = model.region_encoder.fuse(states, model.config.grid_size)
    boxes = torch.cat([boxes_of(t) for t in items])
    bidx = torch.cat([torch.full((len(t.boxes),), i, dtype=torch.long, device=boxes.device)
                      for i, t in enumerate(items)])
    labels = {name: torch.cat([getattr(t, name) for t in items]) for name in ATTRIBUTES}
    return forward.region_features(model.region_encoder, maps, boxes, bidx), labels


@torch.no_grad()
def evaluate_perception(model: GromaForConditionalGeneration, heads: Stage1Heads, n_scenes: int = 64,
                        split: str = "val", batch: int = 16) -> dict:
    """Recall@0.5 of the NMS-kept regions (the model's own ``select_regions``), the mean kept count, and the
    accuracy of the region attribute probe on exact ground-truth boxes (``attributes``).

    Why the probe: stage 2 freezes these features, so a shape they cannot tell apart stays wrong in every caption
    and region-QA answer; ``shape_small`` isolates the hardest case (small shapes cover a few 8-px patches)."""
    model.eval()
    hits = total = kept = small = 0
    right = {"color": 0, "shape": 0, "size": 0, "shape_small": 0}
    seeds = list(split_seeds(split, n_scenes))
    for s in range(0, len(seeds), batch):
        items = [data.scene_tensors(generate_scene(seed), model.config.image_size).to(model.device)
                 for seed in seeds[s:s + batch]]
        states = forward.vision_states(model, data.stack_pixels(items))
        trace = forward.propose(model, states)
        for i, item in enumerate(items):
            sel = model.select_regions(trace.boxes[i], trace.scores[i])
            kept += len(sel.boxes)
            iou = box_iou(cxcywh_to_xyxy(item.boxes.cpu()), cxcywh_to_xyxy(sel.boxes.float().cpu()))
            hits += int((iou.max(1).values >= 0.5).sum())
            total += len(item.boxes)
        feats, labels = object_region_features(model, states, items)
        probe = {name: getattr(heads.region, name)(feats).argmax(1) == labels[name] for name in ATTRIBUTES}
        for name, hit in probe.items():
            right[name] += int(hit.sum())
        is_small = labels["size"] == SMALL
        right["shape_small"] += int(probe["shape"][is_small].sum())
        small += int(is_small.sum())
    model.train()
    attributes = {name: n / max(1, small if name == "shape_small" else total) for name, n in right.items()}
    return {"recall@0.5": hits / max(1, total), "kept_per_image": kept / max(1, n_scenes), "attributes": attributes}


def perception_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights stage 1 trains (vision encoder, proposer, region encoder up to ``updims``), nothing else."""
    return {k: v for k, v in state_dict.items() if k.startswith(("perceiver.", "region_encoder."))
            and not k.startswith("region_encoder.roi_align.updims.")}


def run_stage1(model: GromaForConditionalGeneration, run_dir: Path, cfg: Stage1Config, max_minutes: float,
               seed: int = 0, checkpoint_minutes: float = 3.0, eval_minutes: float = 4.0,
               on_eval=None, init: Path | None = None) -> GromaForConditionalGeneration:
    """Train until the budget or ``cfg.max_steps`` on the model's device; resumes from ``run_dir/stage1/ckpt.pt``.

    ``init``: another run's stage-1 checkpoint to continue from when this run has none yet (its weights and
    attribute heads; a fresh optimizer and schedule under ``cfg``), e.g. a longer, lower-rate perception run."""
    out_dir = run_dir / "stage1"
    ckpt_path = out_dir / "ckpt.pt"
    device = model.device
    heads = Stage1Heads(model).to(device)
    params = trainable_stage1(model) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, scene_index = 0, 0
    state = common.load_checkpoint(ckpt_path)
    if state is not None:
        common.restore(state, {"model": model, "heads": heads}, opt)
        step, scene_index = state["step"], state["scene_index"]
        print(f"stage 1: resumed at step {step}")
    else:
        common.seed_everything(seed)
        if init is not None:
            warm = common.require_checkpoint(init, "stage 1 init checkpoint")
            model.load_state_dict(warm["model"])
            heads.load_state_dict(warm["heads"])
            scene_index = warm["scene_index"]  # continue on scenes the init run has not seen
            print(f"stage 1: warm start from {init} (its step {warm['step']})")
            del warm
        common.log_json(run_dir / "log.jsonl", {"stage": 1, "start_step": 0, "init": str(init) if init else None,
                                                "config": asdict(cfg)})
    if state is not None and state.get("done"):
        return model
    budget = common.Budget(max_minutes)
    save_timer, eval_timer = common.Every(checkpoint_minutes * 60), common.Every(eval_minutes * 60)
    model.train()
    bar = tqdm(desc="stage 1", unit="step", initial=step, dynamic_ncols=True, mininterval=5)

    def save(done: bool = False) -> None:
        common.save_checkpoint(ckpt_path, {"model": model.state_dict(), "heads": heads.state_dict(),
                                           "opt": opt.state_dict(), "step": step, "scene_index": scene_index,
                                           "rng": common.rng_state(), "config": asdict(cfg), "done": done})

    t_last = time.monotonic()
    while step < cfg.max_steps and not budget.exhausted():
        items = [data.scene_tensors(data.train_scene(scene_index + i), model.config.image_size).to(device)
                 for i in range(cfg.batch_size)]
        scene_index += cfg.batch_size
        lr = common.cosine_lr(step, cfg.warmup_steps, max(cfg.warmup_steps + 1, int(step / max(budget.fraction(),
                              1e-3))), cfg.lr, cfg.lr * 0.1)
        for group in opt.param_groups:
            group["lr"] = lr
        states = forward.vision_states(model, data.stack_pixels(items))
        trace = forward.propose(model, states)
        losses = detection_loss(trace, items, cfg, heads)
        # region encoder: features of jittered GT boxes of the first images must name the attributes
        n_reg = min(cfg.region_aux_images, len(items))
        feats, labels = object_region_features(model, [s[:n_reg] for s in states], items[:n_reg],
                                              lambda t: jitter_boxes(t.boxes))
        losses["region_attr"] = heads.region.loss(feats, *(labels[name] for name in ATTRIBUTES))
        total = (cfg.loss_l1 * losses["l1"] + cfg.loss_giou * losses["giou"] + cfg.loss_class * losses["cls"]
                 + cfg.loss_attr * (losses["attr"] + losses["region_attr"]))
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            rec = {k: round(float(v.detach() if torch.is_tensor(v) else v), 4) for k, v in losses.items()}
            rec.update(stage=1, step=step, loss=round(float(total.detach()), 4), lr=lr,
                       sec_per_step=round((time.monotonic() - t_last) / 20, 3))
            t_last = time.monotonic()
            bar.set_postfix(loss=rec["loss"], l1=rec["l1"], giou=rec["giou"], cls=rec["cls"])
            common.log_json(run_dir / "log.jsonl", rec)
        if save_timer():
            save()
        if eval_timer():
            metrics = evaluate_perception(model, heads)
            common.log_json(run_dir / "log.jsonl", {"stage": 1, "step": step, "eval": metrics})
            print(f"\nstage 1 step {step}: {metrics}", flush=True)
            if on_eval is not None:
                on_eval(step, metrics)
    bar.close()
    save(done=True)
    metrics = evaluate_perception(model, heads, n_scenes=200)
    common.log_json(run_dir / "log.jsonl", {"stage": 1, "step": step, "final_eval": metrics})
    print(f"stage 1 done at step {step}: {metrics}", flush=True)
    return model
