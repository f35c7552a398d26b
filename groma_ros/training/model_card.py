"""Write ``MODEL_CARD.md`` for the exported default model from its config, the run log and ``eval.json``.

``python -m groma_ros.training.model_card --run-dir runs/default --model groma_ros/assets/default_model``

``--update``: when the earlier runs' logs are not at hand, update the shipped card instead of rendering it from
scratch: the evaluation tables and the targets line are re-rendered from ``eval.json``, each ``--continuation``
gets its paragraph after the ones already listed and ``--notes`` (``@FILE`` reads a file) goes before the
previous "What the last continuation changed" sections; everything else is kept as it is.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from groma_ros.model.configuration_groma import GromaConfig
from groma_ros.model.modeling_groma import GromaForConditionalGeneration
from groma_ros.synthetic.metrics import format_percent

from .recipe import Stage1Config, Stage2Config

COMMAND = "\n".join([
    "# what produced the shipped checkpoint (seed 0, one torch thread, run dir runs/default):",
    "python -m groma_ros.train --stages 0,1 --stage1-minutes 28",
    "python -m groma_ros.train --stages 2 --stage2-minutes 95 --stage2-scenes 4000 --eval-minutes 10",
    "#   ^ stopped after 12 min (step ~1450) to add the phrase-gather attention supervision; resumed from",
    "#     its step-1198 checkpoint with the code as committed:",
    "python -m groma_ros.train --stages 2 --stage2-minutes 74 --stage2-scenes 4000 --eval-minutes 10",
    "python -m groma_ros.evaluate --split test --limit 200 --shuffled --json groma_ros/assets/default_model/eval.json",
    "python -m groma_ros.training.model_card",
    "# one-shot equivalent with the committed code: python -m groma_ros.train --stage1-minutes 28 --stage2-minutes 86",
])


def _arch_table(cfg: GromaConfig) -> str:
    v, d, llm = cfg.vision_config, cfg.ddetr_config, cfg.llm_cfg
    rows = [
        ("input", f"{cfg.image_size}x{cfg.image_size} px, ImageNet normalisation, patch {cfg.patch_size} -> "
                  f"{cfg.grid_size}x{cfg.grid_size} grid, {cfg.num_image_tokens} LLM image tokens"),
        ("vision encoder (DINOv2 layout)", f"width {v.hidden_size}, {v.num_hidden_layers} layers, "
                                           f"{v.num_attention_heads} heads (trained from scratch, not frozen)"),
        ("proposer (two-stage Deformable DETR)", f"d_model {d.d_model}, {d.encoder_layers}+{d.decoder_layers} layers, "
                                                 f"{d.num_queries} queries, objectness heads coco/sa1b"),
        ("region encoder", f"3 levels ({'/'.join(map(str, cfg.region_level_sizes))} px maps), RoI "
                           f"{cfg.roi_output_size}x{cfg.roi_output_size}, widths {cfg.region_pos_dim}/"
                           f"{cfg.region_feat_dim}/{cfg.region_out_dim}, GN {cfg.region_gn_groups}, "
                           f"box convention `{cfg.region_box_convention}`"),
        ("LLM (LLaMA)", f"hidden {llm.hidden_size}, {llm.num_hidden_layers} layers, {llm.num_attention_heads} heads, "
                        f"FFN {llm.intermediate_size}, vocab {llm.vocab_size} + 114 Groma tokens"),
        ("region selection", f"NMS {cfg.nms_thres}, score > {cfg.box_score_thres}, at most {cfg.max_region_num}"),
    ]
    return "\n".join(["| part | size |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows])


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _curves(records: list[dict]) -> str:
    lines = ["Stage 1 (val, 64 scenes; proposal recall@0.5 of the kept regions):", ""]
    for r in records:
        if r.get("stage") == 1 and ("eval" in r or "final_eval" in r):
            m = r.get("eval") or r.get("final_eval")
            tag = " (final, 200 scenes)" if "final_eval" in r else ""
            lines.append(f"- step {r['step']}: recall {100 * m['recall@0.5']:.1f} %, "
                         f"{m['kept_per_image']:.2f} kept regions/image{tag}")
    lines += ["", "Stage 2 (training batches: answer-token loss, `<rK>` accuracy; val quick-eval through the engine, "
              "24-48 scenes):", ""]
    train = [r for r in records if r.get("stage") == 2 and "pointer_acc" in r]
    for r in train[:: max(1, len(train) // 8)] + train[-1:]:
        lines.append(f"- step {r['step']}: lm {r['lm']:.3f}, pointer acc {100 * r['pointer_acc']:.0f} %, "
                     f"{r['sec_per_step']:.2f} s/step")
    lines.append("")
    for r in records:
        if r.get("stage") == 2 and "eval" in r:
            m = r["eval"]
            lines.append(f"- eval step {r['step']}: REC attr {100 * m['rec_attribute']:.0f} % / rel "
                         f"{100 * m['rec_relation']:.0f} % (baselines random {100 * m['rec_random_region']:.0f} %, "
                         f"<r0> {100 * m['rec_first_region']:.0f} %), caption F1 {m['caption_f1']:.2f}, "
                         f"region-QA {100 * m['region_qa']:.0f} %, VQA {100 * m['vqa']:.0f} %")
    return "\n".join(lines)


def _span(records: list[dict], stage: int) -> tuple[int, float]:
    """(last step, wall minutes) of ``stage`` in a run log, from its start record (if any) to its last record."""
    rs = [r for r in records if r.get("stage") == stage and "time" in r]
    if not any("step" in r for r in rs):
        return 0, 0.0
    to_s = lambda t: int(t[:2]) * 3600 + int(t[3:5]) * 60 + int(t[6:8])  # noqa: E731
    secs = (to_s(rs[-1]["time"]) - to_s(rs[0]["time"])) % 86400
    return max(r["step"] for r in rs if "step" in r), secs / 60


def _changed(cfg: dict, defaults: dict) -> dict:
    """Recipe fields a run set differently from the defaults (budget-like fields left out)."""
    defaults = json.loads(json.dumps(defaults))  # tuples -> lists, as in the log
    budget = ("max_steps", "num_scenes", "eval_scenes")
    return {k: v for k, v in cfg.items() if defaults.get(k) != v and k not in budget}


def _command(run: Path) -> list[str]:
    cmd = (run / "cmd.sh").read_text().strip() if (run / "cmd.sh").is_file() else "(command not recorded)"
    return ["```", cmd, "```", ""]


def _stage1_continuation(run: Path, records: list[dict]) -> list[str]:
    start = next((r for r in records if r.get("stage") == 1 and "config" in r), {})
    steps, minutes = _span(records, 1)
    final = next((r["final_eval"] for r in records if r.get("stage") == 1 and "final_eval" in r), {})
    attrs = final.get("attributes", {})
    return [f"**`{run.name}`** (stage 1, perception, from `{start.get('init')}`): {steps} steps x batch "
            f"{start.get('config', {}).get('batch_size', '?')}, {minutes:.0f} min; recipe changes vs the defaults: "
            f"`{json.dumps(_changed(start.get('config', {}), asdict(Stage1Config())))}`. Val (200 scenes): proposal "
            f"recall {100 * final.get('recall@0.5', 0):.1f} %; attribute probe on ground-truth boxes: shape "
            f"{100 * attrs.get('shape', 0):.1f} % (small shapes {100 * attrs.get('shape_small', 0):.1f} %), colour "
            f"{100 * attrs.get('color', 0):.1f} %, size {100 * attrs.get('size', 0):.1f} %.", "", *_command(run)]


def _stage2_continuation(run: Path, records: list[dict]) -> list[str]:
    start = next((r for r in records if r.get("stage") == 2 and "config" in r), {})
    cfg = start.get("config", {})
    steps, minutes = _span(records, 2)
    evals = [r for r in records if r.get("stage") == 2 and "eval" in r]
    best = max(evals, key=lambda r: r["eval"].get("score", 0)) if evals else {"step": "?", "eval": {}}
    last = best["eval"]
    perception = f", perception from `{start['perception']}`" if start.get("perception") else ""
    return [f"**`{run.name}`** on `{start.get('device', '?')}`{perception}: {steps} steps x batch "
            f"{cfg.get('batch_size', '?')} on {cfg.get('num_scenes', '?')} cached scenes, {minutes:.0f} min; recipe "
            f"changes vs the defaults: `{json.dumps(_changed(cfg, Stage2Config().as_dict()))}`. Best val quick-eval "
            f"at step {best['step']}: REC attr {100 * last.get('rec_attribute', 0):.0f} % / "
            f"rel {100 * last.get('rec_relation', 0):.0f} %, caption F1 {last.get('caption_f1', 0):.2f}, "
            f"region-QA {100 * last.get('region_qa', 0):.0f} %"
            + (f", dialogue 2nd-turn REC {100 * last['dialogue_refer']:.0f} %" if "dialogue_refer" in last else "")
            + ".", "", *_command(run)]


def _continuations(runs: list[Path]) -> str:
    """One paragraph per warm-started run (``--stage1-init`` / ``--stage2-init``) behind the shipped weights."""
    if not runs:
        return ""
    out = ["## Continuations (each warm-started from the previous state, in this order)", ""]
    for run in runs:
        records = _records(run)
        if any(r.get("stage") == 1 for r in records):
            out += _stage1_continuation(run, records)
        if any(r.get("stage") == 2 for r in records):
            out += _stage2_continuation(run, records)
    return "\n".join(out)


def _pct(table: dict, key: str, target: float | None = None) -> str:
    """``table[key]`` as "87.9 %" (a near miss of ``target``: two decimals, see ``format_percent``); "?" if absent."""
    return format_percent(table[key], target).replace("%", " %") if key in table else "?"


TARGETS = (("proposal_recall", "proposal recall", 0.98), ("rec_attribute", "attribute REC", 0.95),
           ("rec_relation", "relational REC", 0.85), ("caption_f1", "grounded-caption F1", 0.90),
           ("region_qa", "region QA", 0.90), ("dialogue_refer", "second-turn referring in dialogues", 0.90))
_SUMMARY_HEAD = "Meets the targets for "


def _target_summary(measured: dict) -> str:
    """Which targets (``synthetic.metrics.TARGETS``, dialogue included) the weights meet, with measured values."""
    met = [f"{name} ({_pct(measured, key)})" for key, name, goal in TARGETS if measured.get(key, -1) >= goal]
    missed = [f"{name} ({_pct(measured, key, goal)}, target {100 * goal:.0f} %)"
              for key, name, goal in TARGETS if key in measured and measured[key] < goal]
    text = f"{_SUMMARY_HEAD}{', '.join(met) or 'none'}"
    return text + (f"; below them for {', '.join(missed)}." if missed else ".")


def write_card(run_dir: Path, model_dir: Path, notes: str = "", continuations: list[Path] | None = None) -> str:
    cfg = GromaConfig(**json.loads((model_dir / "config.json").read_text()))
    n_params = sum(p.numel() for p in GromaForConditionalGeneration(cfg).parameters())
    records = _records(run_dir)
    s1_steps, s1_min = _span(records, 1)
    s2_steps, s2_min = _span(records, 2)
    report = json.loads((model_dir / "eval.json").read_text()) if (model_dir / "eval.json").is_file() else {}
    tables = report.get("tables", {})
    measured = report.get("score_order", {})
    card = f"""# Embedded default model: tiny Groma trained on synthetic shapes

