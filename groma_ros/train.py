"""Train the embedded tiny Groma: ``python -m groma_ros.train --run-dir runs/default``.

Stages (Groma's recipe, scaled down; see ``groma_ros/training``):
  0  SentencePiece tokenizer on the synthetic corpus + prompt templates, then the 114 Groma tokens;
  1  vision encoder + proposer + region encoder (Hungarian matching, L1 + GIoU + objectness);
  2  LLM + bridge + region projection + new token embeddings, proposer frozen; exports the best checkpoint.
Every stage resumes from ``RUN_DIR`` (checkpoints every few minutes) and stops at its ``--*-minutes`` budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TypeVar

import torch

from groma_ros.model.configuration_groma import GromaConfig
from groma_ros.model.modeling_groma import GromaForConditionalGeneration
from groma_ros.model.tokenization_groma import GromaTokenizer
from groma_ros.training import common
from groma_ros.training.recipe import Stage1Config, Stage2Config, tiny_groma_config

RecipeT = TypeVar("RecipeT", Stage1Config, Stage2Config)
DEFAULT_EXPORT = Path(__file__).resolve().parent / "assets" / "default_model"


def stage0(run_dir: Path, vocab_size: int, corpus_scenes: int = 3000) -> tuple[GromaTokenizer, GromaConfig]:
    """Tokenizer + config (+ the seeded initial model); reused when already present."""
    tok_dir, cfg_path = run_dir / "tokenizer", run_dir / "config.json"
    if not (tok_dir / "tokenizer.model").is_file():
        from groma_ros.training.tokenizer import train_tokenizer

        train_tokenizer(run_dir, vocab_size, corpus_scenes)
    tok = GromaTokenizer.from_pretrained(tok_dir)
    if not cfg_path.is_file():
        cfg = tiny_groma_config(tok.vocab_size)
        cfg_path.write_text(json.dumps(cfg.to_diff_dict(), indent=2, default=str) + "\n")
    cfg = GromaConfig(**json.loads(cfg_path.read_text()))
    return tok, cfg


def build_model(cfg: GromaConfig, seed: int) -> GromaForConditionalGeneration:
    common.seed_everything(seed)
    return GromaForConditionalGeneration(cfg)


def with_overrides(base: RecipeT, overrides_json: str, flag: str) -> RecipeT:
    """``base`` (a recipe dataclass) with the JSON overrides of ``flag``; lists become tuples, unknown fields
    and the dataclass's own checks (caption order, task names) end the run with a message naming the flag."""
    overrides = json.loads(overrides_json)
    known = {f.name for f in dataclasses.fields(base)}
    if unknown := set(overrides) - known:
        raise SystemExit(f"{flag}: unknown {type(base).__name__} fields {sorted(unknown)}; known: {sorted(known)}")
    try:
        return dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    except ValueError as exc:
        raise SystemExit(f"{flag}: {exc}") from None


def stage1_config(args: argparse.Namespace) -> Stage1Config:
    """Stage1Config from the flags plus ``--stage1-set`` (JSON)."""
    return with_overrides(Stage1Config(max_steps=args.stage1_steps), args.stage1_set, "--stage1-set")


def stage2_config(args: argparse.Namespace) -> Stage2Config:
    """Stage2Config from the flags plus ``--stage2-set`` (JSON)."""
    s2 = Stage2Config(max_steps=args.stage2_steps, num_scenes=args.stage2_scenes, eval_scenes=args.eval_scenes)
    return with_overrides(s2, args.stage2_set, "--stage2-set")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=Path("runs/default"))
    p.add_argument("--stages", default="0,1,2", help="comma-separated stages to run (default 0,1,2)")
    p.add_argument("--vocab-size", type=int, default=800)
    p.add_argument("--corpus-scenes", type=int, default=3000, help="train scenes in the tokenizer corpus")
    p.add_argument("--stage1-minutes", type=float, default=25.0)
    p.add_argument("--stage2-minutes", type=float, default=90.0)
    p.add_argument("--stage1-steps", type=int, default=Stage1Config.max_steps)
    p.add_argument("--stage2-steps", type=int, default=Stage2Config.max_steps)
    p.add_argument("--stage2-scenes", type=int, default=Stage2Config.num_scenes)
    p.add_argument("--eval-minutes", type=float, default=10.0, help="stage-2 evaluation/export period")
    p.add_argument("--eval-scenes", type=int, default=Stage2Config.eval_scenes, help="val scenes per evaluation")
    p.add_argument("--export", default=str(DEFAULT_EXPORT), help="where the best checkpoint goes ('' = none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the recipe uses one core)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1... (checkpoints stay device-independent)")
    p.add_argument("--stage1-init", type=Path, help="stage-1 checkpoint to continue from (e.g. runs/x/stage1/ckpt.pt)")
    p.add_argument("--stage1-set", default="{}", metavar="JSON",
                   help='override Stage1Config fields, e.g. \'{"lr": 3e-4}\'')
    p.add_argument("--stage2-init", type=Path, help="state dict to continue stage 2 from (e.g. runs/x/stage2/best.pt)")
    p.add_argument("--stage2-perception", type=Path,
                   help="with --stage2-init: take the perception (stage-1 weights) from this stage-1 checkpoint")
    p.add_argument("--stage2-set", default="{}", metavar="JSON",
                   help='override Stage2Config fields, e.g. \'{"batch_size": 64, "curriculum_steps": 0}\'')
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.stage2_perception and not args.stage2_init:
        p.error("--stage2-perception needs --stage2-init (without it stage 2 starts from the run's own stage 1)")
    torch.set_num_threads(args.threads)
    stages = {int(s) for s in args.stages.split(",") if s.strip()}
    args.run_dir.mkdir(parents=True, exist_ok=True)
    tok, cfg = stage0(args.run_dir, args.vocab_size, args.corpus_scenes)
    print(f"stage 0: tokenizer {tok.vocab_size}+{len(tok) - tok.vocab_size} ids; run dir {args.run_dir}")
    model = build_model(cfg, args.seed).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters")
    if 1 in stages:
        from groma_ros.training.stage1 import run_stage1

        run_stage1(model, args.run_dir, stage1_config(args), args.stage1_minutes, seed=args.seed,
                   init=args.stage1_init)
    if 2 in stages:
        from groma_ros.training.stage2 import run_stage2

        s2 = stage2_config(args)
        run_stage2(model, tok, args.run_dir, s2, args.stage2_minutes, seed=args.seed,
                   export_dir=Path(args.export) if args.export else None, eval_minutes=args.eval_minutes,
                   init=args.stage2_init, perception=args.stage2_perception)


if __name__ == "__main__":
    main()
