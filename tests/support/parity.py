"""Parity check against outputs of the original Groma implementation.

``python -m tests.support.parity FIXTURE_DIR`` regenerates the fixture weights from their rule, writes
them as a released-format checkpoint (config.json + pytorch_model.bin, 4.32 key names incl. aliases),
loads it with ``GromaForConditionalGeneration.from_pretrained``, runs the fixture image and prompts
(imposing the recorded region permutation) and compares every array of ``expected.npz`` within the
tolerances of ``tests/data/groma_parity/README.md``; then a case with three user boxes whose expected values
are derived from the released semantics (:mod:`tests.support.parity_multi_box`).
Prints one line per output and exits 0 only if all pass. ``tests/model/test_parity.py`` calls ``run_parity``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402

# (atol, rtol, scale_rel): pass if |a - b| <= atol + rtol*|b| + scale_rel*max|b| elementwise; None = exact
TOLERANCES: list[tuple[str, tuple[float, float, float] | None]] = [
    ("pixel_values_digest", (0.0, 1e-5, 0.0)),
    ("pixel_values_sample", (1e-6, 0.0, 0.0)),
    ("vit_hidden_rows_index", None),
    ("vit_hidden_last", (1e-4, 1e-4, 0.0)),
    ("vit_hidden_rows", (1e-4, 1e-4, 0.0)),
    ("proposer_input_digest", (0.0, 1e-5, 0.0)),
    ("enc_topk_index", None),
    ("enc_topk_logit", (2e-4, 0.0, 0.0)),
    ("init_reference_points", (2e-5, 0.0, 0.0)),
    ("proposal_boxes", (2e-5, 0.0, 0.0)),
    ("proposal_logit_", (2e-4, 0.0, 0.0)),
    ("proposal_score_", (2e-5, 0.0, 0.0)),
    ("image_tokens_prebridge_digest", (0.0, 1e-5, 0.0)),
    ("image_tokens_head", (1e-4, 1e-4, 0.0)),
    ("_norm", (0.0, 1e-5, 0.0)),
    ("_sum", (0.0, 0.0, 1e-4)),  # sums over 4096 signed dims: bound relative to the array's scale
    ("_colsum", (0.0, 0.0, 1e-4)),
    ("_input_ids", None),
    ("_nms_keep", None),
    ("_perm", None),
    ("_refer_match", None),
    ("_logits_rows_pos", None),
    ("_gen_tokens", None),
    ("_gen_sequence", None),
    ("_refer_boxes", (0.0, 0.0, 0.0)),
    ("_kept_boxes", (2e-5, 0.0, 0.0)),
    ("_region_boxes", (2e-5, 0.0, 0.0)),
    ("_region_tokens", (1e-3, 0.0, 0.0)),
    ("_inputs_embeds_head", (1e-3, 0.0, 0.0)),
    ("_logits", (2e-4, 0.0, 0.0)),
    ("_gen_step_logits", (2e-4, 0.0, 0.0)),
]


def tolerance_for(name: str) -> tuple[float, float, float] | None:
    for pattern, tol in TOLERANCES:
        if pattern in name if pattern.startswith("_") or pattern.endswith("_") else name == pattern:
            return tol
    raise KeyError(f"no tolerance defined for {name}")


@dataclass
class Comparison:
    name: str
    passed: bool
    max_abs: float
    max_rel: float
    tolerance: str

    def line(self) -> str:
        return (
            f"{self.name:34s} max_abs={self.max_abs:10.3e} max_rel={self.max_rel:10.3e} "
            f"tol={self.tolerance:28s} {'PASS' if self.passed else 'FAIL'}"
        )


def compare(name: str, actual, expected: np.ndarray) -> Comparison:
    """Compare one output with the recorded array using its tolerance."""
    tol = tolerance_for(name)
    actual = np.asarray(actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else actual)
    if actual.shape != expected.shape:
        return Comparison(
            name, False, float("inf"), float("inf"), f"shape {actual.shape} vs {expected.shape}"
        )
    a, b = actual.astype(np.float64), expected.astype(np.float64)
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(b), 1e-12)).max()) if diff.size else 0.0
    if tol is None:
        return Comparison(name, bool(np.array_equal(actual, expected)), max_abs, max_rel, "exact")
    atol, rtol, srel = tol
    bound = atol + rtol * np.abs(b) + srel * (np.abs(b).max() if b.size else 0.0)
    desc = (
        "+".join(
            s
            for s in (
                f"atol {atol:g}" if atol else "",
                f"rtol {rtol:g}" if rtol else "",
                f"{srel:g}*max|x|" if srel else "",
            )
            if s
        )
        or "0"
    )
    return Comparison(name, bool(np.all(diff <= bound)), max_abs, max_rel, desc)


def _digest(x: torch.Tensor) -> np.ndarray:
    x = x.double()
    return np.array([float(x.sum()), float((x * x).sum())])


def _embed_stats(prefix: str, x: torch.Tensor, head: int) -> dict[str, torch.Tensor]:
    x = x.float()
    return {
        f"{prefix}_head": x[:, :head],
        f"{prefix}_norm": x.norm(dim=-1),
        f"{prefix}_sum": x.sum(dim=-1),
        f"{prefix}_colsum": x.sum(dim=0),
    }


def run_parity(
    fixture_dir: str | Path,
    work_dir: str | Path | None = None,
    threads: int = 2,
    timing: bool = False,
    log=print,
    device: str = "cpu",
) -> list[Comparison]:
    """Run the full parity check; returns one ``Comparison`` per array of expected.npz."""
    from groma_ros.engine.preprocess import preprocess, read_rgb
    from groma_ros.model import GromaForConditionalGeneration
    from tests.support.checkpoints import fixture_state_dict, write_release_checkpoint

    torch.set_num_threads(threads)
    if device.startswith("cuda"):  # the fixture is float32: no TF32 convolutions / matmuls
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    fixture_dir = Path(fixture_dir)
    if not (fixture_dir / "expected.npz").is_file():
        raise FileNotFoundError(f"parity fixture not found: {fixture_dir}/expected.npz")
    expected = dict(np.load(fixture_dir / "expected.npz"))
    prompts = json.loads((fixture_dir / "prompts.json").read_text())["prompts"]
    tmp = None
    if work_dir is None:
        tmp = work_dir = tempfile.mkdtemp(prefix="groma_parity_")
    try:
        ckpt = Path(work_dir) / "checkpoint"
        write_release_checkpoint(
            ckpt,
            json.loads((fixture_dir / "config.json").read_text()),
            fixture_state_dict(fixture_dir, verify=True),
        )
        model = GromaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32, device=device)
        got: dict[str, object] = {}
        pixels = preprocess(read_rgb(fixture_dir / "image.png"), model.config.image_size)
        got["pixel_values_sample"] = pixels[0, :, ::64, ::64]
        got["pixel_values_digest"] = np.concatenate(
            [_digest(pixels), pixels[0].double().mean(dim=(1, 2)).numpy()]
        )
        pixels = pixels.to(device)

        t0 = time.perf_counter()
        vision = model.encode_image(pixels, output_intermediates=True)
        t_vision = time.perf_counter() - t0
        inter = vision.intermediates
        rows = torch.as_tensor(expected["vit_hidden_rows_index"])
        got["vit_hidden_rows_index"] = rows
        got["vit_hidden_last"] = inter["hidden_states"][-1][0]
        got["vit_hidden_rows"] = torch.stack([s[0, rows] for s in inter["hidden_states"]])
        got["proposer_input_digest"] = _digest(inter["proposer_input"][0])
        got["enc_topk_index"] = inter["enc_topk_index"][0]
        got["enc_topk_logit"] = inter["enc_topk_logit"][0]
        got["init_reference_points"] = inter["init_reference_points"][0]
        got["proposal_boxes"] = vision.proposal_boxes[0]
        for head in ("coco", "sa1b"):
            logit = inter[f"proposal_logit_{head}"][0]
            got[f"proposal_logit_{head}"] = logit
            got[f"proposal_score_{head}"] = logit.sigmoid()
        got["proposal_score_fused"] = vision.proposal_scores[0]
        got["image_tokens_prebridge_digest"] = _digest(inter["image_tokens_prebridge"][0])
        img = vision.image_tokens[0]
        got["image_tokens_head"] = img[:, :128]
        got.update(
            {k: v for k, v in _embed_stats("image_tokens", img, 128).items() if not k.endswith("_head")}
        )

        timings = []
        for prompt in prompts:
            p = prompt["name"]
            ids = torch.tensor(prompt["input_ids"])[None]
            user = prompt.get("refer_boxes_cxcywh")
            user = torch.tensor(user, dtype=torch.float32) if user else None
            got[f"{p}_input_ids"] = ids[0].clone()
            if user is not None:
                got[f"{p}_refer_boxes"] = user
            perm = torch.as_tensor(expected[f"{p}_perm"])
            selection = model.select_regions(vision.proposal_boxes[0], vision.proposal_scores[0], user)
            got[f"{p}_nms_keep"] = selection.nms_keep
            got[f"{p}_nms_kept_boxes"] = selection.boxes
            t0 = time.perf_counter()
            gen = model.generate_greedy(
                pixels,
                ids,
                user,
                max_new_tokens=int(prompt.get("max_new_tokens", 10)),
                order=perm,
                vision=vision,
            )
            t_total = time.perf_counter() - t0
            pre = gen.prefill
            got[f"{p}_perm"] = perm
            got[f"{p}_region_boxes"] = pre.selection.boxes
            if user is not None:
                got[f"{p}_refer_match"] = pre.selection.refer_match
                got[f"{p}_input_ids_after_refer"] = pre.expanded.prompt_ids[0]
            got[f"{p}_region_tokens"] = pre.region_tokens
            got[f"{p}_llm_input_ids"] = pre.expanded.input_ids[0]
            got.update(_embed_stats(f"{p}_inputs_embeds", pre.inputs_embeds[0], 64))
            got[f"{p}_logits_last"] = pre.logits[0, -1]
            pos = torch.as_tensor(expected[f"{p}_logits_rows_pos"])
            got[f"{p}_logits_rows_pos"] = pos
            got[f"{p}_logits_rows"] = pre.logits[0, pos]
            got[f"{p}_gen_tokens"] = gen.tokens
            got[f"{p}_gen_sequence"] = gen.sequence
            got[f"{p}_gen_step_logits"] = gen.step_logits
            timings.append((p, t_total, len(gen.tokens)))

        results = []
        for name in expected:
            if name not in got:
                results.append(Comparison(name, False, float("inf"), float("inf"), "not produced"))
            else:
                results.append(compare(name, got[name], expected[name]))
        results += _multi_box_comparisons(model, vision, pixels, expected, prompts, fixture_dir)
        if timing:
            log(f"timing ({device}, {threads} threads): encode_image {t_vision * 1e3:.0f} ms")
            for p, total, n in timings:
                log(f"timing {p}: select+regions+prefill+{n - 1} decode steps {total * 1e3:.0f} ms")
        return results
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _multi_box_comparisons(model, vision, pixels, expected, prompts, fixture_dir: Path) -> list[Comparison]:
    """The several-user-box case of :mod:`tests.support.parity_multi_box` through the model's own path."""
    from tests.support import parity_multi_box as mb

    meta = json.loads((fixture_dir / "meta.json").read_text())
    tok, thr = meta["token_ids"], meta["thresholds"]
    refer = next(p for p in prompts if p["name"] == "refer")
    ids = mb.prompt_ids(list(refer["input_ids"]), tok)
    users = mb.user_boxes(expected)
    ref = mb.released_selection(expected["proposal_boxes"], expected["proposal_score_fused"], users,
                                thr["nms_thres"], thr["box_score_thres"], thr["max_region_num"])
    rewritten, llm_ids = mb.expected_ids(ids, ref.refer_match, len(ref.nms_keep),
                                         model.config.num_image_tokens, tok)
    region_tokens = mb.recorded_region_tokens(expected, ref.region_boxes)
    max_new = int(refer.get("max_new_tokens", 10))
    ref_tokens, ref_logits = mb.reference_greedy(model, vision.image_tokens[0], llm_ids, region_tokens,
                                                 ref.refer_match, tok, max_new)
    want = {
        "nms_keep": ref.nms_keep, "nms_kept_boxes": ref.kept_boxes, "perm": ref.perm,
        "region_boxes": ref.region_boxes, "refer_match": ref.refer_match,
        "input_ids_after_refer": rewritten, "llm_input_ids": llm_ids, "region_tokens": region_tokens,
        "gen_tokens": ref_tokens.numpy(), "gen_step_logits": ref_logits.float().cpu().numpy(),
    }
    user_t = torch.from_numpy(users)
    selection = model.select_regions(vision.proposal_boxes[0], vision.proposal_scores[0], user_t)
    gen = model.generate_greedy(pixels, torch.tensor(ids)[None], user_t, max_new_tokens=max_new,
                                order=torch.from_numpy(ref.perm), vision=vision)
    pre = gen.prefill
    got = {
        "nms_keep": selection.nms_keep, "nms_kept_boxes": selection.boxes, "perm": ref.perm,
        "region_boxes": pre.selection.boxes, "refer_match": pre.selection.refer_match,
        "input_ids_after_refer": pre.expanded.prompt_ids[0], "llm_input_ids": pre.expanded.input_ids[0],
        "region_tokens": pre.region_tokens, "gen_tokens": gen.tokens, "gen_step_logits": gen.step_logits,
    }
    results = [compare(f"{mb.NAME}_{k}", got[k], v) for k, v in want.items()]
    top2 = torch.topk(ref_logits.float(), 2, dim=-1).values
    margins = {"nms IoU": (ref.nms_iou_margin, 1e-3), "refer IoU": (ref.refer_margin, 0.05),
               "greedy logit": (float((top2[:, 0] - top2[:, 1]).min()), 2e-3)}
    for what, (value, floor) in margins.items():  # the case decides nothing by a hair
        results.append(Comparison(f"{mb.NAME}_margin {what}", value > floor, value, 0.0, f"> {floor:g}"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixture_dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing", action="store_true", help="also print timings")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (float32 either way)")
    args = parser.parse_args(argv)
    results = run_parity(args.fixture_dir, threads=args.threads, timing=args.timing, device=args.device)
    for r in results:
        print(r.line())
    failed = [r.name for r in results if not r.passed]
    print(
        f"{len(results) - len(failed)}/{len(results)} outputs pass"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
