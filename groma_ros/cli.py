"""``groma`` command line: ask Groma about an image file, or list its region proposals.

    groma ask IMAGE "where is the red mug?" [--task auto|refer|grounded_caption|region_qa|vqa]
              [--box x1,y1,x2,y2 ...] [--model DIR] [--json] [--save annotated.png]
    groma detect IMAGE [--score-threshold 0.3] [--json] [--save annotated.png]
    groma chat IMAGE [--script turns.txt] [--json] [--save turn.png]

``chat`` holds one conversation about the image: each line (typed, piped on stdin, or one per line of the
``--script`` file; blank lines and lines starting with ``#`` are skipped) is a turn, and later turns may refer to
earlier answers ("the other one", "what colour is it?"). Typed ``/new`` starts a new conversation on the same
image, ``/quit`` (or end of input) leaves. ``--save turn.png`` writes one annotated picture per turn
(``turn_1.png``, ``turn_2.png``, ...). With ``--json`` each turn prints one JSON object on its own line (JSON
Lines), with ``turn`` and ``conversation_id``. A turn that cannot be asked (e.g. too long for the conversation's
limits) is reported on stderr; typed input goes on (exit code 2 at the end), a script stops there with exit code 2.

Without ``--model`` the embedded default model is used. Exit codes: 0 ok, 2 bad usage or input
(unreadable image, bad box, empty query), 3 model missing or failed to load, 1 anything else.
Messages go to stderr; stdout holds only the answer (one JSON object with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from groma_ros.model.precision import PRECISIONS

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_MODEL = 0, 1, 2, 3
TASKS = ("auto", "refer", "grounded_caption", "region_qa", "vqa", "detect")


class UsageError(Exception):
    """Bad command-line input detected after argparse (exit code 2)."""


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x1,y1,x2,y2"`` (pixels; commas or spaces) → 4 floats."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {text!r} is not numeric (expected x1,y1,x2,y2)") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r} needs 4 numbers x1,y1,x2,y2, got {len(values)}")
    return values  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groma", description="Grounded answers from the Groma model on image files.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{ask,detect,chat}")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("image", help="image file (PNG, JPEG, ...)")
    common.add_argument("--model", metavar="DIR", help="model directory (default: the embedded model)")
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    common.add_argument("--dtype", default="float32", choices=PRECISIONS)
    common.add_argument("--decode", default="auto", choices=("auto", "dynamic", "static", "compiled"),
                        help="LLM decoding (static/compiled pay off on a GPU; see groma_ros.engine.decoding)")
    common.add_argument("--threads", type=int, default=None, help="CPU threads (default: min(4, cores))")
    common.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    common.add_argument("--save", metavar="PNG", help="write a copy of the image with boxes and phrases")
    common.add_argument("--score-threshold", type=float, default=None,
                        help="detect: keep proposals scoring above this (default: the model's box_score_thres)")
    common.add_argument("--quiet", action="store_true", help="no progress output on stderr")

    ask = sub.add_parser("ask", parents=[common], help="ask a question about the image")
    ask.add_argument("query", help='the question or command, e.g. "where is the red mug?"')
    ask.add_argument("--task", default="auto", choices=TASKS, help="task (default: auto = chosen from the query)")
    ask.add_argument("--box", action="append", type=parse_box, default=[], metavar="x1,y1,x2,y2",
                     help="a region in pixels for region_qa (repeatable, in the order the question refers to)")
    ask.add_argument("--max-new-tokens", type=int, default=None, help="generation limit (default: per task)")

    sub.add_parser("detect", parents=[common], help="class-agnostic region proposals with scores (no LLM)")

    chat = sub.add_parser("chat", parents=[common], help="a conversation about the image, one turn per line")
    chat.add_argument("--script", metavar="FILE", help="turns to ask, one per line (default: read stdin)")
    chat.add_argument("--max-new-tokens", type=int, default=None, help="generation limit per turn (default: per task)")
    return parser


def load_image(path: str):
    """RGB uint8 array of an image file; ``UsageError`` if it cannot be read."""
    from groma_ros.engine.preprocess import read_rgb

    try:
        return read_rgb(path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def answer_to_dict(answer: Any, model_id: str = "") -> dict[str, Any]:
    """The JSON view of an ``Answer`` (boxes are original-image pixels x1, y1, x2, y2)."""
    t = answer.timings
    return {
        "text": answer.text,
        "raw_text": answer.raw_text,
        "task": answer.task.name.lower(),
        "query": answer.query,
        "model": model_id,
        "image_size": list(answer.image_size),
        "items": [
            {
                "phrase": it.phrase,
                "span": [it.start, it.end],
                "regions": [r.index for r in it.regions],
                "boxes": [[round(float(c), 2) for c in r.box] for r in it.regions],
                "scores": [round(float(r.score), 4) for r in it.regions],
            }
            for it in answer.items
        ],
        "timings": {**{k: round(v, 3) for k, v in vars(t).items()},
                    "encode_ms": round(t.encode_ms, 3), "generate_ms": round(t.generate_ms, 3)},
        "tokens": {"prompt": answer.prompt_tokens, "completion": answer.completion_tokens},
        "cached_prefix": answer.cached_prefix,
        "canceled": answer.canceled,
        "warnings": list(answer.warnings),
    }


def format_answer(answer: Any) -> str:
    """Human-readable answer: the text, then a table of grounded boxes."""
    t = answer.timings
    lines = [answer.text if answer.text else "(empty answer)", ""]
    lines.append(f"task {answer.task.name.lower()} | {answer.prompt_tokens} prompt + {answer.completion_tokens} "
                 f"generated tokens | {t.total_ms:.0f} ms (encode {t.encode_ms:.0f}, generate {t.generate_ms:.0f})")
    rows = [(it.phrase or "-", f"r{r.index}", f"{r.score:.3f}", " ".join(f"{c:7.1f}" for c in r.box))
            for it in answer.items for r in it.regions]
    if rows:
        width = min(max(len(r[0]) for r in rows), 40)
        lines.append("")
        lines.append(f"{'phrase':<{width}}  region  score  {'x1':>7} {'y1':>7} {'x2':>7} {'y2':>7}")
        for phrase, region, score, box in rows:
            phrase = phrase if len(phrase) <= width else phrase[: width - 3] + "..."
            lines.append(f"{phrase:<{width}}  {region:<6}  {score}  {box}")
    else:
        lines.append("no grounded boxes")
    return "\n".join(lines)


def save_annotated(path: str, image_rgb: Any, answer: Any) -> None:
    import cv2

    from groma_ros.drawing import draw_grounding

    out = draw_grounding(image_rgb, answer.items)
    if not cv2.imwrite(path, cv2.cvtColor(out, cv2.COLOR_RGB2BGR)):
        raise UsageError(f"cannot write {path!r}")


def turn_path(pattern: str, turn: int) -> str:
    """``turn.png`` -> ``turn_3.png`` (the picture of turn 3)."""
    from pathlib import Path

    p = Path(pattern)
    return str(p.with_name(f"{p.stem}_{turn}{p.suffix or '.png'}"))


def read_turns(args: argparse.Namespace):
    """The turns of ``chat``: the script's lines, or stdin (with a prompt on stderr when typed)."""
    if args.script is not None:
        try:
            with open(args.script, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as err:
            raise UsageError(f"cannot read the script {args.script!r}: {err.strerror}") from None
        yield from (line for line in lines if line.strip() and not line.lstrip().startswith("#"))
        return
    typed = sys.stdin.isatty()
    while True:
        if typed:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return
        if line.strip() and not line.lstrip().startswith("#"):
            yield line.strip()


def chat(engine, image, args: argparse.Namespace) -> int:
    """One conversation per ``/new``; answers printed (or JSON Lines) as they come."""
    from groma_ros.engine import BadRequestError, ConversationNotFoundError

    engine.conversations.idle_timeout_s = None  # a person may pause as long as they like
    engine.conversations.max_live = 1
    session, conv_id, status = 0, "", EXIT_OK
    for line in read_turns(args):
        if line == "/new" or not conv_id:
            session += 1
            conv_id = f"chat-{session}"
            if line == "/new":
                continue
        try:
            answer = engine.ask(image, line, conversation_id=conv_id, max_new_tokens=args.max_new_tokens)
        except (BadRequestError, ConversationNotFoundError) as err:
            print(f"groma: error: {err}", file=sys.stderr)
            if args.script is not None:
                return EXIT_USAGE
            status = EXIT_USAGE
            continue
        if args.save:
            save_annotated(turn_path(args.save, answer.turn), image, answer)
        if args.json:
            print(json.dumps({**answer_to_dict(answer, engine.model_id), "turn": answer.turn,
                              "conversation_id": answer.conversation_id}, ensure_ascii=False), flush=True)
        else:
            print(f"[turn {answer.turn}] {format_answer(answer)}\n", flush=True)
    return status if args.script is None else EXIT_OK


def run(args: argparse.Namespace) -> int:
    image = load_image(args.image)  # before loading the model: fail fast on a bad path
    if args.command == "chat" and args.script is not None:
        list(read_turns(args))  # an unreadable script fails before the model loads
    from groma_ros.engine import GromaEngine

    engine = GromaEngine.from_pretrained(args.model, device=args.device, dtype=args.dtype, num_threads=args.threads,
                                         cache_frames=1, progress=not args.quiet, decode=args.decode)
    if args.command == "chat":
        return chat(engine, image, args)
    if args.command == "detect":
        answer = engine.detect(image, score_threshold=args.score_threshold)
    else:
        answer = engine.ask(image, args.query, task=args.task, boxes=args.box, max_new_tokens=args.max_new_tokens,
                            score_threshold=args.score_threshold)
    if args.save:
        save_annotated(args.save, image, answer)
    if args.json:
        print(json.dumps(answer_to_dict(answer, engine.model_id), ensure_ascii=False))
    else:
        print(format_answer(answer))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``groma`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)  # exits 2 on bad usage
    from groma_ros.engine.errors import BadRequestError, ModelLoadError

    try:
        return run(args)
    except (UsageError, BadRequestError) as err:
        print(f"groma: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as err:
        print(f"groma: model error: {err}", file=sys.stderr)
        return EXIT_MODEL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