A {n_params / 1e6:.2f} M-parameter model with exactly Groma's architecture and released checkpoint format
(`config.json` + `model.safetensors` + LLaMA-style tokenizer files; loaded by
`GromaForConditionalGeneration.from_pretrained` / `GromaEngine.from_pretrained(None)`), trained by our own
recipe on procedurally generated scenes (`groma_ros/synthetic`). It exists so that the node, the CLI and the
tests ground real requests ("the red circle" -> that circle's box) without the 14-30 GB real weights.
**It only knows the synthetic world**: coloured shapes on dark backgrounds (see Limitations).

## Architecture (same modules and key names as groma-7b)

{_arch_table(cfg)}

Weights are stored in fp16 (the engine casts to the requested dtype, fp32 by default).

## Data

`groma_ros/synthetic`: 128x128 scenes with 1-6 shapes (6 kinds, 8 colours, 3 sizes, plain/gradient/textured
backgrounds, little occlusion), exact boxes, and texts for every task: referring expressions by attribute and by
relation, multi-object ("all the red shapes"), grounded captions, region QA, VQA (counting, existence).
Train/val/test use disjoint seed ranges (`split_seeds`). Stage 1 saw {s1_steps * Stage1Config.batch_size} train
scenes; stage 2 used {Stage2Config.num_scenes} cached train scenes with texts rendered per step and random region
orders.

## Recipe (`groma_ros/training`, mirrors Groma's stages)

0. **Tokenizer**: SentencePiece BPE (byte fallback, LLaMA layout, `legacy=False`) on the synthetic corpus plus
   every prompt-template text, then Groma's 114 added tokens.
1. **Perception** ({s1_steps} steps x batch {Stage1Config.batch_size}, {s1_min:.0f} min): vision encoder +
   proposer + region encoder from scratch. Hungarian matching (scipy), box L1 (5) + GIoU (2) + focal objectness (2)
   on both heads of every decoder layer and on the two-stage encoder proposals; auxiliary colour/shape/size heads on
   matched queries and on region features of jittered GT boxes (training-only, not exported).
2. **Language** ({s2_steps} steps x batch {Stage2Config.batch_size}, {s2_min:.0f} min): LLM, `img_txt_bridge`,
   the region encoder's `updims`, `new_input_embs`, `extra_lm_head`; perception frozen (its features cached).
   Per sample, as Groma: candidates = proposals + GT boxes at score 0.2 (+ the user box at 1.0 for region QA) ->
   the model's NMS -> kept regions in a random order; each object maps to its best kept region; prompts come from
   the engine's `PromptBuilder` and tokenizer calls (identical ids/logits to inference, tested). Loss on answer
   tokens with `<rK>` weighted x{Stage2Config.region_weight}, plus: next-index loss on the prompt's region list,
   attention supervision of a pointer circuit (layer 0 head 0: region -> its `<rK>`; layers 0-1 head 1: answer
   position -> the words of its `<p>` phrase; layers 2-3 head 0: answer position -> the target region), a
   pointer-contrastive loss, and region-token/word-embedding alignment with box regression. (The phrase-gather
   supervision was added at step 1198: before it the pointer heads matched only ~25 % of phrases, chance level;
   with it `<rK>` accuracy on training batches rose to ~88 %.) Curriculum: scenes with <= 3 objects for the
   first {Stage2Config.curriculum_steps} steps. AdamW,
   lr {Stage2Config.lr} cosine to {Stage2Config.min_lr}. Every 10 min the model is evaluated on val scenes through
   `GromaEngine` and the best one is exported here.

Machine: this project's 2-core x86 CPU VM (no GPU), **one** torch thread for training; {s1_min + s2_min:.0f} min of
training in total (wall clock, evaluations included). Commands (each resumes from `runs/default`):

```
{COMMAND}
```

## Training curves (`runs/default/log.jsonl`)

{_curves(records)}

## Evaluation (held-out test split, through `GromaEngine`)

`python -m groma_ros.evaluate` (proposal recall of kept regions; REC with the two baselines; multi-object P/R;
grounded-caption phrase-box F1; region-QA exact match; VQA accuracy). Targets: ``synthetic.metrics.TARGETS``.
{report.get("scenes", "?")} test scenes, all samples of every task.

Region order as the engine uses it (descending score):

```
{tables.get("score_order", "(not evaluated yet)")}
```

Region order shuffled (seeded) before the LLM sees it:

```
{tables.get("shuffled", "(not evaluated yet)")}
```

{_continuations(continuations or [])}
{notes}

## Limitations

- Synthetic world only: shapes, colours, sizes and simple spatial relations; it does not understand natural
  images, other objects, or words outside `groma_ros/synthetic/VOCABULARY.md`.
{_trained_bullet(measured)}
- Speed: the 200-scene test evaluation (~8,000 queries) took ~60 s on this 2-core CPU VM, i.e. well under 10 ms per
  query once a frame's prefix is cached.
- Fixed prompt formats: REFER via `Locate <p>..</p> in the image.`, captions via `[grounding]`, region QA via
  `<roi><refer_box></roi><refer_feat>`; free-form chat is not trained.
- Not a substitute for real Groma weights; use `model.path` for those.
"""
    (model_dir / "MODEL_CARD.md").write_text(card)
    return card


_TRAINED_BULLET = "- Trained for about two CPU hours plus the continuations above."


def _trained_bullet(measured: dict) -> str:
    """The limitations bullet with the targets met and the weakest task."""
    return (f"{_TRAINED_BULLET} {_target_summary(measured)} Counting questions are weak "
            f"({_pct(measured, 'vqa_count')}).")


def _replace_block(card: str, heading: str, body: str) -> str:
    """``card`` with the fenced block that follows ``heading`` replaced by ``body``."""
    start = card.index(heading)
    open_ = card.index("```\n", start) + 4
    close = card.index("\n```", open_)
    return card[:open_] + body + card[close:]


def update_card(model_dir: Path, continuations: list[Path], notes: str = "") -> str:
    """The shipped card updated in place (see the module docstring); returns it."""
    path = model_dir / "MODEL_CARD.md"
    card = path.read_text()
    report = json.loads((model_dir / "eval.json").read_text())
    tables = report.get("tables", {})
    card = _replace_block(card, "Region order as the engine uses it", tables.get("score_order", "(not evaluated)"))
    card = _replace_block(card, "Region order shuffled", tables.get("shuffled", "(not evaluated)"))
    start = card.index(_TRAINED_BULLET)
    end = card.index("\n- ", start)
    card = card[:start] + _trained_bullet(report.get("score_order", {})) + card[end:]
    added = _continuations(continuations).split("\n", 2)[-1] if continuations else ""
    marker = "### What the last continuation changed"
    at = card.index(marker) if marker in card else card.index("## Limitations")
    insert = (added.strip() + "\n\n" if added.strip() else "") + (notes.strip() + "\n\n" if notes.strip() else "")
    card = card[:at] + insert + card[at:]
    path.write_text(card)
    return card


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=Path("runs/default"))
    p.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "default_model")
    p.add_argument("--notes", default="", help="text for the card, or @FILE")
    p.add_argument("--continuation", type=Path, action="append", default=[],
                   help="run dir of a warm-started run (--stage1-init or --stage2-init) behind the shipped weights; "
                        "repeatable, in order")
    p.add_argument("--update", action="store_true",
                   help="update the shipped card (new tables, continuations, notes) instead of rendering it anew")
    args = p.parse_args()
    notes = Path(args.notes[1:]).read_text() if args.notes.startswith("@") else args.notes
    if args.update:
        update_card(args.model, args.continuation, notes)
    else:
        write_card(args.run_dir, args.model, notes, args.continuation)


if __name__ == "__main__":
    main()
