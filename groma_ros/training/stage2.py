"""Stage 2: the LLM learns to answer and to *point* (emit ``<rK>``), with the perception frozen.

Trained: ``llm``, ``img_txt_bridge``, the region encoder's output projection ``updims``, ``new_input_embs``
and ``extra_lm_head``. Frozen (and therefore cached per scene, see ``cache``): vision encoder, proposer and
the region encoder up to ``updims`` (trained in stage 1 with attribute heads).

Sequences (``sequences``) mirror inference exactly, with shuffled region order; losses (``losses``): answer CE with
``<rK>`` weighted up, region-list CE, pointer contrast, attention supervision of the pointer circuit, region-token
alignment with attribute words. Curriculum: the first steps use scenes with few objects. Every few minutes the
model is evaluated on val scenes through ``GromaEngine`` and the best one is exported.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from groma_ros.model.modeling_groma import GromaForConditionalGeneration
from groma_ros.synthetic.dialogue import generate_dialogues
from groma_ros.synthetic.scenes import Scene
from groma_ros.synthetic.texts import generate_samples

from . import common, data
from .cache import SceneCache, build_cache, cache_to, load_or_build_cache  # noqa: F401  (SceneCache: old pickles)
from .losses import Stage2Aux, attribute_word_ids, batch_forward
from .recipe import DIALOGUE_TASK, Stage2Config
from .sequences import Sequence, make_dialogue_sequence, make_sequence

MAX_ATTEMPTS_PER_SEQUENCE = 200  # sampling tries per wanted sequence before a batch counts as impossible


def sample_batch(pool: list[SceneCache], s2: Stage2Config, rng: random.Random,
                 build: Callable[[SceneCache, str], Sequence | None]) -> list[Sequence]:
    """``s2.batch_size`` sequences: ``scenes_per_batch`` random scenes, tasks drawn by ``task_weights``; ``build``
    returns None when a scene has no usable sample of a task. Raises instead of looping forever when the tasks
    cannot be sampled at all (e.g. only tasks that need every referenced object kept, and a proposer that keeps
    none of them)."""
    tasks, weights = list(s2.task_weights), list(s2.task_weights.values())
    per_scene = max(1, s2.batch_size // s2.scenes_per_batch)
    seqs: list[Sequence] = []
    attempts = 0
    while len(seqs) < s2.batch_size:
        scene = rng.choice(pool)
        for _ in range(per_scene):
            seq = build(scene, rng.choices(tasks, weights)[0])
            attempts += 1
            if seq is not None and len(seqs) < s2.batch_size:
                seqs.append(seq)
        if len(seqs) < s2.batch_size and attempts > MAX_ATTEMPTS_PER_SEQUENCE * s2.batch_size:
            raise RuntimeError(f"stage 2: {len(seqs)} of {s2.batch_size} sequences after {attempts} tries with "
                               f"tasks {s2.task_weights}: the cached scenes' kept regions miss the objects these "
                               "tasks refer to (add 'vqa'/'region_qa' or train stage 1 longer)")
    return seqs


def trainable_stage2(model: GromaForConditionalGeneration) -> list[nn.Parameter]:
    return [*model.llm.parameters(), *model.img_txt_bridge.parameters(),
            *model.region_encoder.roi_align.updims.parameters(), *model.new_input_embs.parameters(),
            *model.extra_lm_head.parameters()]


def init_region_readout(model: GromaForConditionalGeneration) -> None:
    """``extra_lm_head`` row of ``<rK>`` := embedding of ``<rK>``: copying an index token's embedding into the
    residual stream then already scores that index (a head start for the induction-style pointer)."""
    n_fixed = model.config.num_new_token - model.config.token_ids.num_regions
    with torch.no_grad():
        emb = model.new_input_embs.weight[n_fixed:]
        scale = model.extra_lm_head.weight[n_fixed:].norm(dim=1).mean() / emb.norm(dim=1).mean().clamp(min=1e-6)
        model.extra_lm_head.weight[n_fixed:] = emb * scale


# ---------------------------------------------------------------------------------------------- export
def export_model(model: GromaForConditionalGeneration, tokenizer, directory: Path, dtype=torch.float16) -> None:
    """``save_pretrained`` (fp16 copy) + tokenizer into a temp dir, then moved file by file into place."""
    directory = Path(directory)
    tmp = directory.parent / (directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shipped = copy.deepcopy(model).to(dtype)
    shipped.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    directory.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        os.replace(f, directory / f.name)
    tmp.rmdir()


# ---------------------------------------------------------------------------------------------- runner
def run_stage2(model: GromaForConditionalGeneration, tokenizer, run_dir: Path, s2: Stage2Config,
               max_minutes: float, seed: int = 0, export_dir: Path | None = None,
               eval_minutes: float = 8.0, init: Path | None = None,
               perception: Path | None = None) -> GromaForConditionalGeneration:
    """Train on the model's device until the budget; every ``eval_minutes`` evaluate on val scenes through the
    engine and export the best checkpoint so far to ``export_dir``. Resumes from ``run_dir/stage2/ckpt.pt``.

    ``init``: a full state dict (e.g. an earlier run's ``stage2/best.pt``) to continue from when this run has no
    stage-2 checkpoint yet: it replaces the stage-1 weights (its perception is stage 1's, frozen since) and skips
    the readout initialisation; set ``curriculum_steps=0`` for such a warm start. ``perception``: a stage-1
    checkpoint whose perception replaces ``init``'s (a longer stage 1 under an already trained LLM)."""
    from .quick_eval import quick_eval

    out_dir = run_dir / "stage2"
    ckpt_path = out_dir / "ckpt.pt"
    device = model.device
    s1 = common.require_checkpoint(init or run_dir / "stage1" / "ckpt.pt", "stage 1 checkpoint")
    model.load_state_dict(s1["model"] if "model" in s1 else s1)
    del s1
    if perception is not None:
        from .stage1 import perception_state

        p1 = common.require_checkpoint(perception, "stage 1 checkpoint")
        model.load_state_dict(perception_state(p1["model"]), strict=False)
        del p1
    cache = cache_to(load_or_build_cache(model, out_dir / "cache.pt", s2.num_scenes), device)
    for p in model.parameters():
        p.requires_grad_(False)
    params = trainable_stage2(model)
    for p in params:
        p.requires_grad_(True)
    if s2.attn_weight > 0:
        model.llm.config._attn_implementation = "eager"  # attention weights for the supervision losses
    aux = Stage2Aux(model.config.llm_cfg.hidden_size, attribute_word_ids(tokenizer)).to(device)
    opt = torch.optim.AdamW(params + list(aux.parameters()), lr=s2.lr, weight_decay=s2.weight_decay)
    step, best = 0, -1.0
    state = common.load_checkpoint(ckpt_path)
    if state is not None:
        common.restore(state, {"model": model, "aux": aux}, opt)
        step, best = state["step"], state["best"]
        print(f"stage 2: resumed at step {step} (best {best:.3f})")
    else:
        common.seed_everything(seed)
        if init is None:
            init_region_readout(model)
    common.log_json(run_dir / "log.jsonl", {"stage": 2, "start_step": step, "device": str(device),
                                            "init": str(init) if init else None,
                                            "perception": str(perception) if perception else None,
                                            "config": s2.as_dict()})
    rng = random.Random(seed * 1000 + step)
    encoder = data.PromptEncoder(tokenizer)
    simple = [c for c in cache if c.num_objects <= s2.curriculum_objects]
    samples_memo: dict[int, tuple[list, torch.Tensor, Scene, list]] = {}

    def samples_of(scene: SceneCache) -> tuple[list, torch.Tensor, Scene, list]:
        """The scene's text samples, its objects' attribute indices, the scene (regenerated from the seed) and its
        dialogues."""
        if scene.index not in samples_memo:
            sc = data.train_scene(scene.index)
            st = data.scene_tensors(sc, model.config.image_size)
            samples = generate_samples(sc)
            dialogues = generate_dialogues(sc) if DIALOGUE_TASK in s2.task_weights else []
            sc = dataclasses.replace(sc, image=None)  # only the objects are needed again; keep the memo small
            samples_memo[scene.index] = (samples, torch.stack([st.color, st.shape, st.size], 1), sc, dialogues)
        return samples_memo[scene.index]

    budget = common.Budget(max_minutes)
    save_timer, eval_timer = common.Every(180), common.Every(eval_minutes * 60)
    model.train()
    model.perceiver.eval()
    bar = tqdm(desc="stage 2", unit="step", initial=step, dynamic_ncols=True, mininterval=5)

    def build(scene: SceneCache, task: str) -> Sequence | None:
        samples, attrs, scene_obj, dialogues = samples_of(scene)
        if task == DIALOGUE_TASK:
            return make_dialogue_sequence(scene, dialogues, encoder, model.config, s2, rng, attrs=attrs)
        return make_sequence(scene, samples, task, encoder, model.config, s2, rng, attrs=attrs, scene_obj=scene_obj)

    def save() -> None:
        common.save_checkpoint(ckpt_path, {"model": model.state_dict(), "aux": aux.state_dict(),
                                           "opt": opt.state_dict(), "step": step, "best": best,
                                           "rng": common.rng_state()})

    def evaluate_and_export(n_scenes: int) -> None:
        nonlocal best
        model.eval()
        metrics = quick_eval(model, tokenizer, n_scenes=n_scenes, dialogue=DIALOGUE_TASK in s2.task_weights)
        model.train()
        model.perceiver.eval()
        score = metrics["score"]
        common.log_json(run_dir / "log.jsonl", {"stage": 2, "step": step, "eval": metrics})
        print(f"\nstage 2 step {step}: {metrics}", flush=True)
        if score > best:
            best = score
            torch.save(model.state_dict(), out_dir / "best.pt")
            if export_dir is not None:
                export_model(model, tokenizer, export_dir)
                print(f"exported step {step} (score {score:.3f}) to {export_dir}", flush=True)
        save()

    t_last, acc = time.monotonic(), []
    while step < s2.max_steps and not budget.exhausted():
        lr = common.cosine_lr(step, s2.warmup_steps, max(s2.warmup_steps + 1, int(step / max(budget.fraction(),
                              1e-3))), s2.lr, s2.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        pool = simple if step < s2.curriculum_steps and simple else cache
        seqs = sample_batch(pool, s2, rng, build)
        out = batch_forward(model, seqs, aux, s2)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        acc.append({k: float(v.detach()) for k, v in out.items()})
        if step % 25 == 0:
            rec = {k: round(sum(a[k] for a in acc if a[k] == a[k]) / max(1, sum(a[k] == a[k] for a in acc)), 4)
                   for k in acc[0]}
            rec.update(stage=2, step=step, lr=lr, sec_per_step=round((time.monotonic() - t_last) / 25, 3))
            acc, t_last = [], time.monotonic()
            bar.set_postfix(loss=rec["loss"], ptr=rec["pointer_acc"], attn=rec["attn"])
            common.log_json(run_dir / "log.jsonl", rec)
        if save_timer():
            save()
        if eval_timer():
            evaluate_and_export(s2.eval_scenes)
    bar.close()
    save()  # before the final evaluation: a failure there must not cost the training
    evaluate_and_export(2 * s2.eval_scenes)
    return model
